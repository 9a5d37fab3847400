/* test_model.c -- weights files of networks: write + open round trips for each
 * kind and dtype, and a table of flawed files each refused with a message
 * naming the file, the tensor or key, and what is wrong. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/err.h"
#include "common/half_gemm.h"
#include "common/model.h"
#include "common/rng.h"
#include "tests/support/toyset.h"

static char tmpdir[64];

static int group_setup(void **state)
{
    (void)state;
    return toyset_tempdir(tmpdir, sizeof tmpdir, "test-model");
}

static int group_teardown(void **state)
{
    (void)state;
    toyset_rmdir(tmpdir);
    return 0;
}

static void tmp_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tmpdir, name);
}

/* D=16 H=8, two blocks, 10 classes, time features and a rank-3 Gaussian. */
static const net_config denoiser_cfg = { .in_dim = 16, .hidden = 8, .n_blocks = 2, .out_dim = 16,
                                         .n_classes = 10, .time_dim = 4, .gauss_rank = 3 };
static const net_config router_cfg = { .in_dim = 16, .hidden = 8, .n_blocks = 1, .out_dim = 4,
                                       .n_classes = 10, .time_dim = 4, .gauss_rank = 0 };
static const net_config classifier_cfg = { .in_dim = 16, .hidden = 8, .n_blocks = 0,
                                           .out_dim = 10, .n_classes = 0, .time_dim = 0,
                                           .gauss_rank = 0 };

/* Random parameters with valid Gaussian variances; caller frees. */
static float *random_params(const net_config *c, uint64_t seed)
{
    size_t n = net_param_count(c);
    float *p = malloc(n * sizeof *p);
    assert_non_null(p);
    rng_normal_fill(seed, 0, 0, p, n);
    net_weights w;
    net_bind(c, p, &w);
    for (int r = 0; w.g_lam && r < c->gauss_rank; r++)
        w.g_lam[r] = fabsf(w.g_lam[r]) + 0.1f;
    if (w.g_sig2)
        w.g_sig2[0] = 0.5f;
    return p;
}

static model *open_ok(const char *path)
{
    char err[512] = "";
    model *m = model_open(path, err, sizeof err);
    if (!m)
        fail_msg("model_open(%s): %s", path, err);
    return m;
}

static void assert_cfg_equal(const net_config *a, const net_config *b)
{
    assert_memory_equal(a, b, sizeof *a);
}

/* ---- round trips ------------------------------------------------------------------ */

static void test_denoiser_roundtrip_f32(void **state)
{
    (void)state;
    char path[256], err[512];
    tmp_path(path, sizeof path, "expert-2.safetensors");
    const net_config *c = &denoiser_cfg;
    float *p = random_params(c, 1);
    float centroid[16];
    for (int i = 0; i < 16; i++)
        centroid[i] = (float)i;
    const int64_t cshape[1] = { 16 };

    st_writer *w = st_writer_new();
    assert_int_equal(model_write(w, MODEL_DENOISER, c, p, ST_F32, "digits", 2, 8), 0);
    assert_int_equal(st_writer_add_f32(w, "centroid", ST_F32, 1, cshape, centroid), 0);
    assert_int_equal(st_writer_meta(w, "seed", "7"), 0);
    assert_int_equal(st_writer_save(w, path, err, sizeof err), 0);
    st_writer_free(w);

    model *m = open_ok(path);
    assert_int_equal(m->kind, MODEL_DENOISER);
    assert_cfg_equal(&m->cfg, c);
    assert_int_equal(m->expert_id, 2);
    assert_int_equal(m->num_experts, 8);
    assert_string_equal(m->dataset, "digits");
    assert_string_equal(model_meta(m, "ddm.format"), MODEL_FORMAT);
    assert_string_equal(model_meta(m, "ddm.kind"), "denoiser");
    assert_string_equal(model_meta(m, "seed"), "7");
    assert_string_equal(model_meta(m, "gauss_rank"), "3");
    assert_null(model_meta(m, "nothing"));
    assert_int_equal(strlen(st_sha256(m->file)), 64);
    /* the extra tensor rides along in the file */
    assert_non_null(st_get(m->file, "centroid"));

    size_t n = net_param_count(c);
    assert_memory_equal(m->params, p, n * sizeof *p);
    /* the weights point into the owned buffer per the layout */
    net_tensor_info info[NET_MAX_TENSORS];
    int nt = net_tensor_table(c, info);
    net_weights expect;
    net_bind(c, m->params, &expect);
    assert_memory_equal(&m->w, &expect, offsetof(net_weights, w_in_t));
    /* the transposed copies for net_forward follow the parameters */
    const int D = c->in_dim, H = c->hidden, R = c->gauss_rank;
    assert_ptr_equal(m->w.w_in_t, m->params + n);
    for (int i = 0; i < H; i++)
        for (int j = 0; j < D; j++)
            assert_true(m->w.w_in_t[(size_t)j * H + i] == m->w.w_in[(size_t)i * D + j]);
    for (int b = 0; b < c->n_blocks; b++)
        for (int i = 0; i < H; i++)
            for (int j = 0; j < H; j++) {
                size_t at = (size_t)b * H * H;
                assert_true(m->w.w1_t[at + (size_t)j * H + i] == m->w.w1[at + (size_t)i * H + j]);
                assert_true(m->w.w2_t[at + (size_t)j * H + i] == m->w.w2[at + (size_t)i * H + j]);
            }
    for (int i = 0; i < c->out_dim; i++)
        for (int j = 0; j < H; j++)
            assert_true(m->w.w_out_t[(size_t)j * c->out_dim + i] == m->w.w_out[(size_t)i * H + j]);
    for (int r = 0; r < R; r++)
        for (int j = 0; j < D; j++)
            assert_true(m->w.g_u_t[(size_t)j * R + r] == m->w.g_u[(size_t)r * D + j]);
    assert_ptr_equal(m->w.g_sig2, m->params + info[nt - 1].offset);
    assert_non_null(m->w.g_u);
    assert_true(m->w.g_lam[0] > 0 && m->w.g_sig2[0] == 0.5f);
    model_close(m);
    free(p);
}

/* Default-initialised parameters (zeros, ones) survive a trip too. */
static void test_denoiser_roundtrip_init_params(void **state)
{
    (void)state;
    char path[256], err[512];
    tmp_path(path, sizeof path, "monolith.safetensors");
    const net_config *c = &denoiser_cfg;
    size_t n = net_param_count(c);
    float *p = malloc(n * sizeof *p);
    assert_non_null(p);
    net_init(c, p, 42);
    st_writer *w = st_writer_new();
    assert_int_equal(model_write(w, MODEL_DENOISER, c, p, ST_F32, "fashion", -1, 8), 0);
    assert_int_equal(st_writer_save(w, path, err, sizeof err), 0);
    st_writer_free(w);
    model *m = open_ok(path);
    assert_int_equal(m->expert_id, -1);
    assert_string_equal(m->dataset, "fashion");
    assert_memory_equal(m->params, p, n * sizeof *p);
    model_close(m);
    free(p);
}

static void test_router_roundtrip_f16(void **state)
{
    (void)state;
    char path[256], err[512];
    tmp_path(path, sizeof path, "router.safetensors");
    const net_config *c = &router_cfg;
    float *p = random_params(c, 2);
    st_writer *w = st_writer_new();
    assert_int_equal(model_write(w, MODEL_ROUTER, c, p, ST_F16, "digits", -1, 4), 0);
    assert_int_equal(st_writer_save(w, path, err, sizeof err), 0);
    st_writer_free(w);

    model *m = open_ok(path);
    assert_int_equal(m->kind, MODEL_ROUTER);
    assert_cfg_equal(&m->cfg, c);
    assert_int_equal(m->num_experts, 4);
    assert_int_equal(m->expert_id, -1);
    assert_int_equal(st_get(m->file, "w_in")->dtype, ST_F16);
    assert_null(m->w.g_mu);
    size_t n = net_param_count(c);
    int differ = 0;
    for (size_t i = 0; i < n; i++) {
        float a = p[i], b = m->params[i];
        if (!(fabsf(a - b) <= fabsf(a) * 0x1p-11f + 0x1p-25f))
            fail_msg("param %zu: %.9g stored as F16 came back %.9g", i, (double)a, (double)b);
        differ += a != b;
    }
    assert_true(differ > 0); /* it really went through half precision */
    model_close(m);
    free(p);
}

/* A weights file stored as F16 holds only halves: model_open keeps exact half
 * copies of the six matrices for half_gemm. The same weights stored as F32
 * (not halves) get none, and net_forward stays on fp32. */
static void test_half_copies(void **state)
{
    (void)state;
    if (!half_gemm_supported())
        skip();
    const net_config c = { .in_dim = 32, .hidden = 16, .n_blocks = 2, .out_dim = 32,
                           .n_classes = 10, .time_dim = 4, .gauss_rank = 16 };
    float *p = random_params(&c, 9);
    char path[256], err[512];
    for (int f16 = 0; f16 <= 1; f16++) {
        tmp_path(path, sizeof path, f16 ? "half.safetensors" : "single.safetensors");
        st_writer *w = st_writer_new();
        assert_int_equal(model_write(w, MODEL_DENOISER, &c, p, f16 ? ST_F16 : ST_F32, "digits",
                                     0, 8), 0);
        assert_int_equal(st_writer_save(w, path, err, sizeof err), 0);
        st_writer_free(w);
        model *m = open_ok(path);
        const uint16_t *h[] = { m->w.w_in_h, m->w.w1_h, m->w.w2_h,
                                m->w.w_out_h, m->w.g_u_th, m->w.g_u_h };
        const float *src[] = { m->w.w_in_t, m->w.w1_t, m->w.w2_t,
                               m->w.w_out_t, m->w.g_u_t, m->w.g_u };
        const size_t len[] = { 32 * 16, 2 * 16 * 16, 2 * 16 * 16, 16 * 32, 32 * 16, 16 * 32 };
        for (int i = 0; i < 6; i++) {
            if (!f16) {
                assert_null(h[i]);
                continue;
            }
            assert_non_null(h[i]);
            for (size_t j = 0; j < len[i]; j++)
                assert_true(st_f16_to_f32(h[i][j]) == src[i][j]);
        }
        assert_true(f16 ? m->halves != NULL : m->halves == NULL);
        model_close(m);
    }
    free(p);
}

static void test_classifier_roundtrip_bf16(void **state)
{
    (void)state;
    char path[256], err[512];
    tmp_path(path, sizeof path, "classifier.safetensors");
    const net_config *c = &classifier_cfg;
    float *p = random_params(c, 3);
    st_writer *w = st_writer_new();
    assert_int_equal(model_write(w, MODEL_CLASSIFIER, c, p, ST_BF16, "digits", -1, 0), 0);
    assert_int_equal(st_writer_save(w, path, err, sizeof err), 0);
    st_writer_free(w);

    model *m = open_ok(path);
    assert_int_equal(m->kind, MODEL_CLASSIFIER);
    assert_cfg_equal(&m->cfg, c);
    assert_int_equal(m->num_experts, 0);
    /* no blocks, no time or label input: those tensors do not exist */
    assert_null(m->w.w1);
    assert_null(m->w.w_t);
    assert_null(m->w.emb);
    assert_null(st_get(m->file, "w1"));
    assert_non_null(m->w.w_out);
    for (size_t i = 0; i < net_param_count(c); i++)
        assert_true(fabsf(p[i] - m->params[i]) <= fabsf(p[i]) * 0x1p-8f);
    model_close(m);
    free(p);
}

static void test_model_write_refuses_bad_args(void **state)
{
    (void)state;
    float *p = random_params(&denoiser_cfg, 4);
    st_writer *w = st_writer_new();
    net_config bad = denoiser_cfg;
    bad.time_dim = 3;
    assert_int_equal(model_write(w, MODEL_DENOISER, &bad, p, ST_F32, "d", 0, 1), DDM_EINVAL);
    assert_int_equal(model_write(w, MODEL_DENOISER, &denoiser_cfg, p, ST_I32, "d", 0, 1),
                     DDM_EINVAL);
    assert_int_equal(model_write(w, MODEL_DENOISER, &denoiser_cfg, p, ST_F32, "d", -2, 1),
                     DDM_EINVAL);
    assert_int_equal(model_write(w, (model_kind)7, &denoiser_cfg, p, ST_F32, "d", 0, 1),
                     DDM_EINVAL);
    assert_int_equal(model_write(w, MODEL_DENOISER, &denoiser_cfg, NULL, ST_F32, "d", 0, 1),
                     DDM_EINVAL);
    st_writer_free(w);
    free(p);
    assert_string_equal(model_kind_name(MODEL_DENOISER), "denoiser");
    assert_string_equal(model_kind_name(MODEL_ROUTER), "router");
    assert_string_equal(model_kind_name(MODEL_CLASSIFIER), "classifier");
    assert_string_equal(model_kind_name((model_kind)9), "unknown");
}

/* ---- flawed files ----------------------------------------------------------------- */

enum { F_NONE, F_SKIP, F_SHAPE, F_I32, F_NAN, F_VALUE };
typedef struct kv { const char *key, *value; } kv; /* value NULL: leave the key out */
typedef struct flaw {
    const char *what;
    const char *tensor; /* tensor the action applies to */
    int action;
    int ndim;           /* F_SHAPE: the shape written instead */
    int64_t shape[3];
    float value;        /* F_VALUE: element 0 becomes this */
    kv meta[4];         /* metadata overrides */
    const char *expect;
} flaw;

/* Writes the denoiser config's file by hand, with one flaw. */
static void write_flawed(const char *path, const float *params, const flaw *fl)
{
    const net_config *c = &denoiser_cfg;
    net_tensor_info info[NET_MAX_TENSORS];
    int n = net_tensor_table(c, info);
    st_writer *w = st_writer_new();
    static float big[4096];
    for (int i = 0; i < n; i++) {
        const net_tensor_info *t = &info[i];
        const float *src = params + t->offset;
        if (!fl->tensor || strcmp(fl->tensor, t->name)) {
            assert_int_equal(st_writer_add_f32(w, t->name, ST_F32, t->ndim, t->shape, src), 0);
            continue;
        }
        switch (fl->action) {
        case F_SKIP:
            break;
        case F_SHAPE: /* any data of the right byte count for the wrong shape */
            assert_int_equal(st_writer_add_f32(w, t->name, ST_F32, fl->ndim, fl->shape, big), 0);
            break;
        case F_I32: {
            int32_t ints[4096] = { 0 };
            assert_true(t->numel <= 4096);
            assert_int_equal(st_writer_add_raw(w, t->name, ST_I32, t->ndim, t->shape, ints,
                                               t->numel * 4), 0);
            break;
        }
        default: { /* F_NAN, F_VALUE: one element replaced */
            assert_true(t->numel <= 4096);
            memcpy(big, src, t->numel * sizeof *big);
            big[fl->action == F_NAN ? t->numel / 2 : 0] = fl->action == F_NAN ? NAN : fl->value;
            assert_int_equal(st_writer_add_f32(w, t->name, ST_F32, t->ndim, t->shape, big), 0);
            memset(big, 0, sizeof big);
            break;
        }
        }
    }
    kv meta[] = {
        { "ddm.format", MODEL_FORMAT }, { "ddm.kind", "denoiser" }, { "in_dim", "16" },
        { "hidden", "8" },    { "n_blocks", "2" },  { "out_dim", "16" },  { "n_classes", "10" },
        { "time_dim", "4" },  { "gauss_rank", "3" }, { "dataset", "digits" },
        { "expert_id", "3" }, { "num_experts", "8" },
    };
    for (size_t i = 0; i < sizeof meta / sizeof meta[0]; i++) {
        const char *v = meta[i].value;
        for (int k = 0; k < 4; k++)
            if (fl->meta[k].key && !strcmp(fl->meta[k].key, meta[i].key))
                v = fl->meta[k].value;
        if (v)
            assert_int_equal(st_writer_meta(w, meta[i].key, v), 0);
    }
    char err[512];
    assert_int_equal(st_writer_save(w, path, err, sizeof err), 0);
    st_writer_free(w);
}

static const flaw flaws[] = {
    { "w2 shape", "w2", F_SHAPE, 3, { 2, 8, 9 }, 0, { { 0 } },
      "tensor \"w2\" shape [2,8,9] does not match metadata (hidden=8, n_blocks=2): "
      "expected [2,8,8]" },
    { "w_in transposed", "w_in", F_SHAPE, 2, { 16, 8 }, 0, { { 0 } },
      "tensor \"w_in\" shape [16,8] does not match metadata (in_dim=16, hidden=8): "
      "expected [8,16]" },
    { "g_sig2 rank", "g_sig2", F_SHAPE, 2, { 1, 1 }, 0, { { 0 } },
      "tensor \"g_sig2\" shape [1,1] does not match metadata (gauss_rank=3): expected [1]" },
    { "missing b_out", "b_out", F_SKIP, 0, { 0 }, 0, { { 0 } },
      "tensor \"b_out\" is missing: metadata (out_dim=16) requires shape [16]" },
    { "missing g_u", "g_u", F_SKIP, 0, { 0 }, 0, { { 0 } },
      "tensor \"g_u\" is missing: metadata (in_dim=16, gauss_rank=3) requires shape [3,16]" },
    { "integer tensor", "b_in", F_I32, 0, { 0 }, 0, { { 0 } },
      "tensor \"b_in\" has dtype I32, expected F32, F16 or BF16" },
    { "NaN value", "w1", F_NAN, 0, { 0 }, 0, { { 0 } },
      "tensor \"w1\" holds a non-finite value (nan) at element 64" },
    { "inf value", "b2", F_VALUE, 0, { 0 }, INFINITY, { { 0 } },
      "tensor \"b2\" holds a non-finite value (inf) at element 0" },
    { "zero sig2", "g_sig2", F_VALUE, 0, { 0 }, 0.0f, { { 0 } },
      "tensor \"g_sig2\" = 0 must be positive" },
    { "negative lam", "g_lam", F_VALUE, 0, { 0 }, -1.0f, { { 0 } },
      "tensor \"g_lam\" element 0 = -1 is negative" },
    { "no format", NULL, F_NONE, 0, { 0 }, 0, { { "ddm.format", NULL } },
      "no ddm.format in __metadata__: not a ddm weights file" },
    { "old format", NULL, F_NONE, 0, { 0 }, 0, { { "ddm.format", "ddm-mlp-v0" } },
      "ddm.format is \"ddm-mlp-v0\", this build reads \"ddm-mlp-v1\"" },
    { "no kind", NULL, F_NONE, 0, { 0 }, 0, { { "ddm.kind", NULL } },
      "ddm.kind is missing, expected denoiser, router or classifier" },
    { "bad kind", NULL, F_NONE, 0, { 0 }, 0, { { "ddm.kind", "painter" } },
      "ddm.kind is \"painter\", expected denoiser, router or classifier" },
    { "no hidden", NULL, F_NONE, 0, { 0 }, 0, { { "hidden", NULL } },
      "metadata hidden is missing" },
    { "hidden with suffix", NULL, F_NONE, 0, { 0 }, 0, { { "hidden", "8x" } },
      "metadata hidden = \"8x\" is not a non-negative decimal integer" },
    { "hidden negative", NULL, F_NONE, 0, { 0 }, 0, { { "hidden", "-8" } },
      "metadata hidden = \"-8\" is not a non-negative decimal integer" },
    { "hidden empty", NULL, F_NONE, 0, { 0 }, 0, { { "hidden", "" } },
      "metadata hidden = \"\" is not a non-negative decimal integer" },
    { "hidden space", NULL, F_NONE, 0, { 0 }, 0, { { "hidden", " 8" } },
      "metadata hidden = \" 8\" is not a non-negative decimal integer" },
    { "hidden overflow", NULL, F_NONE, 0, { 0 }, 0, { { "hidden", "99999999999999999999" } },
      "metadata hidden = \"99999999999999999999\" is out of range" },
    { "hidden too big", NULL, F_NONE, 0, { 0 }, 0, { { "hidden", "99999" } },
      "network config: hidden = 99999, allowed 1..8192" },
    { "hidden disagrees", NULL, F_NONE, 0, { 0 }, 0, { { "hidden", "4" } },
      "tensor \"w_in\" shape [8,16] does not match metadata (in_dim=16, hidden=4): "
      "expected [4,16]" },
    /* a 2 KB file whose metadata claims a 35 GB network: refused from its tensors'
     * shapes, before any allocation of that size (found by fuzz_st) */
    { "huge network claimed", NULL, F_NONE, 0, { 0 }, 0,
      { { "in_dim", "8192" }, { "hidden", "8192" }, { "out_dim", "8192" }, { "n_blocks", "64" } },
      "tensor \"w_in\" shape [8,16] does not match metadata (in_dim=8192, hidden=8192): "
      "expected [8192,8192]" },
    { "odd time_dim", NULL, F_NONE, 0, { 0 }, 0, { { "time_dim", "3" } },
      "time_dim = 3 must be even" },
    { "denoiser out_dim", NULL, F_NONE, 0, { 0 }, 0,
      { { "out_dim", "10" }, { "gauss_rank", "0" } },
      "a denoiser needs out_dim == in_dim (in_dim 16, out_dim 10)" },
    { "gaussian absent in metadata", NULL, F_NONE, 0, { 0 }, 0, { { "gauss_rank", "0" } },
      "tensor \"g_mu\" is present but metadata gauss_rank=0 says the network has none" },
    { "newline in value", NULL, F_NONE, 0, { 0 }, 0, { { "ddm.kind", "den\noiser" } },
      "ddm.kind is \"den?oiser\", expected" },
    { "bad expert_id", NULL, F_NONE, 0, { 0 }, 0, { { "expert_id", "x" } },
      "metadata expert_id = \"x\" is not -1 or a non-negative decimal integer" },
    { "expert_id out of range", NULL, F_NONE, 0, { 0 }, 0, { { "expert_id", "9" } },
      "metadata expert_id = 9 is outside 0..7 (num_experts = 8)" },
    { "expert_id below -1", NULL, F_NONE, 0, { 0 }, 0, { { "expert_id", "-2" } },
      "metadata expert_id = -2: use -1 for a non-expert" },
    { "bad num_experts", NULL, F_NONE, 0, { 0 }, 0, { { "num_experts", "-1" } },
      "metadata num_experts = \"-1\" is not a non-negative decimal integer" },
    { "long dataset", NULL, F_NONE, 0, { 0 }, 0,
      { { "dataset", "a-dataset-name-much-longer-than-the-limit" } },
      "is longer than 31 characters" },
};

static void test_flawed_files_rejected(void **state)
{
    (void)state;
    char path[256], err[512], prefix[300];
    tmp_path(path, sizeof path, "flawed.safetensors");
    snprintf(prefix, sizeof prefix, "weights file %s: ", path);
    float *p = random_params(&denoiser_cfg, 5);

    /* the unflawed file opens: each rejection below is due to its flaw */
    const flaw none = { "none", NULL, F_NONE, 0, { 0 }, 0, { { 0 } }, NULL };
    write_flawed(path, p, &none);
    model *m = open_ok(path);
    assert_int_equal(m->expert_id, 3);
    model_close(m);

    for (size_t i = 0; i < sizeof flaws / sizeof flaws[0]; i++) {
        const flaw *fl = &flaws[i];
        write_flawed(path, p, fl);
        memset(err, 0, sizeof err);
        m = model_open(path, err, sizeof err);
        if (m) {
            model_close(m);
            fail_msg("case \"%s\": model_open accepted a flawed file", fl->what);
        }
        if (!strstr(err, fl->expect))
            fail_msg("case \"%s\": message \"%s\" lacks \"%s\"", fl->what, err, fl->expect);
        if (strncmp(err, prefix, strlen(prefix)) || strchr(err, '\n'))
            fail_msg("case \"%s\": message \"%s\" must be one line starting with \"%s\"",
                     fl->what, err, prefix);
    }
    free(p);
}

/* Optional identity keys default when absent. */
static void test_identity_defaults(void **state)
{
    (void)state;
    char path[256];
    tmp_path(path, sizeof path, "plain.safetensors");
    float *p = random_params(&denoiser_cfg, 6);
    const flaw plain = { "plain", NULL, F_NONE, 0, { 0 }, 0,
                         { { "expert_id", NULL }, { "num_experts", NULL }, { "dataset", NULL } },
                         NULL };
    write_flawed(path, p, &plain);
    model *m = open_ok(path);
    assert_int_equal(m->expert_id, -1);
    assert_int_equal(m->num_experts, 0);
    assert_string_equal(m->dataset, "");
    model_close(m);
    free(p);
}

/* A network tensor the config says is absent, written beside a valid classifier. */
static void test_unexpected_net_tensor(void **state)
{
    (void)state;
    char path[256], err[512];
    tmp_path(path, sizeof path, "classifier-extra.safetensors");
    float *p = random_params(&classifier_cfg, 7);
    st_writer *w = st_writer_new();
    assert_int_equal(model_write(w, MODEL_CLASSIFIER, &classifier_cfg, p, ST_F32, "", -1, 0), 0);
    const int64_t shape[2] = { 8, 4 };
    assert_int_equal(st_writer_add_f32(w, "w_t", ST_F32, 2, shape, p), 0);
    assert_int_equal(st_writer_save(w, path, err, sizeof err), 0);
    st_writer_free(w);
    assert_null(model_open(path, err, sizeof err));
    assert_non_null(
        strstr(err, "tensor \"w_t\" is present but metadata time_dim=0 says the network has none"));
    free(p);
}

/* F16 cannot hold 1e6: the stored inf is caught at load, not served. */
static void test_f16_overflow_rejected(void **state)
{
    (void)state;
    char path[256], err[512];
    tmp_path(path, sizeof path, "overflow.safetensors");
    float *p = random_params(&router_cfg, 8);
    net_weights wt;
    net_bind(&router_cfg, p, &wt);
    wt.b_out[1] = 1e6f;
    st_writer *w = st_writer_new();
    assert_int_equal(model_write(w, MODEL_ROUTER, &router_cfg, p, ST_F16, "digits", -1, 4), 0);
    assert_int_equal(st_writer_save(w, path, err, sizeof err), 0);
    st_writer_free(w);
    assert_null(model_open(path, err, sizeof err));
    assert_non_null(strstr(err, "tensor \"b_out\" holds a non-finite value (inf) at element 1"));
    free(p);
}

/* Problems of the file itself come through with st's message. */
static void test_not_a_weights_file(void **state)
{
    (void)state;
    char path[256], err[512];
    tmp_path(path, sizeof path, "notes.txt");
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("these are not weights\n", f);
    fclose(f);
    assert_null(model_open(path, err, sizeof err));
    assert_non_null(strstr(err, "weights file "));
    assert_non_null(strstr(err, "header length"));
    tmp_path(path, sizeof path, "missing.safetensors");
    assert_null(model_open(path, err, sizeof err));
    assert_non_null(strstr(err, "cannot open"));
    model_close(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_denoiser_roundtrip_f32),
        cmocka_unit_test(test_denoiser_roundtrip_init_params),
        cmocka_unit_test(test_router_roundtrip_f16),
        cmocka_unit_test(test_half_copies),
        cmocka_unit_test(test_classifier_roundtrip_bf16),
        cmocka_unit_test(test_model_write_refuses_bad_args),
        cmocka_unit_test(test_flawed_files_rejected),
        cmocka_unit_test(test_identity_defaults),
        cmocka_unit_test(test_unexpected_net_tensor),
        cmocka_unit_test(test_f16_overflow_rejected),
        cmocka_unit_test(test_not_a_weights_file),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
