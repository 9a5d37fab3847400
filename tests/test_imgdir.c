/* test_imgdir.c -- folders of PNGs as training sets (tools/train/imgdir,
 * data_load_spec): classes from subfolders in sorted order, size and channels
 * chosen from the data, centre crop and area resampling, alpha on the chosen
 * background, the split, the manifest, and a clear error for each mistake a
 * user makes (empty folder, corrupt PNGs with and without --strict, mixed
 * sizes without --size, images beside class folders, too many classes, a
 * size the model cannot take). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <cmocka.h>

#include "common/err.h"
#include "common/png.h"
#include "tools/train/data.h"
#include "tools/train/imgdir.h"
#include "tests/support/toyset.h"

static char tmpdir[64];

static int setup(void **state)
{
    (void)state;
    return toyset_tempdir(tmpdir, sizeof tmpdir, "test-imgdir");
}

static int teardown(void **state)
{
    (void)state;
    toyset_rmdir(tmpdir);
    return 0;
}

/* Writes tmpdir/rel as a w x h image of one colour (channels 3) or grey (1). */
static void solid(const char *rel, int w, int h, int channels, uint8_t r, uint8_t g, uint8_t b)
{
    char path[512], dir[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, rel);
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    *slash = '\0';
    mkdir(dir, 0755);
    uint8_t *pix = malloc((size_t)w * h * 3);
    assert_non_null(pix);
    for (int i = 0; i < w * h; i++) {
        uint8_t v[3] = { r, g, b };
        memcpy(pix + (size_t)i * channels, v, (size_t)channels);
    }
    char err[256];
    assert_int_equal(pngio_write(path, pix, w, h, channels, err, sizeof err), 0);
    free(pix);
}

static void raw_file(const char *rel, const char *bytes)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, rel);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(bytes, f);
    fclose(f);
}

static int load(const imgdir_opts *o, imgdir_set **s, char *err, size_t errlen)
{
    return imgdir_load(tmpdir, o, s, err, errlen);
}

static void test_resample_is_an_area_average(void **state)
{
    (void)state;
    /* 4x4 -> 2x2: each output the mean of its 2x2 block */
    uint8_t src[16] = { 0, 4, 100, 100, 8, 12, 100, 100, 50, 50, 0, 0, 50, 50, 0, 255 };
    uint8_t dst[4];
    imgdir_resample(src, 4, 1, 0, 0, 4, 2, dst);
    assert_int_equal(dst[0], 6);
    assert_int_equal(dst[1], 100);
    assert_int_equal(dst[2], 50);
    assert_int_equal(dst[3], 64); /* 255 / 4 = 63.75 */
    /* 3 -> 2 (fractional): out0 = (a + b/2) / 1.5 */
    uint8_t s3[9] = { 30, 90, 150, 30, 90, 150, 30, 90, 150 };
    imgdir_resample(s3, 3, 1, 0, 0, 3, 2, dst);
    assert_int_equal(dst[0], 50);
    assert_int_equal(dst[1], 130);
    /* a crop window: the centre 2x2 of the 4x4, unchanged at the same size */
    imgdir_resample(src, 4, 1, 1, 1, 2, 2, dst);
    const uint8_t want[4] = { 12, 100, 50, 0 };
    assert_memory_equal(dst, want, 4);
}

static void test_classes_size_channels_and_manifest(void **state)
{
    (void)state;
    solid("zebra/a.png", 20, 16, 3, 255, 0, 0);   /* 20x16: centre crop to 16x16 */
    solid("apple/b.png", 20, 16, 3, 0, 255, 0);
    solid("apple/sub/c.png", 20, 16, 1, 80, 80, 80); /* deeper: still class apple */
    for (int i = 0; i < 9; i++) {
        char rel[64];
        snprintf(rel, sizeof rel, "mango/m%d.png", i);
        solid(rel, 20, 16, 1, (uint8_t)(10 * i), 0, 0);
    }
    raw_file("mango/notes.txt", "not an image");
    imgdir_set *s = NULL;
    char err[512];
    imgdir_opts o = { .quiet = 1 };
    assert_int_equal(load(&o, &s, err, sizeof err), 0);
    assert_int_equal(s->n, 12);
    assert_int_equal(s->size, 16);       /* the images' own (smaller) side */
    assert_int_equal(s->channels, 3);    /* some files are colour */
    assert_int_equal(s->n_classes, 3);
    assert_string_equal(s->class_names[0], "apple");
    assert_string_equal(s->class_names[1], "mango");
    assert_string_equal(s->class_names[2], "zebra");
    assert_string_equal(s->paths[0], "apple/b.png");
    assert_string_equal(s->paths[1], "apple/sub/c.png");
    assert_int_equal(s->labels[1], 0);
    assert_int_equal(s->labels[11], 2);
    const uint8_t red[3] = { 255, 0, 0 };
    assert_memory_equal(s->pix + (size_t)11 * s->dim, red, 3);
    /* the tenth image of a class is test */
    int tests = 0;
    for (int i = 0; i < s->n; i++)
        tests += s->test[i];
    assert_int_equal(tests, 0); /* mango has 9: j % 10 == 9 never */
    char mpath[256];
    snprintf(mpath, sizeof mpath, "%s/manifest.tsv", tmpdir);
    assert_int_equal(imgdir_write_manifest(s, tmpdir, &o, mpath, err, sizeof err), 0);
    FILE *f = fopen(mpath, "r");
    assert_non_null(f);
    char line[512];
    int lines = 0, found = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#')
            continue;
        lines++;
        found |= !strncmp(line, "zebra/a.png\t", 12) && strstr(line, "\tzebra\ttrain\n");
    }
    fclose(f);
    assert_int_equal(lines, 12);
    assert_true(found);
    imgdir_free(s);

    /* grey on request, and the whole set as a dataset through data_load_spec */
    data_spec spec = { .name = tmpdir, .folder = { .channels = 1, .size = 8, .quiet = 1 } };
    dataset *ds = NULL;
    assert_int_equal(data_load_spec(&spec, DATA_TRAIN, &ds, err, sizeof err), 0);
    assert_int_equal(ds->dim, 64);
    assert_int_equal(ds->channels, 1);
    assert_int_equal(ds->n_classes, 3);
    assert_string_equal(ds->class_names[2], "zebra");
    assert_string_equal(ds->shape.class_names[0], "apple");
    char name[32];
    data_set_name(tmpdir, name, sizeof name);
    assert_string_equal(ds->name, name);
    data_free(ds);
}

static void test_one_class_without_folders(void **state)
{
    (void)state;
    /* (alpha compositing itself is test_png's; the background reaches it) */
    solid("opaque.png", 4, 4, 3, 1, 2, 3);
    imgdir_set *s = NULL;
    char err[256];
    imgdir_opts o = { .quiet = 1, .background = { 255, 255, 255 } };
    assert_int_equal(load(&o, &s, err, sizeof err), 0);
    const uint8_t want[3] = { 1, 2, 3 };
    assert_memory_equal(s->pix, want, 3);
    assert_int_equal(s->n_classes, 1); /* no class folders: one class, the folder's name */
    char name[32];
    data_set_name(tmpdir, name, sizeof name);
    assert_string_equal(s->class_names[0], name);
    imgdir_free(s);
}

static void test_user_errors(void **state)
{
    (void)state;
    imgdir_set *s = NULL;
    char err[1024];
    imgdir_opts o = { .quiet = 1 };
    /* empty folder */
    assert_int_equal(load(&o, &s, err, sizeof err), DDM_ENOTFOUND);
    assert_non_null(strstr(err, "no .png files"));
    assert_null(s);
    /* missing folder */
    assert_int_equal(imgdir_load("/tmp/ddm-no-such-folder", &o, &s, err, sizeof err),
                     DDM_ENOTFOUND);
    /* corrupt files: skipped and counted, or fatal with strict */
    solid("a/1.png", 8, 8, 3, 9, 9, 9);
    raw_file("a/2.png", "\x89PNG\r\n\x1a\ntruncated");
    raw_file("a/3.png", "garbage");
    assert_int_equal(load(&o, &s, err, sizeof err), 0);
    assert_int_equal(s->n, 1);
    assert_int_equal(s->n_skipped, 2);
    assert_non_null(strstr(s->skipped, "a/2.png"));
    imgdir_free(s);
    s = NULL;
    o.strict = 1;
    assert_true(load(&o, &s, err, sizeof err) < 0);
    assert_non_null(strstr(err, "a/2.png"));
    assert_non_null(strstr(err, "--strict"));
    o.strict = 0;
    /* mixed sizes without --size; fine with it */
    solid("a/4.png", 12, 10, 3, 1, 1, 1);
    assert_int_equal(load(&o, &s, err, sizeof err), DDM_EMISMATCH);
    assert_non_null(strstr(err, "--size"));
    o.size = 6;
    assert_int_equal(load(&o, &s, err, sizeof err), 0);
    assert_int_equal(s->dim, 6 * 6 * 3);
    imgdir_free(s);
    s = NULL;
    /* a size the model cannot take */
    o.size = 64;
    assert_int_equal(load(&o, &s, err, sizeof err), DDM_ERANGE);
    assert_non_null(strstr(err, "--size 52"));
    o.size = 6;
    /* an image beside class folders */
    solid("loose.png", 8, 8, 3, 1, 1, 1);
    assert_int_equal(load(&o, &s, err, sizeof err), DDM_EINVAL);
    assert_non_null(strstr(err, "loose.png"));
    toyset_rmdir(tmpdir);
    mkdir(tmpdir, 0700);
    /* more classes than the model supports */
    for (int k = 0; k <= IMGDIR_MAX_CLASSES; k++) {
        char rel[64];
        snprintf(rel, sizeof rel, "c%02d/x.png", k);
        solid(rel, 2, 2, 1, 0, 0, 0);
    }
    assert_int_equal(load(&o, &s, err, sizeof err), DDM_ERANGE);
    assert_non_null(strstr(err, "at most 64 classes"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resample_is_an_area_average),
        cmocka_unit_test_setup_teardown(test_classes_size_channels_and_manifest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_class_without_folders, setup, teardown),
        cmocka_unit_test_setup_teardown(test_user_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
