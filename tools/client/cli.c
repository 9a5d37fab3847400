/* cli.c -- ddm-client's parsers and helpers (see cli.h). */
#include "tools/client/cli.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/err.h"

int cli_url_hostport(const char *url, char *hostport, size_t hplen, char *err, size_t errlen)
{
    const char *s = url;
    if (!strncasecmp(s, "https://", 8)) {
        snprintf(err, errlen, "URL \"%s\": https is not supported: ddm-router speaks plain "
                              "http (use http://host:port)", url);
        return DDM_EINVAL;
    }
    if (!strncasecmp(s, "http://", 7))
        s += 7;
    else if (strstr(s, "://")) {
        snprintf(err, errlen, "URL \"%s\": only http:// URLs are supported", url);
        return DDM_EINVAL;
    }
    size_t hl = strcspn(s, "/?#");
    const char *rest = s + hl;
    if (*rest && strcmp(rest, "/")) {
        snprintf(err, errlen, "URL \"%s\": give the server's base URL without a path "
                              "(e.g. http://127.0.0.1:8080)", url);
        return DDM_EINVAL;
    }
    size_t colons = 0;
    for (size_t i = 0; i < hl; i++)
        colons += s[i] == ':';
    if (s[0] != '[' && colons > 1) {
        snprintf(err, errlen, "URL \"%s\": write IPv6 addresses in brackets, "
                              "e.g. http://[::1]:8080", url);
        return DDM_EINVAL;
    }
    if (hl == 0 || s[0] == ':') {
        snprintf(err, errlen, "URL \"%s\" names no host: use http://host:port", url);
        return DDM_EINVAL;
    }
    /* does the authority already carry a port? ("[v6]:p" or "host:p") */
    const char *port = NULL;
    if (s[0] == '[') {
        const char *close = memchr(s, ']', hl);
        if (!close) {
            snprintf(err, errlen, "URL \"%s\": unterminated [IPv6] address", url);
            return DDM_EINVAL;
        }
        if ((size_t)(close + 1 - s) < hl) {
            if (close[1] != ':') {
                snprintf(err, errlen, "URL \"%s\": expected \":port\" after \"]\"", url);
                return DDM_EINVAL;
            }
            port = close + 2;
        }
    } else {
        const char *colon = memchr(s, ':', hl);
        if (colon)
            port = colon + 1;
    }
    if (port) {
        size_t pl = hl - (size_t)(port - s);
        long p = 0;
        for (size_t i = 0; i < pl; i++) {
            if (!isdigit((unsigned char)port[i]) || p > 65535) {
                p = -1;
                break;
            }
            p = p * 10 + (port[i] - '0');
        }
        if (pl == 0 || p < 1 || p > 65535) {
            snprintf(err, errlen, "URL \"%s\": port must be a number 1..65535", url);
            return DDM_EINVAL;
        }
    }
    int n = snprintf(hostport, hplen, "%.*s%s", (int)hl, s, port ? "" : ":80");
    if (n < 0 || (size_t)n >= hplen) {
        snprintf(err, errlen, "URL \"%s\": host name too long", url);
        return DDM_EINVAL;
    }
    return 0;
}

int cli_duration_ms(const char *s, long *ms)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !isfinite(v) || v <= 0 || isspace((unsigned char)*s))
        return DDM_EINVAL;
    double scale;
    if (!*end || !strcmp(end, "s"))
        scale = 1000;
    else if (!strcmp(end, "ms"))
        scale = 1;
    else if (!strcmp(end, "m"))
        scale = 60000;
    else if (!strcmp(end, "h"))
        scale = 3600000;
    else
        return DDM_EINVAL;
    double r = ceil(v * scale);
    if (r > 1e12)
        return DDM_EINVAL;
    *ms = r < 1 ? 1 : (long)r;
    return 0;
}

int cli_parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    if (!*s || isspace((unsigned char)*s))
        return DDM_EINVAL;
    long v = strtol(s, &end, 10);
    if (*end || end == s)
        return DDM_EINVAL;
    if (errno == ERANGE || v < lo || v > hi)
        return DDM_ERANGE;
    *out = v;
    return 0;
}

int cli_parse_u64(const char *s, uint64_t *out)
{
    if (!*s || strlen(s) > 20)
        return DDM_EINVAL;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return DDM_EINVAL;
        uint64_t d = (uint64_t)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return DDM_EINVAL;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int cli_parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    if (!*s || isspace((unsigned char)*s))
        return DDM_EINVAL;
    double v = strtod(s, &end);
    if (*end || end == s || errno || !isfinite(v))
        return DDM_EINVAL;
    *out = v;
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void cli_sort_doubles(double *v, size_t n)
{
    if (n > 1)
        qsort(v, n, sizeof *v, cmp_double);
}

double cli_median(const double *v, size_t n)
{
    double *tmp = n ? malloc(n * sizeof *tmp) : NULL;
    if (!tmp)
        return NAN;
    memcpy(tmp, v, n * sizeof *tmp);
    cli_sort_doubles(tmp, n);
    double m = cli_percentile(tmp, n, 0.5);
    free(tmp);
    return m;
}

double cli_percentile(const double *sorted, size_t n, double q)
{
    if (n == 0)
        return 0;
    if (q <= 0)
        return sorted[0];
    double rank = ceil(q * (double)n);
    size_t i = rank < 1 ? 0 : (size_t)rank - 1;
    if (i >= n)
        i = n - 1;
    return sorted[i];
}

void cli_error_message(const httpc_response *resp, char *buf, size_t len)
{
    if (!len)
        return;
    buf[0] = '\0';
    if (resp->body && resp->body_len) {
        cJSON *root = cJSON_ParseWithLength(resp->body, resp->body_len);
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "error");
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
        if (cJSON_IsString(m) && m->valuestring[0]) {
            snprintf(buf, len, "%s", m->valuestring);
            cJSON_Delete(root);
            return;
        }
        cJSON_Delete(root);
        size_t n = strcspn(resp->body, "\r\n");
        if (n > resp->body_len)
            n = resp->body_len;
        if (n >= len)
            n = len - 1;
        /* keep it one printable line */
        size_t o = 0;
        for (size_t i = 0; i < n; i++)
            buf[o++] = isprint((unsigned char)resp->body[i]) ? resp->body[i] : '?';
        buf[o] = '\0';
        if (o)
            return;
    }
    snprintf(buf, len, "(empty body)");
}

void cli_report_http_error(const httpc_response *resp)
{
    char msg[1024];
    cli_error_message(resp, msg, sizeof msg);
    fprintf(stderr, "ddm-client: HTTP %d: %s\n", resp->status, msg);
}

double cli_jnum(const cJSON *o, const char *k)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(it) ? it->valuedouble : 0;
}

const char *cli_jstr(const cJSON *o, const char *k)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(it) ? it->valuestring : "";
}
