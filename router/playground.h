/* playground.h -- the files the router serves from its own binary: the web
 * playground (GET /, /playground.js, /playground.css; plain HTML/CSS/JS from
 * router/playground/, no framework, nothing fetched from elsewhere) and the
 * OpenAPI 3.1 description of the API (GET /openapi.json, converted from
 * docs/openapi.yaml at build time). Both are generated into C arrays by the
 * Makefile (mk/embed.sh). */
#ifndef DDM_PLAYGROUND_H
#define DDM_PLAYGROUND_H

#include "router/service.h"

/* Registers the routes through svc, public (SERVICE_ROUTE_PUBLIC): the page
 * and the API description hold no data, and the page must load for its user
 * to enter a token. Returns 0 or a server error (DDM_ENOMEM). */
int playground_routes(service *svc);

/* The embedded OpenAPI document (JSON) and its length. */
const char *playground_openapi_json(size_t *len);

#endif
