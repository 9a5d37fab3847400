/* strategy.c -- routing strategies (see strategy.h). */
#include "router/strategy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

int strategy_parse(const char *name, int K, float threshold, float temperature,
                   strategy *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->threshold = NAN;
    out->temperature = 1.0f;
    if (K < 1 || K > STRAT_MAX_EXPERTS) {
        snprintf(err, errlen, "strategy: the model has %d experts, allowed 1..%d", K,
                 STRAT_MAX_EXPERTS);
        return DDM_EINVAL;
    }
    char *end;
    if (!strcmp(name, "full")) {
        out->kind = STRAT_FULL;
    } else if (!strcmp(name, "uniform")) {
        out->kind = STRAT_UNIFORM;
    } else if (!strcmp(name, "threshold")) {
        out->kind = STRAT_THRESHOLD;
        out->threshold = 0.05f;
    } else if (!strcmp(name, "nucleus")) {
        out->kind = STRAT_NUCLEUS;
        out->threshold = 0.9f;
    } else if (!strcmp(name, "sample")) {
        out->kind = STRAT_SAMPLE;
    } else if (!strncmp(name, "top-", 4) && name[4] >= '1' && name[4] <= '9') {
        long k = strtol(name + 4, &end, 10);
        int drawn = !strcmp(end, ":drawn");
        if ((*end && !drawn && strcmp(end, ":greedy")) || k < 1 || k > K) {
            snprintf(err, errlen, "strategy \"%.64s\": top-k needs k in 1..%d, optionally with "
                     ":drawn (top-k:drawn draws each image's k experts from the router)", name, K);
            return DDM_EINVAL;
        }
        out->kind = STRAT_TOPK;
        out->k = (int)k;
        out->drawn = drawn;
    } else if (!strncmp(name, "expert:", 7) && name[7] >= '0' && name[7] <= '9') {
        long k = strtol(name + 7, &end, 10);
        if (*end || k < 0 || k >= K) {
            snprintf(err, errlen, "strategy \"%s\": expert:N needs N in 0..%d", name, K - 1);
            return DDM_EINVAL;
        }
        out->kind = STRAT_EXPERT;
        out->k = (int)k;
    } else {
        snprintf(err, errlen,
                 "strategy \"%.64s\" is unknown: use full, top-1..top-%d (or top-k:drawn), "
                 "threshold, sample, nucleus, uniform or expert:0..%d", name, K, K - 1);
        return DDM_EINVAL;
    }
    if (!isnan(threshold) && (out->kind == STRAT_THRESHOLD || out->kind == STRAT_NUCLEUS))
        out->threshold = threshold;
    if (!isnan(temperature))
        out->temperature = temperature;
    return strategy_check(out, err, errlen);
}

int strategy_check(const strategy *s, char *err, size_t errlen)
{
    if ((s->kind == STRAT_THRESHOLD || s->kind == STRAT_NUCLEUS) &&
        !(s->threshold > 0.0f && s->threshold <= 1.0f)) {
        snprintf(err, errlen, "field \"threshold\" = %g is out of range: allowed (0, 1]%s",
                 s->threshold, s->kind == STRAT_NUCLEUS ? " (top_p of nucleus)" : "");
        return DDM_EINVAL;
    }
    if (!(s->temperature >= 0.01f && s->temperature <= 100.0f)) {
        snprintf(err, errlen, "field \"temperature\" = %g is out of range: allowed 0.01..100",
                 s->temperature);
        return DDM_EINVAL;
    }
    return 0;
}

void strategy_name(const strategy *s, char *buf, size_t len)
{
    switch (s->kind) {
    case STRAT_TOPK:      snprintf(buf, len, "top-%d%s", s->k, s->drawn ? ":drawn" : ""); break;
    case STRAT_FULL:      snprintf(buf, len, "full"); break;
    case STRAT_THRESHOLD: snprintf(buf, len, "threshold"); break;
    case STRAT_SAMPLE:    snprintf(buf, len, "sample"); break;
    case STRAT_NUCLEUS:   snprintf(buf, len, "nucleus"); break;
    case STRAT_UNIFORM:   snprintf(buf, len, "uniform"); break;
    case STRAT_EXPERT:    snprintf(buf, len, "expert:%d", s->k); break;
    }
}

int strategy_experts_bound(const strategy *s, int K)
{
    switch (s->kind) {
    case STRAT_TOPK:    return s->k < K ? s->k : K;
    case STRAT_SAMPLE:
    case STRAT_EXPERT:  return 1;
    default:            return K;
    }
}

int strategy_uses_router(const strategy *s)
{
    return s->kind != STRAT_UNIFORM && s->kind != STRAT_EXPERT;
}

void strategy_softmax(const float *logits, int K, float temp, float *p)
{
    float mx = logits[0];
    for (int i = 1; i < K; i++)
        if (logits[i] > mx)
            mx = logits[i];
    double sum = 0;
    for (int i = 0; i < K; i++) {
        p[i] = expf((logits[i] - mx) / temp);
        sum += p[i];
    }
    for (int i = 0; i < K; i++)
        p[i] = (float)(p[i] / sum);
}

/* order[] = expert indices by decreasing p, ties to the lower index */
static void rank(const float *p, int K, int *order)
{
    for (int i = 0; i < K; i++)
        order[i] = i;
    for (int i = 1; i < K; i++) { /* insertion sort: K is small */
        int o = order[i], j = i;
        while (j > 0 && p[order[j - 1]] < p[o]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = o;
    }
}

/* Keeps the experts with keep[i] set, renormalised, in index order. */
static int emit(const float *p, const int *keep, int K, int *idx, float *w)
{
    double sum = 0;
    for (int i = 0; i < K; i++)
        if (keep[i])
            sum += p[i];
    int m = 0;
    for (int i = 0; i < K; i++) {
        if (!keep[i])
            continue;
        idx[m] = i;
        w[m] = sum > 0 ? (float)(p[i] / sum) : 0.0f;
        m++;
    }
    if (sum <= 0)
        for (int i = 0; i < m; i++)
            w[i] = 1.0f / (float)m;
    return m;
}

/* The router's weights as the strategy ranks and renormalises them:
 * softmax(logits / T); for top-k:drawn with noise, exp(z) scaled by the largest,
 * z = logits / T + noise: the k largest z are a draw without replacement from
 * the softmax (Gumbel noise), weighted p e^noise. */
static void weights(const strategy *s, const float *logits, int K, const float *noise,
                    float *p)
{
    if (s->kind != STRAT_TOPK || !s->drawn || !noise) {
        strategy_softmax(logits, K, s->temperature, p);
        return;
    }
    float z[STRAT_MAX_EXPERTS], mx = -INFINITY;
    for (int i = 0; i < K; i++) {
        z[i] = logits[i] / s->temperature + noise[i];
        mx = z[i] > mx ? z[i] : mx;
    }
    for (int i = 0; i < K; i++)
        p[i] = expf(z[i] - mx);
}

int strategy_select(const strategy *s, const float *logits, int K, double u, const float *noise,
                    int *idx, float *w)
{
    float p[STRAT_MAX_EXPERTS];
    int keep[STRAT_MAX_EXPERTS] = { 0 };
    int order[STRAT_MAX_EXPERTS];
    switch (s->kind) {
    case STRAT_UNIFORM:
        for (int i = 0; i < K; i++) {
            idx[i] = i;
            w[i] = 1.0f / (float)K;
        }
        return K;
    case STRAT_EXPERT:
        idx[0] = s->k;
        w[0] = 1.0f;
        return 1;
    case STRAT_FULL:
        strategy_softmax(logits, K, s->temperature, p);
        for (int i = 0; i < K; i++)
            keep[i] = 1;
        return emit(p, keep, K, idx, w);
    case STRAT_TOPK:
        weights(s, logits, K, noise, p);
        rank(p, K, order);
        for (int i = 0; i < s->k && i < K; i++)
            keep[order[i]] = 1;
        return emit(p, keep, K, idx, w);
    case STRAT_THRESHOLD: {
        strategy_softmax(logits, K, s->temperature, p);
        int any = 0;
        for (int i = 0; i < K; i++)
            if (p[i] >= s->threshold)
                keep[i] = any = 1;
        if (!any) {
            rank(p, K, order);
            keep[order[0]] = 1;
        }
        return emit(p, keep, K, idx, w);
    }
    case STRAT_NUCLEUS: {
        strategy_softmax(logits, K, s->temperature, p);
        rank(p, K, order);
        double cum = 0;
        for (int i = 0; i < K; i++) {
            keep[order[i]] = 1;
            cum += p[order[i]];
            if (cum >= s->threshold)
                break;
        }
        return emit(p, keep, K, idx, w);
    }
    case STRAT_SAMPLE: {
        strategy_softmax(logits, K, s->temperature, p);
        double cum = 0;
        int pick = K - 1;
        for (int i = 0; i < K; i++) {
            cum += p[i];
            if (u < cum) {
                pick = i;
                break;
            }
        }
        idx[0] = pick;
        w[0] = 1.0f;
        return 1;
    }
    }
    return 0;
}

int strategy_substitute(const strategy *s, const float *logits, const float *noise, int K,
                        const unsigned char *usable, int *idx, float *w, int *n, int *orig,
                        int *subst)
{
    int keep[STRAT_MAX_EXPERTS] = { 0 }, order[STRAT_MAX_EXPERTS], out = 0, kept = 0;
    float p[STRAT_MAX_EXPERTS];
    for (int j = 0; j < *n; j++)
        if (!usable[idx[j]])
            out++;
    if (out == 0)
        return 0;
    if (logits) {
        weights(s, logits, K, noise, p);
        rank(p, K, order);
    } else {
        for (int i = 0; i < K; i++) {
            p[i] = 1.0f / (float)K;
            order[i] = i;
        }
    }
    for (int j = 0; j < *n; j++)
        keep[idx[j]] = usable[idx[j]] ? 1 : -1; /* -1: selected, not usable */
    /* the unusable ones in ranking order, each taking the next-best free expert */
    int next = 0, m = 0;
    for (int r = 0; r < K; r++) {
        int k = order[r];
        if (keep[k] != -1)
            continue;
        while (next < K && (keep[order[next]] != 0 || !usable[order[next]]))
            next++;
        orig[m] = k;
        subst[m] = next < K ? order[next] : -1;
        if (next < K)
            keep[order[next]] = 2; /* taken */
        m++;
    }
    for (int i = 0; i < K; i++)
        kept += keep[i] > 0;
    if (kept == 0)
        return 0; /* nothing usable would remain: leave the selection alone */
    for (int i = 0; i < K; i++)
        keep[i] = keep[i] > 0;
    if (s->kind == STRAT_UNIFORM || !logits) {
        int c = 0;
        for (int i = 0; i < K; i++)
            if (keep[i]) {
                idx[c] = i;
                w[c++] = 1.0f / (float)kept;
            }
        *n = c;
    } else if (s->kind == STRAT_SAMPLE || s->kind == STRAT_EXPERT) {
        *n = emit(p, keep, K, idx, w);
        for (int j = 0; j < *n; j++)
            w[j] = 1.0f / (float)*n; /* one expert: 1 */
    } else {
        *n = emit(p, keep, K, idx, w);
    }
    return m;
}
