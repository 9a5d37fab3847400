/* apicheck.h -- checks the responses a test received against docs/openapi.yaml.
 *
 * A test records every HTTP response (and every Server-Sent Event) it gets
 * from the router; at the end it hands them, with the OpenAPI document the
 * router serves at GET /openapi.json, to tests/openapi/check.mjs (Node: the
 * document is validated as OpenAPI 3.1 by @seriousme/openapi-schema-validator,
 * each response body against its operation's schema by Ajv). */
#ifndef DDM_TEST_APICHECK_H
#define DDM_TEST_APICHECK_H

#include <stddef.h>

#include "server/httpc.h"

/* Starts recording into a temp file (idempotent). */
void apicheck_begin(void);
/* Records one response: method, the path asked for (with its query), status,
 * content type (may be NULL) and body. */
void apicheck_response(const char *method, const char *path, int status, const char *ctype,
                       const char *body, size_t len);
/* Records r, the response to method path, with its headers: the check then
 * also wants every header the document requires of that response. */
void apicheck_http(const char *method, const char *path, const httpc_response *r);
/* Records one event of a stream read from method path. */
void apicheck_event(const char *method, const char *path, const char *event, const char *data);
/* Fetches /openapi.json from hostport and runs the checker over everything
 * recorded. Returns 0 when every response fits the document (the checker's
 * report is on stderr otherwise); the recording starts over. */
int apicheck_run(const char *hostport);
/* Removes the temp files. */
void apicheck_end(void);

#endif
