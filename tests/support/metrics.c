/* metrics.c -- GET /metrics for tests and benchmarks (see metrics.h). */
#include "tests/support/metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "server/httpc.h"

char *tmetrics_fetch(const char *hostport)
{
    httpc *c;
    char err[128];
    if (httpc_open(hostport, 5000, &c, err, sizeof err))
        return NULL;
    httpc_response r;
    char *text = NULL;
    if (httpc_request(c, "GET", "/metrics", NULL, 0, NULL, 0, &r) == 0) {
        if (r.status == 200)
            text = strdup(r.body);
        httpc_response_free(&r);
    }
    httpc_close(c);
    return text;
}

double tmetrics_value(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, name, n) && p[n] == ' ')
            return atof(p + n + 1);
    return NAN;
}
