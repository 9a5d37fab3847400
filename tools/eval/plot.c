/* plot.c -- greyscale charts as PNG (see plot.h). */
#include "tools/eval/plot.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/png.h"

#define PLOT_MAX_SIDE 8192
#define INK 0
#define PAPER 255

/* ---- the font: 5x7 glyphs, one byte per row, bit 4 = leftmost column ---------------- */

typedef struct glyph {
    char ch;
    uint8_t row[7];
} glyph;

static const glyph FONT[] = {
    { ' ', { 0, 0, 0, 0, 0, 0, 0 } },
    { '0', { 0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E } },
    { '1', { 0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E } },
    { '2', { 0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F } },
    { '3', { 0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E } },
    { '4', { 0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02 } },
    { '5', { 0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E } },
    { '6', { 0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E } },
    { '7', { 0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08 } },
    { '8', { 0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E } },
    { '9', { 0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C } },
    { 'A', { 0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11 } },
    { 'B', { 0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E } },
    { 'C', { 0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E } },
    { 'D', { 0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C } },
    { 'E', { 0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F } },
    { 'F', { 0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10 } },
    { 'G', { 0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F } },
    { 'H', { 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11 } },
    { 'I', { 0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E } },
    { 'J', { 0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C } },
    { 'K', { 0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11 } },
    { 'L', { 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F } },
    { 'M', { 0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11 } },
    { 'N', { 0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11 } },
    { 'O', { 0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E } },
    { 'P', { 0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10 } },
    { 'Q', { 0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D } },
    { 'R', { 0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11 } },
    { 'S', { 0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E } },
    { 'T', { 0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04 } },
    { 'U', { 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E } },
    { 'V', { 0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04 } },
    { 'W', { 0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A } },
    { 'X', { 0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11 } },
    { 'Y', { 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04 } },
    { 'Z', { 0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F } },
    { '-', { 0, 0, 0, 0x1F, 0, 0, 0 } },
    { ':', { 0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0 } },
    { '.', { 0, 0, 0, 0, 0, 0x0C, 0x0C } },
    { ',', { 0, 0, 0, 0, 0x0C, 0x04, 0x08 } },
    { '%', { 0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03 } },
    { '(', { 0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02 } },
    { ')', { 0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08 } },
    { '=', { 0, 0, 0x1F, 0, 0x1F, 0, 0 } },
    { '/', { 0, 0x01, 0x02, 0x04, 0x08, 0x10, 0 } },
    { '+', { 0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0 } },
    { '_', { 0, 0, 0, 0, 0, 0, 0x1F } },
    { '<', { 0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02 } },
    { '>', { 0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08 } },
    { '|', { 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04 } },
    { '*', { 0, 0x04, 0x15, 0x0E, 0x15, 0x04, 0 } },
    { '\'', { 0x04, 0x04, 0x08, 0, 0, 0, 0 } },
    { '?', { 0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04 } },
};

static const glyph *find_glyph(char ch)
{
    char u = (char)toupper((unsigned char)ch);
    for (size_t i = 0; i < sizeof FONT / sizeof FONT[0]; i++)
        if (FONT[i].ch == u)
            return &FONT[i];
    return &FONT[sizeof FONT / sizeof FONT[0] - 1]; /* '?' */
}

/* ---- canvas ------------------------------------------------------------------------ */

canvas *canvas_new(int w, int h, uint8_t bg)
{
    if (w < 1 || h < 1 || w > PLOT_MAX_SIDE || h > PLOT_MAX_SIDE)
        return NULL;
    canvas *c = malloc(sizeof *c);
    if (!c)
        return NULL;
    c->w = w;
    c->h = h;
    c->pix = malloc((size_t)w * (size_t)h);
    if (!c->pix) {
        free(c);
        return NULL;
    }
    memset(c->pix, bg, (size_t)w * (size_t)h);
    return c;
}

void canvas_free(canvas *c)
{
    if (!c)
        return;
    free(c->pix);
    free(c);
}

static void put(canvas *c, int x, int y, uint8_t v)
{
    if (x >= 0 && y >= 0 && x < c->w && y < c->h)
        c->pix[(size_t)y * c->w + x] = v;
}

void canvas_fill(canvas *c, int x0, int y0, int x1, int y1, uint8_t v)
{
    x0 = x0 < 0 ? 0 : x0;
    y0 = y0 < 0 ? 0 : y0;
    x1 = x1 > c->w ? c->w : x1;
    y1 = y1 > c->h ? c->h : y1;
    for (int y = y0; y < y1; y++)
        if (x1 > x0)
            memset(c->pix + (size_t)y * c->w + x0, v, (size_t)(x1 - x0));
}

void canvas_line(canvas *c, int x0, int y0, int x1, int y1, uint8_t v)
{
    int dx = abs(x1 - x0), sx = x0 < x1 ? 1 : -1;
    int dy = -abs(y1 - y0), sy = y0 < y1 ? 1 : -1;
    int e = dx + dy;
    for (;;) {
        put(c, x0, y0, v);
        if (x0 == x1 && y0 == y1)
            break;
        int e2 = 2 * e;
        if (e2 >= dy) {
            e += dy;
            x0 += sx;
        }
        if (e2 <= dx) {
            e += dx;
            y0 += sy;
        }
    }
}

int canvas_text_width(const char *s, int scale) { return (int)strlen(s) * 6 * scale; }

int canvas_text(canvas *c, int x, int y, const char *s, int scale, uint8_t v)
{
    int x0 = x;
    for (; *s; s++, x += 6 * scale) {
        const glyph *g = find_glyph(*s);
        for (int r = 0; r < 7; r++)
            for (int col = 0; col < 5; col++)
                if (g->row[r] & (0x10 >> col))
                    canvas_fill(c, x + col * scale, y + r * scale, x + (col + 1) * scale,
                                y + (r + 1) * scale, v);
    }
    return x - x0;
}

int canvas_write(const canvas *c, const char *path, char *err, size_t errlen)
{
    return pngio_write_grey(path, c->pix, c->w, c->h, err, errlen);
}

static int oom(char *err, size_t errlen, const char *path)
{
    snprintf(err, errlen, "%s: out of memory drawing the chart", path);
    return DDM_ENOMEM;
}

/* A "nice" upper axis limit >= v: 1, 2 or 5 times a power of ten. */
static double nice_ceil(double v)
{
    if (!(v > 0))
        return 1.0;
    double p = pow(10.0, floor(log10(v)));
    double m = v / p;
    return (m <= 1.0 ? 1.0 : m <= 2.0 ? 2.0 : m <= 5.0 ? 5.0 : 10.0) * p;
}

static void fmt_num(char *buf, size_t len, double v)
{
    if (!isfinite(v))
        snprintf(buf, len, "n/a");
    else if (fabs(v) >= 100 || v == floor(v))
        snprintf(buf, len, "%.0f", v);
    else if (fabs(v) >= 10)
        snprintf(buf, len, "%.1f", v);
    else
        snprintf(buf, len, "%.2f", v);
}

/* ---- bars -------------------------------------------------------------------------- */

int plot_bars(const char *path, const char *title, const char *const *labels,
              const double *value, const double *spread, int n, char *err, size_t errlen)
{
    const int S = 2, row = 22, top = 40, lw_min = 60, bar_w = 480;
    int lw = lw_min;
    double vmax = 0;
    for (int i = 0; i < n; i++) {
        int w = canvas_text_width(labels[i], S) + 12;
        lw = w > lw ? w : lw;
        double hi = value[i] + (spread && isfinite(spread[i]) ? spread[i] : 0);
        if (isfinite(hi) && hi > vmax)
            vmax = hi;
    }
    vmax = nice_ceil(vmax);
    int W = lw + bar_w + 120, H = top + n * row + 30;
    canvas *c = canvas_new(W, H, PAPER);
    if (!c)
        return oom(err, errlen, path);
    canvas_text(c, 8, 10, title, S, INK);
    for (int i = 0; i < n; i++) {
        int y = top + i * row;
        canvas_text(c, lw - 6 - canvas_text_width(labels[i], S), y + 4, labels[i], S, INK);
        char num[32];
        fmt_num(num, sizeof num, value[i]);
        if (!isfinite(value[i])) {
            canvas_text(c, lw + 4, y + 4, num, S, 96);
            continue;
        }
        int len = (int)lrint(value[i] / vmax * bar_w);
        canvas_fill(c, lw, y + 3, lw + len, y + row - 3, 150);
        int end = lw + len;
        if (spread && isfinite(spread[i]) && spread[i] > 0) {
            int a = lw + (int)lrint((value[i] - spread[i]) / vmax * bar_w);
            int b = lw + (int)lrint((value[i] + spread[i]) / vmax * bar_w);
            int ym = y + row / 2;
            canvas_line(c, a, ym, b, ym, INK);
            canvas_line(c, a, ym - 4, a, ym + 4, INK);
            canvas_line(c, b, ym - 4, b, ym + 4, INK);
            end = b > end ? b : end;
        }
        canvas_text(c, end + 6, y + 4, num, S, INK);
    }
    /* axis with 0 and vmax */
    int ya = top + n * row + 2;
    canvas_line(c, lw, top - 2, lw, ya, INK);
    canvas_line(c, lw, ya, lw + bar_w, ya, INK);
    char num[32];
    fmt_num(num, sizeof num, vmax);
    canvas_text(c, lw - 3, ya + 6, "0", S, INK);
    canvas_text(c, lw + bar_w - canvas_text_width(num, S) / 2, ya + 6, num, S, INK);
    canvas_line(c, lw + bar_w, ya - 3, lw + bar_w, ya + 3, INK);
    int rc = canvas_write(c, path, err, errlen);
    canvas_free(c);
    return rc;
}

/* ---- scatter ----------------------------------------------------------------------- */

static void marker(canvas *c, int x, int y, int style)
{
    switch (style % 6) {
    case 0: canvas_fill(c, x - 2, y - 2, x + 3, y + 3, INK); break;
    case 1:
        canvas_line(c, x - 3, y - 3, x + 3, y - 3, INK);
        canvas_line(c, x - 3, y + 3, x + 3, y + 3, INK);
        canvas_line(c, x - 3, y - 3, x - 3, y + 3, INK);
        canvas_line(c, x + 3, y - 3, x + 3, y + 3, INK);
        break;
    case 2:
        canvas_line(c, x - 3, y, x + 3, y, INK);
        canvas_line(c, x, y - 3, x, y + 3, INK);
        break;
    case 3:
        canvas_line(c, x - 3, y - 3, x + 3, y + 3, INK);
        canvas_line(c, x - 3, y + 3, x + 3, y - 3, INK);
        break;
    case 4: canvas_fill(c, x - 2, y - 2, x + 3, y + 3, 160); break;
    default:
        canvas_line(c, x - 3, y + 3, x, y - 3, INK);
        canvas_line(c, x, y - 3, x + 3, y + 3, INK);
        canvas_line(c, x - 3, y + 3, x + 3, y + 3, INK);
        break;
    }
}

int plot_scatter(const char *path, const char *title, const char *xlabel, const char *ylabel,
                 const double *x, const double *y, const int *group, int n,
                 const char *const *group_names, int ngroups, char *err, size_t errlen)
{
    const int S = 2, L = 90, T = 70, PW = 520, PH = 380, R = 200;
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (!isfinite(x[i]) || !isfinite(y[i]))
            continue;
        x0 = x[i] < x0 ? x[i] : x0;
        x1 = x[i] > x1 ? x[i] : x1;
        y0 = y[i] < y0 ? y[i] : y0;
        y1 = y[i] > y1 ? y[i] : y1;
    }
    if (!(x1 >= x0)) {
        x0 = 0;
        x1 = 1;
    }
    if (!(y1 >= y0)) {
        y0 = 0;
        y1 = 1;
    }
    if (x1 - x0 < 1e-9) {
        x0 -= 0.5;
        x1 += 0.5;
    }
    if (y1 - y0 < 1e-9) {
        y0 -= 0.5;
        y1 += 0.5;
    }
    canvas *c = canvas_new(L + PW + R, T + PH + 60, PAPER);
    if (!c)
        return oom(err, errlen, path);
    canvas_text(c, 8, 10, title, S, INK);
    canvas_line(c, L, T, L, T + PH, INK);
    canvas_line(c, L, T + PH, L + PW, T + PH, INK);
    char num[32];
    for (int k = 0; k <= 4; k++) {
        double xv = x0 + (x1 - x0) * k / 4, yv = y0 + (y1 - y0) * k / 4;
        int px = L + PW * k / 4, py = T + PH - PH * k / 4;
        canvas_line(c, px, T + PH, px, T + PH + 4, INK);
        canvas_line(c, L - 4, py, L, py, INK);
        fmt_num(num, sizeof num, xv);
        canvas_text(c, px - canvas_text_width(num, S) / 2, T + PH + 8, num, S, INK);
        fmt_num(num, sizeof num, yv);
        canvas_text(c, L - 8 - canvas_text_width(num, S), py - 7, num, S, INK);
    }
    canvas_text(c, L + PW / 2 - canvas_text_width(xlabel, S) / 2, T + PH + 32, xlabel, S, INK);
    canvas_text(c, 8, T - 26, ylabel, S, INK);
    for (int i = 0; i < n; i++) {
        if (!isfinite(x[i]) || !isfinite(y[i]))
            continue;
        int px = L + (int)lrint((x[i] - x0) / (x1 - x0) * PW);
        int py = T + PH - (int)lrint((y[i] - y0) / (y1 - y0) * PH);
        marker(c, px, py, group ? group[i] : 0);
    }
    for (int g = 0; g < ngroups && g < 6; g++) {
        int ly = T + 10 + g * 24;
        marker(c, L + PW + 20, ly + 6, g);
        canvas_text(c, L + PW + 32, ly, group_names[g], S, INK);
    }
    int rc = canvas_write(c, path, err, errlen);
    canvas_free(c);
    return rc;
}

/* ---- line charts -------------------------------------------------------------------- */

static void dashed(canvas *c, int x0, int x1, int y, uint8_t v)
{
    for (int x = x0; x < x1; x += 10)
        canvas_line(c, x, y, x + 5 < x1 ? x + 5 : x1, y, v);
}

int plot_lines(const char *path, const char *title, const char *xlabel, const char *ylabel,
               int logx, const plot_series *s, int ns, const plot_ref *refs, int nr, double ymax,
               char *err, size_t errlen)
{
    const int S = 2, L = 90, T = 70, PW = 560, PH = 380, R = 230;
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
#define FX(v) (logx ? log10(v) : (v))
    for (int k = 0; k < ns; k++)
        for (int i = 0; i < s[k].n; i++) {
            double xv = s[k].x[i], yv = s[k].y[i];
            double e = s[k].err && isfinite(s[k].err[i]) ? s[k].err[i] : 0;
            if (!isfinite(xv) || !isfinite(yv) || (logx && xv <= 0))
                continue;
            x0 = FX(xv) < x0 ? FX(xv) : x0;
            x1 = FX(xv) > x1 ? FX(xv) : x1;
            y0 = yv - e < y0 ? yv - e : y0;
            y1 = yv + e > y1 ? yv + e : y1;
        }
    for (int k = 0; k < nr; k++)
        if (isfinite(refs[k].y)) {
            y0 = refs[k].y < y0 ? refs[k].y : y0;
            y1 = refs[k].y > y1 ? refs[k].y : y1;
        }
    if (ymax > 0 && y1 > ymax)
        y1 = ymax;
    if (!(x1 > x0)) {
        x0 = logx ? -1 : 0;
        x1 = logx ? 1 : 1;
    }
    if (!(y1 > y0)) {
        y0 = isfinite(y0) ? y0 - 0.5 : 0;
        y1 = isfinite(y1) ? y1 + 0.5 : 1;
    }
    double pad = (y1 - y0) * 0.05;
    y0 -= pad;
    y1 += pad;
    canvas *c = canvas_new(L + PW + R, T + PH + 78, PAPER);
    if (!c)
        return oom(err, errlen, path);
    canvas_text(c, 8, 10, title, S, INK);
    canvas_text(c, 8, T - 30, ylabel, S, INK);
    canvas_line(c, L, T, L, T + PH, INK);
    canvas_line(c, L, T + PH, L + PW, T + PH, INK);
#define PXX(v) (L + (int)lrint((FX(v) - x0) / (x1 - x0) * PW))
#define PYY(v) (T + PH - (int)lrint(((v) - y0) / (y1 - y0) * PH))
    char num[32];
    for (int k = 0; k <= 4; k++) {
        double yv = y0 + (y1 - y0) * k / 4;
        int py = PYY(yv);
        canvas_line(c, L - 4, py, L, py, INK);
        fmt_num(num, sizeof num, yv);
        canvas_text(c, L - 8 - canvas_text_width(num, S), py - 7, num, S, INK);
    }
    int last_px = -1000;
    for (int i = 0; ns > 0 && i < s[0].n; i++) {
        if (!isfinite(s[0].x[i]) || (logx && s[0].x[i] <= 0))
            continue;
        int px = PXX(s[0].x[i]);
        canvas_line(c, px, T + PH, px, T + PH + 4, INK);
        fmt_num(num, sizeof num, s[0].x[i]);
        int w = canvas_text_width(num, S);
        if (px - w / 2 > last_px + 4) { /* skip labels that would overlap */
            canvas_text(c, px - w / 2, T + PH + 8, num, S, INK);
            last_px = px + w / 2;
        }
    }
    canvas_text(c, L + PW / 2 - canvas_text_width(xlabel, S) / 2, T + PH + 34, xlabel, S, INK);
    int used[16], nused = 0;
    for (int k = 0; k < nr; k++) {
        if (!isfinite(refs[k].y) || refs[k].y > y1 || refs[k].y < y0)
            continue;
        int py = PYY(refs[k].y), ty = py - 7;
        for (int again = 1; again;) { /* move a label off the ones already written */
            again = 0;
            for (int u = 0; u < nused; u++)
                if (abs(used[u] - ty) < 16) {
                    ty = used[u] + 16;
                    again = 1;
                }
        }
        if (nused < 16)
            used[nused++] = ty;
        dashed(c, L, L + PW, py, 110);
        canvas_text(c, L + PW + 8, ty, refs[k].name, S, 80);
    }
    for (int k = 0; k < ns; k++) {
        int px_prev = 0, py_prev = 0, have = 0;
        for (int i = 0; i < s[k].n; i++) {
            double xv = s[k].x[i], yv = s[k].y[i];
            if (!isfinite(xv) || !isfinite(yv) || (logx && xv <= 0))
                continue;
            int px = PXX(xv), clipped = yv > y1;
            int py = clipped ? T : PYY(yv);
            if (have)
                canvas_line(c, px_prev, py_prev, px, py, INK);
            if (clipped) {
                canvas_line(c, px - 4, T + 6, px, T, INK);
                canvas_line(c, px, T, px + 4, T + 6, INK);
            } else {
                marker(c, px, py, k);
            }
            double e = s[k].err && isfinite(s[k].err[i]) ? s[k].err[i] : 0;
            if (e > 0 && !clipped) {
                int a = PYY(yv + e < y1 ? yv + e : y1), b = PYY(yv - e > y0 ? yv - e : y0);
                canvas_line(c, px, a, px, b, INK);
                canvas_line(c, px - 3, a, px + 3, a, INK);
                canvas_line(c, px - 3, b, px + 3, b, INK);
            }
            px_prev = px;
            py_prev = py;
            have = 1;
        }
    }
    /* the legend in a row under the x axis label */
    for (int k = 0, lx = L; k < ns; k++) {
        int yy = T + PH + 54;
        marker(c, lx + 4, yy + 6, k);
        lx += 16 + canvas_text(c, lx + 14, yy, s[k].name, S, INK) + 20;
    }
#undef PXX
#undef PYY
#undef FX
    int rc = canvas_write(c, path, err, errlen);
    canvas_free(c);
    return rc;
}

/* ---- heat maps --------------------------------------------------------------------- */

int plot_heat(const char *path, const char *title, const double *const *v,
              const char *const *names, int maps, int rows, int cols, const char *row_prefix,
              const char *x_left, const char *x_right, char *err, size_t errlen)
{
    const int S = 2, L = 70, T = 40, CH = 14, GAP = 40;
    int cw = cols > 0 ? 600 / cols : 1;
    cw = cw < 2 ? 2 : cw;
    int W = L + cols * cw + 20, mapH = 24 + rows * CH;
    canvas *c = canvas_new(W, T + maps * (mapH + GAP) + 10, PAPER);
    if (!c)
        return oom(err, errlen, path);
    canvas_text(c, 8, 10, title, S, INK);
    for (int m = 0; m < maps; m++) {
        int y0 = T + m * (mapH + GAP);
        double mx = 0;
        for (size_t i = 0; i < (size_t)rows * cols; i++)
            mx = isfinite(v[m][i]) && v[m][i] > mx ? v[m][i] : mx;
        char head[160];
        snprintf(head, sizeof head, "%.100s (white = %.2f)", names[m], mx);
        canvas_text(c, L, y0, head, S, INK);
        int gy = y0 + 20;
        for (int r = 0; r < rows; r++) {
            char lab[32];
            snprintf(lab, sizeof lab, "%s%d", row_prefix, r);
            canvas_text(c, 4, gy + r * CH, lab, 1, INK);
            for (int k = 0; k < cols; k++) {
                double x = mx > 0 ? v[m][(size_t)r * cols + k] / mx : 0;
                x = isfinite(x) ? (x < 0 ? 0 : (x > 1 ? 1 : x)) : 0;
                uint8_t g = (uint8_t)lrint(255 * x);
                canvas_fill(c, L + k * cw, gy + r * CH, L + (k + 1) * cw, gy + (r + 1) * CH - 1, g);
            }
        }
        int ya = gy + rows * CH + 2;
        canvas_text(c, L, ya, x_left, 1, INK);
        canvas_text(c, L + cols * cw - canvas_text_width(x_right, 1), ya, x_right, 1, INK);
    }
    int rc = canvas_write(c, path, err, errlen);
    canvas_free(c);
    return rc;
}
