/* net_par.c -- net_forward split by rows over threads (see net_par.h). */
#include "common/net_par.h"

#include <stdlib.h>

#include "common/err.h"
#include "common/forkjoin.h"

#define NET_PAR_MAX_THREADS FORKJOIN_MAX

typedef struct part {
    const net_config *c;
    const net_weights *w;
    net_scratch *s;
    int n;
    const float *x, *t;
    const int *labels;
    float *out;
    int rc;
} part;

struct net_par {
    net_config c;
    int threads;
    net_scratch *s[NET_PAR_MAX_THREADS];
};

net_par *net_par_new(const net_config *c, int max_batch, int threads)
{
    if (!c || max_batch < 1 || threads < 1 || threads > NET_PAR_MAX_THREADS)
        return NULL;
    net_par *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->c = *c;
    p->threads = threads;
    for (int i = 0; i < threads; i++) {
        p->s[i] = net_scratch_new(c, max_batch, 0);
        if (!p->s[i]) {
            net_par_free(p);
            return NULL;
        }
    }
    return p;
}

void net_par_free(net_par *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->threads; i++)
        net_scratch_free(p->s[i]);
    free(p);
}

static void *run_part(void *arg)
{
    part *pt = arg;
    pt->rc = net_forward(pt->c, pt->w, pt->s, pt->n, pt->x, pt->t, pt->labels, pt->out);
    return NULL;
}

int net_par_forward(net_par *p, const net_weights *w, int n, const float *x, const float *t,
                    const int *labels, float *out)
{
    if (!p)
        return DDM_EINVAL;
    int parts = n / NET_PAR_MIN_ROWS;
    if (parts > p->threads)
        parts = p->threads;
    if (parts <= 1)
        return net_forward(&p->c, w, p->s[0], n, x, t, labels, out);

    const size_t D = (size_t)p->c.in_dim, O = (size_t)p->c.out_dim;
    part pt[NET_PAR_MAX_THREADS];
    for (int i = 0, r0 = 0; i < parts; i++) {
        int rows = (n - r0) / (parts - i);
        pt[i] = (part){ &p->c, w, p->s[i], rows, x + (size_t)r0 * D, t ? t + r0 : NULL,
                        labels ? labels + r0 : NULL, out + (size_t)r0 * O, 0 };
        r0 += rows;
    }
    forkjoin_run(parts, run_part, pt, sizeof pt[0]);
    int rc = 0;
    for (int i = 0; i < parts && !rc; i++)
        rc = pt[i].rc;
    return rc;
}
