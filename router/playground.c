/* playground.c -- serves the embedded playground and OpenAPI document (see playground.h). */
#include "router/playground.h"

#include <stddef.h>

#include "openapi_json.h"       /* generated: openapi_json */
#include "playground_assets.h"  /* generated: pg_index_html, pg_js, pg_css */

typedef struct asset {
    const char *path, *ctype;
    const unsigned char *data;
    const size_t *len;
} asset;

static const asset ASSETS[] = {
    { "/", "text/html; charset=utf-8", pg_index_html, &pg_index_html_len },
    { "/playground.js", "text/javascript; charset=utf-8", pg_js, &pg_js_len },
    { "/playground.css", "text/css; charset=utf-8", pg_css, &pg_css_len },
    { "/openapi.json", "application/json", openapi_json, &openapi_json_len },
};

static void serve(http_req *req, void *ud)
{
    const asset *a = ud;
    http_resp_header(req, "Cache-Control", "no-cache");
    http_resp_header(req, "X-Content-Type-Options", "nosniff");
    http_respond(req, 200, a->ctype, a->data, *a->len);
}

int playground_routes(service *svc)
{
    for (size_t i = 0; i < sizeof ASSETS / sizeof ASSETS[0]; i++) {
        int rc = service_route(svc, "GET", ASSETS[i].path, serve, (void *)&ASSETS[i],
                               SERVICE_ROUTE_PUBLIC);
        if (rc)
            return rc;
    }
    return 0;
}

const char *playground_openapi_json(size_t *len)
{
    *len = openapi_json_len;
    return (const char *)openapi_json;
}
