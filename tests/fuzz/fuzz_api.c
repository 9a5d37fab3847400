/* fuzz_api.c -- libFuzzer target: a POST /v1/samples request as the router's
 * handler sees it: router/api_decode.c api_decode_sample (JSON and protobuf
 * bodies), api_response_format (Accept) and the cost check that follows
 * (sample_cost, sample_cost_explain).
 *
 * Input: one selector byte, a header value up to the first '\n' (taken as
 * Accept, and as Authorization for router/auth.c auth_check), then the body. The selector picks the Content-Type (bits 0-2; 7 = the Accept text
 * itself, so arbitrary types are tried too) and the served model: K (bits
 * 3-4: 1, 2, 8 or 64 experts), classes (bit 5: none or 10) and class names
 * (bit 6). Checks beyond "no crash, leak or UB": a refused request gets 400
 * or 415 with a code and a message; an accepted one passes
 * sample_params_check (the one validation) and, sent again as protobuf,
 * decodes to the same parameters; Accept gives 0 or 406; a token
 * is accepted only as "Bearer <a token of the file>". */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/log.h"
#include "router/api.h"
#include "router/auth.h"
#include "router/strategy.h"
#include "ddm/v1/api.pb-c.h"
#include "router/sampler.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TOKEN "fuzzing-token-0123456789abcdef"

static auth *tokens;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level(LOG_OFF);
    char path[] = "/tmp/ddm-fuzz-tokens-XXXXXX", warn[256], err[256];
    int fd = mkstemp(path);
    static const char file[] = "# fuzz_api\nfuzz:" TOKEN " concurrency=2\n"
                               "0123456789abcdef0123456789abcdef== queue=0\n";
    if (fd < 0 || write(fd, file, sizeof file - 1) != (ssize_t)(sizeof file - 1)) {
        perror("fuzz_api: token file");
        abort();
    }
    close(fd);
    auth_defaults d;
    auth_defaults_init(&d);
    int rc = auth_load(path, &d, &tokens, warn, sizeof warn, err, sizeof err);
    unlink(path);
    if (rc) {
        fprintf(stderr, "fuzz_api: %s\n", err);
        abort();
    }
    return 0;
}

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_api: broken promise: %s\n", what);
        abort();
    }
}

static const char *const CTYPES[7] = {
    "application/json", NULL, "application/x-protobuf",
    "application/protobuf; proto=ddm.v1.SampleRequest", "application/json; charset=utf-8",
    "Application/JSON", "text/plain",
};

static int is_proto_type(const char *ct)
{
    return ct && (!strncasecmp(ct, "application/x-protobuf", 22) ||
                  !strncasecmp(ct, "application/protobuf", 20));
}

static const int KS[4] = { 1, 2, 8, 64 };

static int same_float(float a, float b) { return a == b || (isnan(a) && isnan(b)); }

/* The two decoders agree: p (accepted from JSON) sent as protobuf decodes to p. */
static void check_as_proto(const sample_params *p, const api_job_fields *jf, int K,
                           int n_classes, const model_shape *shape)
{
    Ddm__V1__SampleRequest m = DDM__V1__SAMPLE_REQUEST__INIT;
    char strat[64];
    strategy_name(&p->strat, strat, sizeof strat);
    m.has_n = 1, m.n = (uint32_t)p->n;
    m.has_steps = 1, m.steps = (uint32_t)p->steps;
    m.has_seed = 1, m.seed = p->seed;
    m.strategy = strat;
    if (p->strat.kind == STRAT_THRESHOLD || p->strat.kind == STRAT_NUCLEUS)
        m.has_threshold = 1, m.threshold = p->strat.threshold;
    m.has_temperature = 1, m.temperature = p->strat.temperature;
    if (p->label >= 0)
        m.has_label = 1, m.label = p->label;
    m.has_guidance = 1, m.guidance = p->guidance;
    m.sampler = (char *)sampler_name(p->sampler);
    m.has_trace = 1, m.trace = p->trace != 0;
    if (jf) {
        m.has_priority = 1, m.priority = p->priority;
        m.has_preview_every = 1, m.preview_every = (uint32_t)jf->preview_every;
    }
    size_t len = ddm__v1__sample_request__get_packed_size(&m);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return;
    ddm__v1__sample_request__pack(&m, buf);
    sample_params q;
    const char *code = NULL;
    char err[384] = "";
    uint64_t seed_state = 1;
    api_job_fields qjf = { 0 };
    int st = api_decode_sample("application/x-protobuf", buf, len, K, n_classes, shape,
                               &seed_state, &q, jf ? &qjf : NULL, &code, err, sizeof err);
    free(buf);
    if (st) {
        fprintf(stderr, "fuzz_api: the protobuf form of an accepted JSON request is refused: "
                        "%s\n", err);
        abort();
    }
    check(q.n == p->n && q.steps == p->steps && q.seed == p->seed && q.label == p->label &&
          q.sampler == p->sampler && q.trace == p->trace && same_float(q.guidance, p->guidance),
          "JSON and protobuf decode the same request alike (n, steps, seed, label, sampler, "
          "trace, guidance)");
    check(!jf || (q.priority == p->priority && qjf.preview_every == jf->preview_every),
          "JSON and protobuf decode the job fields alike (priority, preview_every)");
    check(q.strat.kind == p->strat.kind && q.strat.k == p->strat.k &&
          same_float(q.strat.threshold, p->strat.threshold) &&
          same_float(q.strat.temperature, p->strat.temperature),
          "JSON and protobuf decode the same strategy alike");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t sel = data[0];
    data++, size--;
    const uint8_t *nl = memchr(data, '\n', size);
    size_t alen = nl ? (size_t)(nl - data) : size;
    char *accept = malloc(alen + 1);
    if (!accept)
        return 0;
    memcpy(accept, data, alen);
    accept[alen] = '\0';
    const uint8_t *body = nl ? nl + 1 : data + size;
    size_t blen = (size_t)(data + size - body);
    /* the body in its own allocation, so that reading past it is caught */
    uint8_t *b = malloc(blen ? blen : 1);
    if (!b) {
        free(accept);
        return 0;
    }
    memcpy(b, body, blen);

    const char *ctype = (sel & 7) == 7 ? accept : CTYPES[sel & 7];
    int K = KS[(sel >> 3) & 3];
    int n_classes = sel & 0x20 ? 10 : 0;
    static char n0[] = "zero", n1[] = "one", n2[] = "two", n3[] = "three", n4[] = "four",
                n5[] = "five", n6[] = "six", n7[] = "seven", n8[] = "eight", n9[] = "nine";
    static char *names[10] = { n0, n1, n2, n3, n4, n5, n6, n7, n8, n9 };
    model_shape shape = { .height = 28, .width = 28, .channels = 1 };
    if ((sel & 0x40) && n_classes) {
        shape.n_class_names = n_classes;
        shape.class_names = names;
    }
    uint64_t seed_state = 12345;
    sample_params p;
    const char *code = NULL;
    char err[384] = "";
    /* The job fields (priority, preview_every) are taken as POST /v1/jobs and
     * event streams take them: when the Accept line asks for events, or the
     * otherwise unused names bit is set without classes. */
    int jobs = strstr(accept, "event-stream") != NULL || (sel & 0x60) == 0x40;
    api_job_fields jf = { 0 };
    int st = api_decode_sample(ctype, b, blen, K, n_classes, sel & 0x80 ? NULL : &shape,
                               &seed_state, &p, jobs ? &jf : NULL, &code, err, sizeof err);
    if (st) {
        check(st == 400 || st == 415, "a refused request gets 400 or 415");
        check(code && *code, "a refused request gets an error code");
        check(err[0] != '\0', "a refused request gets a message");
    } else {
        char again[384];
        check(sample_params_check(&p, n_classes, again, sizeof again) == 0,
              "an accepted request passes sample_params_check");
        check(p.n >= 1 && p.n <= SAMPLE_MAX_N && p.steps >= 1 && p.steps <= SAMPLE_MAX_STEPS,
              "n and steps in range");
        uint64_t cost = sample_cost(&p, K);
        check(cost >= (uint64_t)p.n * (uint64_t)p.steps, "cost counts images x steps at least");
        char how[160];
        sample_cost_explain(&p, K, how, sizeof how);
        if (!is_proto_type(ctype))
            check_as_proto(&p, jobs ? &jf : NULL, K, n_classes, sel & 0x80 ? NULL : &shape);
    }
    auth_token *tok = auth_check(tokens, accept);
    if (tok) {
        const char *t = accept + 6;
        t += strspn(t, " \t");
        check(!strncasecmp(accept, "Bearer", 6) && (!strcmp(t, TOKEN) ||
              !strcmp(t, "0123456789abcdef0123456789abcdef==")), "only a token of the file");
    }
    api_format fmt;
    int fr = api_response_format(accept, ctype, &fmt);
    check(fr == 0 || fr == 406, "Accept gives 0 or 406");
    check(fmt == API_JSON || fmt == API_PROTO || fmt == API_PNG, "a known format");
    free(b);
    free(accept);
    return 0;
}
