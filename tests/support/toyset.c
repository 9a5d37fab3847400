/* toyset.c -- small random expert sets for tests (see toyset.h). */
#include "tests/support/toyset.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/model.h"
#include "common/rng.h"
#include "common/st.h"

int toyset_write_model(const char *path, int kind, const net_config *c, uint64_t seed,
                       int expert_id, int K, int dtype)
{
    size_t n = net_param_count(c);
    float *p = malloc(n * sizeof *p);
    if (!p)
        return -1;
    net_init(c, p, seed);
    net_weights w;
    net_bind(c, p, &w);
    net_tensor_info ti[NET_MAX_TENSORS];
    int nt = net_tensor_table(c, ti);
    for (int i = 0; i < nt; i++)
        if (!strcmp(ti[i].name, "w_out"))
            for (size_t j = 0; j < ti[i].numel; j++)
                p[ti[i].offset + j] = 0.2f * rng_normal(seed, 77, j);
    if (c->gauss_rank > 0) {
        for (int d = 0; d < c->in_dim; d++)
            w.g_mu[d] = 0.1f * (float)(expert_id + 1);
        memset(w.g_u, 0, (size_t)c->gauss_rank * (size_t)c->in_dim * sizeof(float));
        for (int r = 0; r < c->gauss_rank; r++) {
            w.g_u[r * c->in_dim + r] = 1.0f;
            w.g_lam[r] = 0.5f;
        }
        w.g_sig2[0] = 0.1f;
    }
    st_writer *wr = st_writer_new();
    char err[512];
    int rc = wr ? model_write(wr, (model_kind)kind, c, p, (st_dtype)dtype, "toy", expert_id, K) : -1;
    if (!rc && st_writer_save(wr, path, err, sizeof err)) {
        fprintf(stderr, "toyset: %s\n", err);
        rc = -1;
    }
    st_writer_free(wr);
    free(p);
    return rc ? -1 : 0;
}

static int write_set(const char *dir, int K, const net_config *ec, const net_config *rc,
                     uint64_t seed, int dtype)
{
    char path[512];
    for (int k = 0; k < K; k++) {
        snprintf(path, sizeof path, "%s/expert-%d.safetensors", dir, k);
        if (toyset_write_model(path, MODEL_DENOISER, ec, seed + 10 + (uint64_t)k, k, K, dtype))
            return -1;
    }
    snprintf(path, sizeof path, "%s/router.safetensors", dir);
    return toyset_write_model(path, MODEL_ROUTER, rc, seed + 5, -1, K, dtype);
}

int toyset_write(const char *dir, int K, int dim, int n_classes, uint64_t seed)
{
    net_config ec = { .in_dim = dim, .hidden = 12, .n_blocks = 1, .out_dim = dim,
                      .n_classes = n_classes, .time_dim = 8, .gauss_rank = 2 };
    net_config rc = { .in_dim = dim, .hidden = 10, .n_blocks = 1, .out_dim = K,
                      .n_classes = n_classes, .time_dim = 8, .gauss_rank = 0 };
    return write_set(dir, K, &ec, &rc, seed, ST_F32);
}

int toyset_write_digits_like(const char *dir, int K, int hidden, uint64_t seed)
{
    net_config ec = { .in_dim = 784, .hidden = hidden, .n_blocks = 2, .out_dim = 784,
                      .n_classes = 10, .time_dim = 64, .gauss_rank = 64 };
    net_config rc = { .in_dim = 784, .hidden = 256, .n_blocks = 2, .out_dim = K,
                      .n_classes = 10, .time_dim = 64, .gauss_rank = 0 };
    return write_set(dir, K, &ec, &rc, seed, ST_F16);
}

int toyset_tempdir(char *buf, size_t len, const char *tag)
{
    snprintf(buf, len, "/tmp/ddm-%s-XXXXXX", tag);
    return mkdtemp(buf) ? 0 : -1;
}

void toyset_rmdir(const char *dir)
{
    if (strncmp(dir, "/tmp/ddm-", 9) != 0 || strstr(dir, ".."))
        return;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "toyset: could not remove %s\n", dir);
}
