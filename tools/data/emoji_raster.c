/* emoji_raster.c -- the emoji demonstration set: every single-code-point emoji
 * of Noto Color Emoji as an RGBA PNG in a folder named after its Unicode group.
 *
 * usage: emoji-raster FONT EMOJI-TEST.TXT OUTDIR
 *
 * FONT is NotoColorEmoji.ttf (Debian's fonts-noto-color-emoji: a CBDT/CBLC
 * bitmap font whose glyphs are embedded PNGs, one strike of 136x128), read
 * with FreeType (FT_LOAD_COLOR gives BGRA bitmaps). EMOJI-TEST.TXT is
 * Unicode's emoji-test.txt (Debian's unicode-data): its "# group:" lines
 * name the class of every fully-qualified emoji. Only emoji of one code
 * point (optionally followed by U+FE0F) are drawn -- the font maps those
 * through its cmap; sequences (skin tones, flags, families) go through
 * ligatures and are left out. The group "Component" is skipped.
 *
 * Each glyph is written as OUTDIR/<group>/<codepoint>.png, RGBA at the
 * font's own size with its transparency: `ddm-train --data OUTDIR --size 32
 * --background ffffff` then crops, composites and resamples it. Prints the
 * count per group. Exit 0, 1 on a runtime error, 2 on a usage error. */
#include <ft2build.h>
#include FT_FREETYPE_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/fsutil.h"
#include "common/png.h"

#define MAX_GROUPS 16

/* "Smileys & Emotion" -> "smileys-emotion" */
static void slug(const char *in, char *out, size_t len)
{
    size_t o = 0;
    int dash = 0;
    for (const char *p = in; *p && o + 1 < len; p++) {
        char c = *p;
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
            if (dash && o)
                out[o++] = '-';
            out[o++] = c;
            dash = 0;
        } else {
            dash = 1;
        }
    }
    out[o] = '\0';
}

/* Writes glyph gi as an RGBA PNG at path. Returns 0, or -1 with a message. */
static int write_glyph(FT_Face face, FT_UInt gi, const char *path)
{
    if (FT_Load_Glyph(face, gi, FT_LOAD_COLOR)) {
        fprintf(stderr, "emoji-raster: glyph %u does not load\n", gi);
        return -1;
    }
    const FT_Bitmap *bm = &face->glyph->bitmap;
    if (bm->pixel_mode != FT_PIXEL_MODE_BGRA || bm->width == 0 || bm->rows == 0)
        return 1; /* not a colour bitmap: skip */
    int w = (int)bm->width, h = (int)bm->rows;
    uint8_t *rgba = malloc((size_t)w * h * 4);
    if (!rgba)
        return -1;
    for (int y = 0; y < h; y++) {
        const uint8_t *src = bm->buffer + (long)y * bm->pitch;
        for (int x = 0; x < w; x++) {
            /* premultiplied BGRA -> straight RGBA */
            unsigned b = src[4 * x], g = src[4 * x + 1], r = src[4 * x + 2], a = src[4 * x + 3];
            uint8_t *d = rgba + ((size_t)y * w + x) * 4;
            d[0] = (uint8_t)(a ? (r * 255 + a / 2) / a : 0);
            d[1] = (uint8_t)(a ? (g * 255 + a / 2) / a : 0);
            d[2] = (uint8_t)(a ? (b * 255 + a / 2) / a : 0);
            d[3] = (uint8_t)a;
        }
    }
    char err[512];
    int rc = pngio_write(path, rgba, w, h, 4, err, sizeof err);
    free(rgba);
    if (rc)
        fprintf(stderr, "emoji-raster: %s\n", err);
    return rc ? -1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: emoji-raster FONT EMOJI-TEST.TXT OUTDIR (see tools/data/emoji_raster.c)\n");
        return 0;
    }
    if (argc != 4) {
        fprintf(stderr, "usage: emoji-raster FONT EMOJI-TEST.TXT OUTDIR\n");
        return 2;
    }
    FT_Library lib;
    FT_Face face;
    if (FT_Init_FreeType(&lib) || FT_New_Face(lib, argv[1], 0, &face)) {
        fprintf(stderr, "emoji-raster: %s: not a font FreeType can read\n", argv[1]);
        return 1;
    }
    if (!FT_HAS_COLOR(face) || face->num_fixed_sizes < 1 || FT_Select_Size(face, 0)) {
        fprintf(stderr, "emoji-raster: %s: no colour bitmap strike (not Noto Color Emoji?)\n",
                argv[1]);
        return 1;
    }
    FILE *t = fopen(argv[2], "r");
    if (!t) {
        fprintf(stderr, "emoji-raster: %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    char err[512], line[1024], group[64] = "", gdir[4096], path[4200];
    if (fs_mkdirs(argv[3], err, sizeof err)) {
        fprintf(stderr, "emoji-raster: %s\n", err);
        return 1;
    }
    int counts[MAX_GROUPS] = { 0 }, ng = -1, total = 0, rc = 0;
    char names[MAX_GROUPS][64];
    while (!rc && fgets(line, sizeof line, t)) {
        if (!strncmp(line, "# group: ", 9)) {
            line[strcspn(line, "\r\n")] = '\0';
            slug(line + 9, group, sizeof group);
            if (strcmp(group, "component") && ng + 1 < MAX_GROUPS) {
                snprintf(names[++ng], sizeof names[0], "%s", group);
                snprintf(gdir, sizeof gdir, "%s/%s", argv[3], group);
                if (fs_mkdirs(gdir, err, sizeof err)) {
                    fprintf(stderr, "emoji-raster: %s\n", err);
                    rc = 1;
                }
            }
            continue;
        }
        if (line[0] == '#' || !strstr(line, "; fully-qualified") || ng < 0 ||
            strcmp(group, names[ng]))
            continue;
        /* the code points before ';': one, or one and U+FE0F */
        unsigned cps[8];
        int ncp = 0;
        char *semi = strchr(line, ';');
        *semi = '\0';
        for (char *tok = strtok(line, " \t"); tok && ncp < 8; tok = strtok(NULL, " \t"))
            cps[ncp++] = (unsigned)strtoul(tok, NULL, 16);
        if (ncp < 1 || ncp > 2 || (ncp == 2 && cps[1] != 0xFE0F))
            continue;
        unsigned cp = cps[0];
        FT_UInt gi = FT_Get_Char_Index(face, cp);
        if (!gi)
            continue;
        snprintf(path, sizeof path, "%s/%s/%04x.png", argv[3], group, cp);
        int w = write_glyph(face, gi, path);
        if (w < 0)
            rc = 1;
        else if (w == 0) {
            counts[ng]++;
            total++;
        }
    }
    fclose(t);
    FT_Done_Face(face);
    FT_Done_FreeType(lib);
    for (int g = 0; g <= ng; g++)
        printf("emoji-raster: %-18s %4d\n", names[g], counts[g]);
    printf("emoji-raster: %d emoji written under %s\n", total, argv[3]);
    return rc ? 1 : total ? 0 : 1;
}
