/* cors.c -- CORS response headers and preflight answers (see cors.h). */
#include "router/cors.h"

#include <string.h>

int cors_add(cors *c, const char *origin)
{
    if (c->n >= CORS_MAX_ORIGINS || !origin || !*origin)
        return -1;
    if (strcmp(origin, "*") != 0) {
        const char *sep = strstr(origin, "://");
        if (!sep || sep == origin || !sep[3] || strchr(sep + 3, '/'))
            return -1;
        for (const char *p = origin; *p; p++)
            if (*p == ' ' || *p == '\r' || *p == '\n' || *p == ',')
                return -1;
    }
    c->origins[c->n++] = origin;
    return 0;
}

static int allowed(const cors *c, const char *origin)
{
    for (int i = 0; i < c->n; i++)
        if (!strcmp(c->origins[i], "*") || !strcmp(c->origins[i], origin))
            return 1;
    return 0;
}

static int filter(http_req *req, void *ud)
{
    const cors *c = ud;
    const char *origin = http_req_header(req, "Origin");
    if (!origin || !allowed(c, origin))
        return 0; /* no CORS headers: the browser keeps the response from the page */
    if (http_resp_header(req, "Access-Control-Allow-Origin", origin) ||
        http_resp_header(req, "Vary", "Origin") ||
        http_resp_header(req, "Access-Control-Expose-Headers",
                         "Location, Retry-After, WWW-Authenticate"))
        return 0;
    if (strcmp(http_req_method(req), "OPTIONS") != 0 ||
        !http_req_header(req, "Access-Control-Request-Method"))
        return 0;
    http_resp_header(req, "Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS");
    http_resp_header(req, "Access-Control-Allow-Headers",
                     "Authorization, Content-Type, Accept, Last-Event-ID");
    http_resp_header(req, "Access-Control-Max-Age", "600");
    http_respond(req, 204, NULL, NULL, 0);
    return 1;
}

void cors_install(cors *c, http_server *srv)
{
    if (c->n > 0)
        http_server_set_filter(srv, filter, c);
}
