/* cli.h -- small parsers and helpers of ddm-client: URLs, durations, numbers,
 * percentiles and the server's error messages.
 *
 * Kept apart from client_main.c so that tests/test_client.c can check them
 * without running a server. Nothing here allocates. */
#ifndef DDM_CLIENT_CLI_H
#define DDM_CLIENT_CLI_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "server/httpc.h"

/* Turns a base URL ("http://127.0.0.1:8080", "http://host", "host:port",
 * "http://[::1]:8080/") into the "host:port" httpc_open takes (port 80 when
 * absent). Only plain http and an empty or "/" path are accepted. Returns 0,
 * or DDM_EINVAL with a one-line message in err saying what to write instead. */
int cli_url_hostport(const char *url, char *hostport, size_t hplen, char *err, size_t errlen);

/* Parses a duration: a positive number with an optional unit ms, s, m or h
 * ("30s", "1.5m", "500ms"; no unit = seconds). Returns 0 and *ms (>= 1), or
 * DDM_EINVAL. */
int cli_duration_ms(const char *s, long *ms);

/* Parses a whole decimal number lo..hi (no sign for unsigned use, no junk).
 * Returns 0 and *out, or DDM_EINVAL (not a number) / DDM_ERANGE (outside). */
int cli_parse_long(const char *s, long lo, long hi, long *out);
/* Parses a decimal uint64 (0..2^64-1). Returns 0 or DDM_EINVAL. */
int cli_parse_u64(const char *s, uint64_t *out);
/* Parses a finite real number. Returns 0 or DDM_EINVAL. */
int cli_parse_double(const char *s, double *out);

/* Nearest-rank percentile q in [0, 1] of sorted[0..n) (ascending): the
 * smallest value with at least q * n values at or below it. 0 when n is 0. */
double cli_percentile(const double *sorted, size_t n, double q);
/* Sorts v[0..n) ascending. */
void cli_sort_doubles(double *v, size_t n);
/* Nearest-rank median of v[0..n) (v is left as it is); NAN when n is 0 or
 * out of memory. */
double cli_median(const double *v, size_t n);

/* The one-line message to show for a non-2xx response: the "message" of a
 * ddm error body {"error": {"code", "message"}}, else the body's first line
 * (cut to fit), else the reason "(empty body)". Always NUL-terminates buf. */
void cli_error_message(const httpc_response *resp, char *buf, size_t len);
/* Prints "ddm-client: HTTP <status>: <that message>" on stderr. */
void cli_report_http_error(const httpc_response *resp);

/* Member k of a JSON object o (o may be NULL): its number (0 when absent or
 * not a number), its string ("" when absent or not a string). */
double cli_jnum(const cJSON *o, const char *k);
const char *cli_jstr(const cJSON *o, const char *k);

#endif
