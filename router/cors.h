/* cors.h -- Cross-Origin Resource Sharing for the router's API, off by default.
 *
 * With no allowed origin configured nothing changes: browsers refuse
 * cross-origin reads, and the playground (served by the router itself, same
 * origin) needs none. Each --cors-origin adds one allowed origin (exact match
 * of the Origin header, e.g. "http://localhost:3000"), or "*" for any. For an
 * allowed origin every response gets Access-Control-Allow-Origin (and Vary:
 * Origin), and preflight requests (OPTIONS with Access-Control-Request-Method)
 * are answered 204 with the methods and headers the API uses. The filter runs
 * before routing, so before the token check: a preflight carries no token, and
 * a 401 gets the CORS headers too (the page can show it). */
#ifndef DDM_CORS_H
#define DDM_CORS_H

#include "server/http.h"

#define CORS_MAX_ORIGINS 16

typedef struct cors {
    int n;
    const char *origins[CORS_MAX_ORIGINS]; /* not owned: e.g. argv strings */
} cors;

/* Adds an allowed origin (kept as a pointer). Returns 0, or -1 when it is
 * neither "*" nor scheme://host[:port] without a path, or there are too many. */
int cors_add(cors *c, const char *origin);

/* Installs c as srv's request filter when it allows any origin (c must
 * outlive srv); does nothing otherwise. */
void cors_install(cors *c, http_server *srv);

#endif
