/* test_rgb.c -- a user's own RGB images, end to end (issue #15's done-when).
 *
 * The test draws a folder of 16x16 RGB pictures (coloured shapes, one class
 * folder each), trains a tiny K = 4 set on it with the real ddm-train binary
 * and the quick settings, serves it with the real processes (ddm-expert x4 +
 * ddm-router, plus one replica whose weights have another image shape), and
 * asks /v1/samples for images by class name: they must come back as RGB PNGs
 * of 16x16, in JSON, protobuf and as a server grid, and through ddm-client.
 * Jobs and event streams give RGB too: previews and the result grid.
 * The misfit replica must be refused, and an in-process set whose expert
 * names its classes differently must be refused with the file named. */
#define _GNU_SOURCE /* memmem */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/base64.h"
#include "common/err.h"
#include "common/fsutil.h"
#include "common/model.h"
#include "common/png.h"
#include "ddm/v1/api.pb-c.h"
#include "router/local.h"
#include "server/httpc.h"
#include "tests/support/proc.h"
#include "tests/support/toyset.h"
#include "tools/client/sse_client.h"

#define SIDE 16
#define K 4
#define PER_CLASS 24
#define N_WORKERS (K + 1) /* the last one serves other-shaped weights as expert 0 */

static const char *const CLASSES[3] = { "blue-bar", "green-square", "red-disc" };

static char dir[128], imgs[256], models[256], conf[256], rlog[256];
static pid_t workers[N_WORKERS], router_pid;
static int router_port;

/* ---- the folder ----------------------------------------------------------------------- */

/* Picture i of class c: a coloured shape at a varying place on a light background. */
static void draw(int c, int i, uint8_t *pix)
{
    static const uint8_t col[3][3] = { { 30, 60, 220 }, { 30, 190, 50 }, { 220, 40, 30 } };
    int cx = 5 + (i * 7) % 6, cy = 5 + (i * 5) % 6, r = 3 + i % 3;
    for (int y = 0; y < SIDE; y++) {
        for (int x = 0; x < SIDE; x++) {
            int in = c == 2   ? (x - cx) * (x - cx) + (y - cy) * (y - cy) <= r * r
                     : c == 1 ? abs(x - cx) <= r && abs(y - cy) <= r
                              : abs(y - cy) <= 1 && abs(x - cx) <= r + 3;
            uint8_t *p = pix + (y * SIDE + x) * 3;
            for (int k = 0; k < 3; k++)
                p[k] = in ? col[c][k] : (uint8_t)(235 + (x + y + i) % 8);
        }
    }
}

static int write_folder(void)
{
    char path[512], err[256];
    uint8_t pix[SIDE * SIDE * 3];
    for (int c = 0; c < 3; c++) {
        snprintf(path, sizeof path, "%s/%s", imgs, CLASSES[c]);
        mkdir(imgs, 0755);
        if (mkdir(path, 0755))
            return -1;
        for (int i = 0; i < PER_CLASS; i++) {
            draw(c, i, pix);
            snprintf(path, sizeof path, "%s/%s/%03d.png", imgs, CLASSES[c], i);
            if (pngio_write(path, pix, SIDE, SIDE, 3, err, sizeof err)) {
                fprintf(stderr, "%s\n", err);
                return -1;
            }
        }
    }
    return 0;
}

/* ---- processes --------------------------------------------------------------------------- */

static int run_train(void)
{
    char bin[256], log[300], data[300];
    snprintf(log, sizeof log, "%s/train.log", dir);
    snprintf(data, sizeof data, "%s/data", dir);
    char *argv[] = { (char *)proc_bin("ddm-train", bin, sizeof bin), "all", "--data", imgs,
                     "--k", "4", "--data-dir", data, "--out", models, "--steps", "80",
                     "--router-steps", "80", "--cls-steps", "60", "--hidden", "64", "--rank", "4",
                     "--router-hidden", "32", "--cls-hidden", "32", "--samples", "20",
                     "--sample-steps", "4", "--mono-steps", "10", "--log-secs", "0", "--jobs", "2",
                     NULL };
    pid_t pid = proc_start(argv, log);
    int st = pid > 0 ? proc_wait(pid, 240000) : -1;
    if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        if (st < 0 && pid > 0)
            proc_stop(pid, SIGKILL, 1000);
        fprintf(stderr, "ddm-train all failed (status %d)\n", st);
        proc_dump_log(log);
        return -1;
    }
    return 0;
}

static pid_t start_worker(int i, const char *weights)
{
    char bin[256], log[300], url[300];
    snprintf(log, sizeof log, "%s/worker-%d.log", dir, i);
    snprintf(url, sizeof url, "ipc://%s/w%d.ipc", dir, i);
    char *argv[] = { (char *)proc_bin("ddm-expert", bin, sizeof bin), "--weights",
                     (char *)weights, "--listen", url, NULL };
    return proc_start(argv, log);
}

/* A denoiser with the set's dim but no shape keys (so 768 x 1 x 1). */
static int write_misfit(const char *path)
{
    net_config c = { .in_dim = SIDE * SIDE * 3, .hidden = 8, .n_blocks = 1,
                     .out_dim = SIDE * SIDE * 3, .n_classes = 3, .time_dim = 8, .gauss_rank = 0 };
    return toyset_write_model(path, 0 /* MODEL_DENOISER */, &c, 5, 0, K, ST_F32);
}

static int setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    if (toyset_tempdir(dir, sizeof dir, "test-rgb"))
        return -1;
    snprintf(imgs, sizeof imgs, "%s/shapes", dir);
    snprintf(models, sizeof models, "%s/models", dir);
    if (write_folder() || run_train())
        return -1;
    char misfit[300], weights[300];
    snprintf(misfit, sizeof misfit, "%s/misfit.safetensors", dir);
    if (write_misfit(misfit))
        return -1;
    snprintf(conf, sizeof conf, "%s/cluster.conf", dir);
    FILE *f = fopen(conf, "w");
    if (!f)
        return -1;
    fprintf(f, "models %s\n", models);
    for (int i = 0; i < N_WORKERS; i++)
        fprintf(f, "expert %d ipc://%s/w%d.ipc\n", i < K ? i : 0, dir, i);
    fclose(f);
    for (int i = 0; i < N_WORKERS; i++) {
        snprintf(weights, sizeof weights, "%s/expert-%d.safetensors", models, i);
        if ((workers[i] = start_worker(i, i < K ? weights : misfit)) < 0)
            return -1;
    }
    char bin[256], listen[64];
    router_port = proc_free_port();
    snprintf(listen, sizeof listen, "127.0.0.1:%d", router_port);
    snprintf(rlog, sizeof rlog, "%s/router.log", dir);
    char *argv[] = { (char *)proc_bin("ddm-router", bin, sizeof bin), "--cluster", conf,
                     "--listen", listen, NULL };
    router_pid = proc_start(argv, rlog);
    if (router_pid < 0 || proc_wait_http(router_port, "/readyz", 200, 20000)) {
        fprintf(stderr, "router never became ready\n");
        proc_dump_log(rlog);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (router_pid > 0)
        proc_stop(router_pid, SIGTERM, 5000);
    for (int i = 0; i < N_WORKERS; i++)
        if (workers[i] > 0)
            proc_stop(workers[i], SIGTERM, 5000);
    if (getenv("DDM_KEEP_LOGS"))
        fprintf(stderr, "logs kept in %s\n", dir);
    else
        toyset_rmdir(dir);
    return 0;
}

/* ---- helpers ---------------------------------------------------------------------------- */

static int request(const char *method, const char *path, const char *ctype, const char *accept,
                   const void *body, size_t len, httpc_response *resp)
{
    char hp[64], err[128];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", router_port);
    httpc *c;
    assert_int_equal(httpc_open(hp, 60000, &c, err, sizeof err), 0);
    httpc_header h[2] = { { "Content-Type", ctype }, { "Accept", accept } };
    int nh = ctype ? (accept ? 2 : 1) : 0;
    int rc = httpc_request(c, method, path, h, nh, body, len, resp);
    httpc_close(c);
    return rc ? rc : resp->status;
}

/* An 8-bit RGB PNG of w x h: checked from its IHDR, then decoded. */
static void assert_rgb_png(const uint8_t *png, size_t len, int w, int h)
{
    assert_true(len > 33);
    assert_memory_equal(png + 12, "IHDR", 4);
    uint32_t pw = (uint32_t)png[16] << 24 | png[17] << 16 | png[18] << 8 | png[19];
    uint32_t ph = (uint32_t)png[20] << 24 | png[21] << 16 | png[22] << 8 | png[23];
    assert_int_equal(pw, w);
    assert_int_equal(ph, h);
    assert_int_equal(png[24], 8); /* bit depth */
    assert_int_equal(png[25], 2); /* colour type RGB */
    pngio_image img;
    char err[256];
    assert_int_equal(pngio_decode(png, len, &(pngio_opts){ .channels = 3 }, &img, err,
                                  sizeof err), 0);
    assert_int_equal(img.width, w);
    pngio_image_free(&img);
}

/* A base64 PNG (JSON string) is an RGB PNG of w x h. */
static void assert_rgb_b64(const char *b64, int w, int h)
{
    size_t sl = strlen(b64);
    uint8_t *png = malloc(sl);
    long n = base64_decode(b64, sl, png);
    assert_true(n > 0);
    assert_rgb_png(png, (size_t)n, w, h);
    free(png);
}

/* ---- tests --------------------------------------------------------------------------------- */

static void test_training_wrote_shape_and_manifest(void **state)
{
    (void)state;
    char path[400], err[512];
    snprintf(path, sizeof path, "%s/router.safetensors", models);
    model *m = model_open(path, err, sizeof err);
    assert_non_null(m);
    assert_int_equal(m->shape.height, SIDE);
    assert_int_equal(m->shape.width, SIDE);
    assert_int_equal(m->shape.channels, 3);
    assert_int_equal(m->shape.n_class_names, 3);
    for (int c = 0; c < 3; c++)
        assert_string_equal(m->shape.class_names[c], CLASSES[c]);
    assert_string_equal(m->dataset, "shapes");
    model_close(m);
    snprintf(path, sizeof path, "%s/data/shapes/k4/manifest.tsv", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[512];
    int n = 0;
    while (fgets(line, sizeof line, f))
        n += line[0] != '#';
    fclose(f);
    assert_int_equal(n, 3 * PER_CLASS);
}

static void test_samples_rgb_by_class_name(void **state)
{
    (void)state;
    httpc_response r;
    const char *body = "{\"n\": 3, \"steps\": 8, \"seed\": 5, \"label\": \"red-disc\", "
                       "\"guidance\": 2}";
    int st = request("POST", "/v1/samples", "application/json", NULL, body, strlen(body), &r);
    if (st != 200)
        fail_msg("status %d: %.*s", st, (int)r.body_len, r.body);
    cJSON *root = cJSON_ParseWithLength((const char *)r.body, r.body_len);
    assert_non_null(root);
    assert_int_equal(cJSON_GetObjectItem(root, "channels")->valueint, 3);
    assert_int_equal(cJSON_GetObjectItem(root, "width")->valueint, SIDE);
    cJSON *imgs_js = cJSON_GetObjectItem(root, "images");
    assert_int_equal(cJSON_GetArraySize(imgs_js), 3);
    cJSON *it;
    cJSON_ArrayForEach(it, imgs_js) {
        size_t sl = strlen(it->valuestring);
        uint8_t *png = malloc(sl);
        long n = base64_decode(it->valuestring, sl, png);
        assert_true(n > 0);
        assert_rgb_png(png, (size_t)n, SIDE, SIDE);
        free(png);
    }
    cJSON_Delete(root);
    httpc_response_free(&r);

    /* the same class by number gives the same images */
    const char *by_num = "{\"n\": 3, \"steps\": 8, \"seed\": 5, \"label\": 2, \"guidance\": 2}";
    httpc_response r2;
    assert_int_equal(request("POST", "/v1/samples", "application/json", NULL, body, strlen(body),
                             &r), 200);
    assert_int_equal(request("POST", "/v1/samples", "application/json", NULL, by_num,
                             strlen(by_num), &r2), 200);
    cJSON *a = cJSON_ParseWithLength((const char *)r.body, r.body_len);
    cJSON *b = cJSON_ParseWithLength((const char *)r2.body, r2.body_len);
    assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(a, "images"), 0)->valuestring,
                        cJSON_GetArrayItem(cJSON_GetObjectItem(b, "images"), 0)->valuestring);
    cJSON_Delete(a);
    cJSON_Delete(b);
    httpc_response_free(&r);
    httpc_response_free(&r2);

    /* a name that is no class: 400 naming the valid ones */
    const char *badn = "{\"n\": 1, \"label\": \"purple\"}";
    assert_int_equal(request("POST", "/v1/samples", "application/json", NULL, badn, strlen(badn),
                             &r), 400);
    assert_non_null(memmem(r.body, r.body_len, "green-square", 12));
    httpc_response_free(&r);
}

static void test_protobuf_and_grid(void **state)
{
    (void)state;
    Ddm__V1__SampleRequest q = DDM__V1__SAMPLE_REQUEST__INIT;
    q.has_n = 1, q.n = 2;
    q.has_steps = 1, q.steps = 6;
    q.label_name = "green-square";
    uint8_t buf[128];
    size_t len = ddm__v1__sample_request__pack(&q, buf);
    httpc_response r;
    int st = request("POST", "/v1/samples", "application/x-protobuf", NULL, buf, len, &r);
    if (st != 200)
        fail_msg("status %d: %.*s", st, (int)r.body_len, r.body);
    Ddm__V1__SampleResponse *m = ddm__v1__sample_response__unpack(NULL, r.body_len, (const uint8_t *)r.body);
    assert_non_null(m);
    assert_true(m->has_channels && m->channels == 3);
    assert_true(m->has_width && m->width == SIDE && m->height == SIDE);
    assert_int_equal(m->n_images, 2);
    assert_rgb_png(m->images[1].data, m->images[1].len, SIDE, SIDE);
    ddm__v1__sample_response__free_unpacked(m, NULL);
    httpc_response_free(&r);

    /* label and label_name together is ambiguous */
    q.has_label = 1, q.label = 0;
    len = ddm__v1__sample_request__pack(&q, buf);
    assert_int_equal(request("POST", "/v1/samples", "application/x-protobuf", NULL, buf, len, &r),
                     400);
    httpc_response_free(&r);

    /* one RGB grid: 4 images in 2 columns */
    const char *body = "{\"n\": 4, \"steps\": 6, \"label\": \"blue-bar\"}";
    assert_int_equal(request("POST", "/v1/samples", "application/json", "image/png", body,
                             strlen(body), &r), 200);
    assert_rgb_png((const uint8_t *)r.body, r.body_len, 2 * SIDE + PNGIO_GRID_SEP, 2 * SIDE + PNGIO_GRID_SEP);
    httpc_response_free(&r);
}

static void test_previews_and_job_results_rgb(void **state)
{
    (void)state;
    /* a streamed sample: its previews are RGB grids, its result RGB images */
    char hp[64];
    snprintf(hp, sizeof hp, "127.0.0.1:%d", router_port);
    const char *body = "{\"n\": 4, \"steps\": 8, \"label\": \"red-disc\", \"preview_every\": 2}";
    httpc_header h[2] = { { "Content-Type", "application/json" },
                          { "Accept", "text/event-stream" } };
    ssec *s;
    int status;
    assert_int_equal(ssec_open(hp, "POST", "/v1/samples", h, 2, body, strlen(body), 60000, &s,
                               &status, NULL), 0);
    ssec_event ev;
    int previews = 0, done = 0;
    const int grid = 2 * SIDE + PNGIO_GRID_SEP; /* 4 images: 2 x 2 */
    while (ssec_next(s, &ev, 60000) == 1) {
        cJSON *d = cJSON_Parse(ev.data);
        assert_non_null(d);
        if (!strcmp(ev.event, "preview")) {
            assert_rgb_b64(cJSON_GetObjectItem(d, "png")->valuestring, grid, grid);
            previews++;
        } else if (!strcmp(ev.event, "done")) {
            assert_int_equal(cJSON_GetObjectItem(d, "channels")->valueint, 3);
            cJSON *it;
            cJSON_ArrayForEach(it, cJSON_GetObjectItem(d, "images"))
                assert_rgb_b64(it->valuestring, SIDE, SIDE);
            done = 1;
        }
        cJSON_Delete(d);
    }
    ssec_close(s);
    assert_true(previews >= 1);
    assert_true(done);

    /* a job: its result as one grid is an RGB PNG */
    httpc_response r;
    assert_int_equal(request("POST", "/v1/jobs", "application/json", NULL, body, strlen(body), &r),
                     202);
    cJSON *j = cJSON_ParseWithLength(r.body, r.body_len);
    char path[120];
    snprintf(path, sizeof path, "/v1/jobs/%s", cJSON_GetObjectItem(j, "id")->valuestring);
    cJSON_Delete(j);
    httpc_response_free(&r);
    int st = 409;
    for (int i = 0; i < 3000 && st == 409; i++) { /* 409 until it has a result */
        st = request("GET", path, "application/json", "image/png", NULL, 0, &r);
        if (st == 409) {
            httpc_response_free(&r);
            usleep(20000);
        }
    }
    assert_int_equal(st, 200);
    assert_rgb_png((const uint8_t *)r.body, r.body_len, grid, grid);
    httpc_response_free(&r);
}

static void test_experts_show_shape_and_refuse_misfit(void **state)
{
    (void)state;
    httpc_response r;
    cJSON *root = NULL;
    /* the misfit replica may still be starting (a loaded machine): wait for its handshake */
    for (int i = 0; i < 600; i++) {
        assert_int_equal(request("GET", "/v1/experts", NULL, NULL, NULL, 0, &r), 200);
        root = cJSON_ParseWithLength((const char *)r.body, r.body_len);
        assert_non_null(root);
        const cJSON *rp = cJSON_GetArrayItem(
            cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(root, "experts"), 0),
                                "replicas"), 1);
        const cJSON *st = rp ? cJSON_GetObjectItem(rp, "state") : NULL;
        if (!cJSON_IsString(st) || strcmp(st->valuestring, "connecting"))
            break;
        cJSON_Delete(root);
        httpc_response_free(&r);
        root = NULL;
        usleep(50000);
    }
    assert_non_null(root);
    assert_int_equal(cJSON_GetObjectItem(root, "channels")->valueint, 3);
    assert_int_equal(cJSON_GetObjectItem(root, "height")->valueint, SIDE);
    assert_string_equal(cJSON_GetObjectItem(root, "dataset")->valuestring, "shapes");
    cJSON *names = cJSON_GetObjectItem(root, "class_names");
    assert_int_equal(cJSON_GetArraySize(names), 3);
    assert_string_equal(cJSON_GetArrayItem(names, 1)->valuestring, "green-square");
    /* expert 0's second replica serves 768x1x1 weights: refused */
    cJSON *reps = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(root, "experts"), 0),
                                      "replicas");
    assert_int_equal(cJSON_GetArraySize(reps), 2);
    cJSON *misfit = cJSON_GetArrayItem(reps, 1);
    assert_string_equal(cJSON_GetObjectItem(misfit, "state")->valuestring, "refused");
    assert_non_null(strstr(cJSON_GetObjectItem(misfit, "detail")->valuestring, "16x16x3"));
    cJSON_Delete(root);
    httpc_response_free(&r);
}

static void test_client_writes_rgb_grid(void **state)
{
    (void)state;
    char bin[256], url[64], out[300], log[300];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", router_port);
    snprintf(out, sizeof out, "%s/client-grid.png", dir);
    snprintf(log, sizeof log, "%s/client.log", dir);
    char *argv[] = { (char *)proc_bin("ddm-client", bin, sizeof bin), "sample", "--url", url,
                     "-n", "4", "--steps", "6", "--label", "red-disc", "--proto", "-o", out,
                     NULL };
    pid_t pid = proc_start(argv, log);
    int st = proc_wait(pid, 60000);
    if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        proc_dump_log(log);
        fail_msg("ddm-client sample failed (%d)", st);
    }
    size_t len;
    uint8_t *png;
    char err[256];
    assert_int_equal(fs_read_file(out, 1 << 20, &png, &len, err, sizeof err), 0);
    assert_rgb_png(png, len, 2 * SIDE + PNGIO_GRID_SEP, 2 * SIDE + PNGIO_GRID_SEP);
    free(png);
}

static void test_in_process_set_refuses_other_names(void **state)
{
    (void)state;
    /* a copy of the set whose expert 1 names its classes differently */
    char other[300], path[400], src[400], err[1024];
    snprintf(other, sizeof other, "%s/other", dir);
    mkdir(other, 0755);
    for (int k = 0; k <= K; k++) {
        if (k == K)
            snprintf(src, sizeof src, "%s/router.safetensors", models);
        else
            snprintf(src, sizeof src, "%s/expert-%d.safetensors", models, k);
        snprintf(path, sizeof path, "%s/%s", other, strrchr(src, '/') + 1);
        assert_int_equal(symlink(src, path), 0);
    }
    ensemble *e = ensemble_open(other, err, sizeof err);
    assert_non_null(e); /* the set as trained loads */
    ensemble_close(e);
    snprintf(path, sizeof path, "%s/expert-1.safetensors", other);
    unlink(path);
    model *m;
    snprintf(src, sizeof src, "%s/expert-1.safetensors", models);
    m = model_open(src, err, sizeof err);
    assert_non_null(m);
    st_writer *w = st_writer_new();
    assert_non_null(w);
    assert_int_equal(model_write(w, MODEL_DENOISER, &m->cfg, m->params, ST_F32, "shapes", 1, K), 0);
    char *names[3] = { "a", "b", "c" };
    model_shape sh = m->shape;
    sh.class_names = names;
    assert_int_equal(model_shape_write(w, &sh), 0);
    assert_int_equal(st_writer_save(w, path, err, sizeof err), 0);
    st_writer_free(w);
    model_close(m);
    e = ensemble_open(other, err, sizeof err);
    assert_null(e);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "one training run"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_training_wrote_shape_and_manifest),
        cmocka_unit_test(test_samples_rgb_by_class_name),
        cmocka_unit_test(test_protobuf_and_grid),
        cmocka_unit_test(test_previews_and_job_results_rgb),
        cmocka_unit_test(test_experts_show_shape_and_refuse_misfit),
        cmocka_unit_test(test_client_writes_rgb_grid),
        cmocka_unit_test(test_in_process_set_refuses_other_names),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
