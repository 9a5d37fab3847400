/* metrics.h -- a router's GET /metrics (Prometheus text) read by tests and benchmarks. */
#ifndef DDM_TEST_METRICS_H
#define DDM_TEST_METRICS_H

/* The body of GET /metrics from "host:port", malloc'd and NUL-terminated
 * (caller frees), or NULL when it cannot be fetched (not 200, no answer
 * within 5 s). */
char *tmetrics_fetch(const char *hostport);

/* Value of the sample line "name value" in Prometheus text (# comments are
 * not samples); NAN when text is NULL or has no such line. name includes
 * the labels, e.g. "ddm_expert_rows_total{expert=\"3\"}". */
double tmetrics_value(const char *text, const char *name);

#endif
