/* plot.h -- small greyscale charts written as PNG, drawn in C (no gnuplot).
 *
 * A canvas is 8-bit grey pixels with a built-in 5x7 pixel font (digits,
 * capital letters -- lower case prints as capitals -- and common
 * punctuation). Four charts cover ddm-eval's needs: horizontal bars with an
 * error whisker, a scatter plot with groups, line charts with reference
 * lines, and heat maps. */
#ifndef DDM_EVAL_PLOT_H
#define DDM_EVAL_PLOT_H

#include <stddef.h>
#include <stdint.h>

typedef struct canvas {
    int w, h;
    uint8_t *pix;   /* [h][w], row-major */
} canvas;

/* A w x h canvas filled with bg; NULL when out of memory or too large. */
canvas *canvas_new(int w, int h, uint8_t bg);
void canvas_free(canvas *c);
/* Filled rectangle [x0, x1) x [y0, y1), clipped. */
void canvas_fill(canvas *c, int x0, int y0, int x1, int y1, uint8_t v);
/* Line from (x0, y0) to (x1, y1), inclusive, clipped. */
void canvas_line(canvas *c, int x0, int y0, int x1, int y1, uint8_t v);
/* Text with its top-left corner at (x, y), each font pixel scale x scale.
 * Returns the width drawn. */
int canvas_text(canvas *c, int x, int y, const char *s, int scale, uint8_t v);
/* Width in pixels canvas_text would use. */
int canvas_text_width(const char *s, int scale);
/* Writes the canvas as a PNG. Returns 0 or an error with a message. */
int canvas_write(const canvas *c, const char *path, char *err, size_t errlen);

/* Horizontal bar chart: one bar per label, length value[i] (NAN: "n/a"),
 * whisker +- spread[i] when spread is not NULL and finite. */
int plot_bars(const char *path, const char *title, const char *const *labels,
              const double *value, const double *spread, int n, char *err, size_t errlen);

/* Scatter of (x[i], y[i]), i < n, point style by group[i] (0..ngroups-1,
 * at most 6) with a legend of group names. */
int plot_scatter(const char *path, const char *title, const char *xlabel, const char *ylabel,
                 const double *x, const double *y, const int *group, int n,
                 const char *const *group_names, int ngroups, char *err, size_t errlen);

/* One line of a line chart: n points (x[i], y[i]), whisker +- err[i] when
 * err is not NULL and finite. */
typedef struct plot_series {
    const char *name;
    const double *x, *y, *err;
    int n;
} plot_series;

/* A horizontal reference line at y, labelled name at its right end. */
typedef struct plot_ref {
    const char *name;
    double y;
} plot_ref;

/* Line chart: series as solid lines with markers (style by index, at most 6),
 * references as dashed horizontal lines; x on a log scale when logx (x > 0),
 * ticks at the first series' x values. The y range covers everything up to
 * ymax when ymax > 0 (points above it are drawn at the top edge as a
 * triangle). */
int plot_lines(const char *path, const char *title, const char *xlabel, const char *ylabel,
               int logx, const plot_series *s, int ns, const plot_ref *refs, int nr, double ymax,
               char *err, size_t errlen);

/* Heat maps stacked vertically: map m is rows x cols values v[m] [rows][cols]
 * >= 0, each map scaled to its own maximum (white; black = 0, the maximum is
 * printed after the map's name names[m]), rows labelled row_prefix + index;
 * the x axis is labelled x_left .. x_right. */
int plot_heat(const char *path, const char *title, const double *const *v,
              const char *const *names, int maps, int rows, int cols, const char *row_prefix,
              const char *x_left, const char *x_right, char *err, size_t errlen);

#endif
