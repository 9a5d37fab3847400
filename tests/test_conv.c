/* test_conv.c -- the conv judge network: the im2col + sgemm forward against
 * the plain double-loop reference, every gradient against central finite
 * differences of the reference, weights files (round trip and refusals),
 * and training on a small synthetic task. */
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
#include "common/rng.h"
#include "common/st.h"
#include "tools/train/conv.h"
#include "tools/train/fit.h"
#include "tools/train/tasks.h"

/* Odd sizes (a pooled row is dropped), non-square images, 2 and 3 layers, kernels 3 and 5. */
static const conv_config CFGS[] = {
    { .height = 10, .width = 12, .channels = 1, .n_conv = 2, .ch = { 3, 4 }, .kernel = 3,
      .feat = 5, .classes = 3 },
    { .height = 11, .width = 9, .channels = 2, .n_conv = 3, .ch = { 2, 3, 2 }, .kernel = 3,
      .feat = 4, .classes = 4 },
    { .height = 7, .width = 8, .channels = 1, .n_conv = 1, .ch = { 3 }, .kernel = 5, .feat = 6,
      .classes = 2 },
};
#define NCFG (sizeof CFGS / sizeof CFGS[0])

static float *random_images(const conv_config *c, int n, uint64_t seed)
{
    size_t D = (size_t)c->height * c->width * c->channels;
    float *x = malloc((size_t)n * D * sizeof *x);
    for (size_t i = 0; i < (size_t)n * D; i++)
        x[i] = (float)(2.0 * rng_uniform(seed, 9, i) - 1.0);
    return x;
}

/* Random parameters with non-zero biases (so every path is exercised). */
static float *random_params(const conv_config *c, uint64_t seed)
{
    size_t np = conv_param_count(c);
    float *p = malloc(np * sizeof *p);
    conv_init(c, p, seed);
    conv_weights w;
    conv_bind(c, p, &w);
    for (int i = 0; i < c->n_conv; i++)
        for (int j = 0; j < c->ch[i]; j++)
            w.b[i][j] = (float)(0.1 * rng_normal(seed, 50, (uint64_t)(i * 100 + j)));
    for (int j = 0; j < c->feat; j++)
        w.b_fc[j] = (float)(0.1 * rng_normal(seed, 51, (uint64_t)j));
    for (int j = 0; j < c->classes; j++)
        w.b_out[j] = (float)(0.1 * rng_normal(seed, 52, (uint64_t)j));
    return p;
}

static void test_forward_matches_reference(void **state)
{
    (void)state;
    for (size_t k = 0; k < NCFG; k++) {
        const conv_config *c = &CFGS[k];
        enum { N = 5 };
        float *x = random_images(c, N, 1 + k), *p = random_params(c, 7 + k);
        conv_weights w;
        conv_bind(c, p, &w);
        conv_scratch *s = conv_scratch_new(c, N, 0);
        assert_non_null(s);
        float out[N * 8];
        double ref[N * 8], feat[N * 8];
        assert_int_equal(conv_forward(c, &w, s, N, x, out), 0);
        assert_int_equal(conv_forward_ref(c, &w, N, x, ref, feat), 0);
        double num = 0, den = 0;
        for (int i = 0; i < N * c->classes; i++) {
            num += (out[i] - ref[i]) * (out[i] - ref[i]);
            den += ref[i] * ref[i];
        }
        for (int i = 0; i < N * c->feat; i++)
            assert_true(fabs(conv_features(s)[i] - feat[i]) <= 1e-4 * (1 + fabs(feat[i])));
        print_message("# config %zu: relative forward error %.2e\n", k, sqrt(num / den));
        assert_true(sqrt(num / den) < 1e-5);
        /* out NULL is allowed; n outside 1..max_batch is refused */
        assert_int_equal(conv_forward(c, &w, s, N, x, NULL), 0);
        assert_int_equal(conv_forward(c, &w, s, N + 1, x, out), DDM_ERANGE);
        assert_int_equal(conv_forward(c, &w, s, 0, x, out), DDM_ERANGE);
        conv_scratch_free(s);
        free(x);
        free(p);
    }
}

/* Mean cross-entropy of the reference logits against y. */
static double ref_loss(const conv_config *c, const conv_weights *w, int n, const float *x,
                       const int *y)
{
    double logits[16 * 8], loss = 0;
    assert_int_equal(conv_forward_ref(c, w, n, x, logits, NULL), 0);
    for (int i = 0; i < n; i++) {
        const double *l = logits + (size_t)i * c->classes;
        double mx = l[0], sum = 0;
        for (int k = 1; k < c->classes; k++)
            mx = l[k] > mx ? l[k] : mx;
        for (int k = 0; k < c->classes; k++)
            sum += exp(l[k] - mx);
        loss += mx + log(sum) - l[y[i]];
    }
    return loss / n;
}

static void test_gradients_match_finite_differences(void **state)
{
    (void)state;
    for (size_t k = 0; k < NCFG; k++) {
        const conv_config *c = &CFGS[k];
        enum { N = 4 };
        float *x = random_images(c, N, 20 + k), *p = random_params(c, 30 + k);
        int y[N];
        for (int i = 0; i < N; i++)
            y[i] = i % c->classes;
        size_t np = conv_param_count(c);
        float *g = calloc(np, sizeof *g);
        conv_weights w, gw;
        conv_bind(c, p, &w);
        conv_bind(c, g, &gw);
        conv_scratch *s = conv_scratch_new(c, N, 1);
        float out[N * 8], dout[N * 8];
        assert_int_equal(conv_forward(c, &w, s, N, x, out), 0);
        fit_xent(N, c->classes, out, y, dout);
        assert_int_equal(conv_backward(c, &w, &gw, s, N, dout), 0);
        /* a second backward for the same forward adds the same again */
        float *g2 = calloc(np, sizeof *g2);
        conv_weights gw2;
        conv_bind(c, g2, &gw2);
        assert_int_equal(conv_backward(c, &w, &gw2, s, N, dout), 0);
        int bad = 0;
        double worst = 0;
        for (size_t i = 0; i < np; i++) {
            float keep = p[i];
            const float h = 2e-4f;
            p[i] = keep + h;
            double up = p[i], lp = ref_loss(c, &w, N, x, y);
            p[i] = keep - h;
            double down = p[i], lm = ref_loss(c, &w, N, x, y);
            p[i] = keep;
            double fd = (lp - lm) / (up - down); /* the step as float rounds it */
            double e = fabs(fd - g[i]) / (1e-3 + fabs(fd));
            worst = e > worst ? e : worst;
            bad += e > 1e-3;
            assert_true(g2[i] == g[i]);
        }
        print_message("# config %zu: %zu parameters, worst relative gradient error %.2e, %d "
                      "beyond 1e-3\n", k, np, worst, bad);
        /* a ReLU or max-pool kink within h of a parameter could spoil a handful */
        assert_true(bad <= (int)(np / 100));
        /* backward needs a training scratch and the same n as the forward */
        assert_int_equal(conv_backward(c, &w, &gw, s, N - 1, dout), DDM_EINVAL);
        conv_scratch *si = conv_scratch_new(c, N, 0);
        assert_int_equal(conv_forward(c, &w, si, N, x, out), 0);
        assert_int_equal(conv_backward(c, &w, &gw, si, N, dout), DDM_EINVAL);
        conv_scratch_free(si);
        conv_scratch_free(s);
        free(g);
        free(g2);
        free(x);
        free(p);
    }
}

static void test_weights_file_round_trip_and_refusals(void **state)
{
    (void)state;
    char dir[] = "/tmp/ddm-test-conv-XXXXXX", path[128], bad[128], err[512];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/judge.safetensors", dir);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", dir);
    const conv_config *c = &CFGS[1];
    float *p = random_params(c, 3);
    st_writer *w = st_writer_new();
    assert_int_equal(conv_write(w, c, p, ST_F32), 0);
    assert_int_equal(st_writer_save(w, path, err, sizeof err), 0);
    st_writer_free(w);
    assert_true(conv_is_judge_file(path));
    conv_model *m = conv_open(path, err, sizeof err);
    if (!m)
        fail_msg("%s", err);
    assert_memory_equal(&m->cfg, c, sizeof *c);
    assert_memory_equal(m->params, p, conv_param_count(c) * sizeof *p);
    conv_close(m);

    /* a tensor missing */
    w = st_writer_new();
    int64_t shape[1] = { 4 };
    assert_int_equal(st_writer_add_f32(w, "out.bias", ST_F32, 1, shape, p), 0);
    conv_config c2 = *c;
    assert_int_equal(st_writer_meta(w, "ddm.format", CONV_FORMAT), 0);
    assert_int_equal(st_writer_meta(w, "ddm.kind", "judge"), 0);
    const char *kv[][2] = { { "height", "11" }, { "width", "9" }, { "channels", "2" },
                            { "kernel", "3" }, { "feat", "4" }, { "classes", "4" },
                            { "conv_channels", "2,3,2" } };
    for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++)
        assert_int_equal(st_writer_meta(w, kv[i][0], kv[i][1]), 0);
    assert_int_equal(st_writer_save(w, bad, err, sizeof err), 0);
    assert_null(conv_open(bad, err, sizeof err));
    assert_non_null(strstr(err, "tensors"));
    /* a bad channel list, an even kernel */
    assert_int_equal(st_writer_meta(w, "conv_channels", "2,,3"), 0);
    assert_int_equal(st_writer_save(w, bad, err, sizeof err), 0);
    assert_null(conv_open(bad, err, sizeof err));
    assert_non_null(strstr(err, "conv_channels"));
    assert_int_equal(st_writer_meta(w, "conv_channels", "2,3,2"), 0);
    assert_int_equal(st_writer_meta(w, "kernel", "4"), 0);
    assert_int_equal(st_writer_save(w, bad, err, sizeof err), 0);
    assert_null(conv_open(bad, err, sizeof err));
    assert_non_null(strstr(err, "kernel"));
    st_writer_free(w);
    /* a wrong shape: the same tensors written for another config */
    c2.feat = 5;
    float *p2 = random_params(&c2, 4);
    w = st_writer_new();
    assert_int_equal(conv_write(w, &c2, p2, ST_F16), 0);
    assert_int_equal(st_writer_meta(w, "feat", "4"), 0);
    assert_int_equal(st_writer_save(w, bad, err, sizeof err), 0);
    st_writer_free(w);
    assert_null(conv_open(bad, err, sizeof err));
    assert_non_null(strstr(err, "shape"));
    /* not a judge at all */
    assert_false(conv_is_judge_file("/nonexistent/judge.safetensors"));
    assert_null(conv_open("/nonexistent/judge.safetensors", err, sizeof err));
    free(p);
    free(p2);
    unlink(path);
    unlink(bad);
    rmdir(dir);
}

/* 12x12 images of a bright 3x3 square in one of four quadrants (class), at a
 * random place within it, on noise. */
static void squares(int n, uint64_t seed, float *x, int *y)
{
    for (int i = 0; i < n; i++) {
        int k = (int)(rng_uniform(seed, 1, (uint64_t)i) * 4);
        int oy = (k / 2) * 6 + (int)(rng_uniform(seed, 2, (uint64_t)i) * 4);
        int ox = (k % 2) * 6 + (int)(rng_uniform(seed, 3, (uint64_t)i) * 4);
        y[i] = k;
        float *xi = x + (size_t)i * 144;
        for (int q = 0; q < 144; q++)
            xi[q] = -1.0f + 0.3f * fabsf(rng_normal(seed, 4 + (uint64_t)i, (uint64_t)q));
        for (int dy = 0; dy < 3; dy++)
            for (int dx = 0; dx < 3; dx++)
                xi[(oy + dy) * 12 + ox + dx] = 1.0f;
    }
}

static void test_judge_learns_squares(void **state)
{
    (void)state;
    enum { N = 600, NT = 200 };
    conv_config c = { .height = 12, .width = 12, .channels = 1, .n_conv = 2, .ch = { 4, 8 },
                      .kernel = 3, .feat = 16, .classes = 4 };
    float *x = malloc(N * 144 * sizeof *x), *xt = malloc(NT * 144 * sizeof *xt);
    int y[N], yt[NT], pred[NT];
    float conf[NT];
    squares(N, 1, x, y);
    squares(NT, 2, xt, yt);
    size_t np = conv_param_count(&c);
    float *p = malloc(np * sizeof *p), *avg = malloc(np * sizeof *avg);
    conv_init(&c, p, 5);
    fit_net net;
    assert_int_equal(conv_fit_net(&c, 32, &net), 0);
    train_opts o;
    train_opts_default(&o);
    o.steps = 300;
    o.batch = 32;
    o.lr = 3e-3f;
    o.warmup = 20;
    o.ema = 0.98f;
    o.log_secs = 0;
    train_result res;
    char err[256];
    train_data d = { N, 144, x, y, NULL };
    assert_int_equal(classifier_train_net(&net, p, avg, &d, 12, 1, 1, &o, &res, err, sizeof err), 0);
    fit_net_free(&net);
    conv_weights w;
    conv_bind(&c, avg, &w);
    conv_scratch *s = conv_scratch_new(&c, 64, 0);
    float *feat = malloc((size_t)NT * c.feat * sizeof *feat);
    assert_int_equal(conv_classify(&c, &w, s, NT, xt, feat, pred, conf), 0);
    int hit = 0;
    for (int i = 0; i < NT; i++) {
        hit += pred[i] == yt[i];
        assert_true(conf[i] >= 0.25f - 1e-6f && conf[i] <= 1.0f + 1e-6f);
    }
    print_message("# judge: loss %.3f -> %.3f, held-out accuracy %.3f\n", res.first_loss,
                  res.final_loss, (double)hit / NT);
    assert_true(res.final_loss < 0.5 * res.first_loss);
    assert_true(hit >= 0.95 * NT);
    conv_scratch_free(s);
    free(feat);
    free(p);
    free(avg);
    free(x);
    free(xt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_matches_reference),
        cmocka_unit_test(test_gradients_match_finite_differences),
        cmocka_unit_test(test_weights_file_round_trip_and_refusals),
        cmocka_unit_test(test_judge_learns_squares),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
