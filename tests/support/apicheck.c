/* apicheck.c -- record responses, check them with the OpenAPI document (see apicheck.h). */
#include "tests/support/apicheck.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/strbuf.h"
#include "server/httpc.h"

static char rec_path[64];
static FILE *rec;

void apicheck_begin(void)
{
    if (rec)
        return;
    snprintf(rec_path, sizeof rec_path, "/tmp/ddm-apicheck-XXXXXX");
    int fd = mkstemp(rec_path);
    if (fd >= 0)
        rec = fdopen(fd, "w");
}

static void put_str(strbuf *o, const char *s, size_t len)
{
    /* JSON string of arbitrary bytes: non-UTF-8-safe bytes as \u00XX */
    static const char hex[] = "0123456789abcdef";
    strbuf_puts(o, "\"");
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = { '\\', (char)c };
            strbuf_put(o, e, 2);
        } else if (c < 0x20 || c >= 0x7f) {
            char e[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
            strbuf_put(o, e, 6);
        } else {
            strbuf_put(o, &s[i], 1);
        }
    }
    strbuf_puts(o, "\"");
}

static void emit(strbuf *o)
{
    if (rec && o->p) {
        fputs(o->p, rec);
        fputc('\n', rec);
        fflush(rec);
    }
    strbuf_free(o);
}

/* Starts a record in o: {"method": ..., "path": ... (the caller closes it). */
static void begin_record(strbuf *o, const char *method, const char *path)
{
    apicheck_begin();
    strbuf_puts(o, "{\"method\":");
    put_str(o, method, strlen(method));
    strbuf_puts(o, ",\"path\":");
    put_str(o, path, strlen(path));
}

/* Records a response; headers (may be NULL) are the response's, for the
 * checks of the headers the document requires. */
static void record(const char *method, const char *path, int status, const char *ctype,
                   const char *body, size_t len, const httpc_response *headers)
{
    strbuf o = { 0 };
    begin_record(&o, method, path);
    strbuf_printf(&o, ",\"status\":%d,\"content_type\":", status);
    put_str(&o, ctype ? ctype : "", ctype ? strlen(ctype) : 0);
    /* bodies that are not text (PNG, protobuf) are only checked for their type */
    int text = ctype && (strstr(ctype, "json") || strstr(ctype, "text/"));
    strbuf_puts(&o, ",\"body\":");
    put_str(&o, text ? body : "", text ? len : 0);
    if (headers) {
        strbuf_puts(&o, ",\"headers\":{");
        for (size_t i = 0; i < headers->nheaders; i++) {
            char name[128];
            size_t n = 0;
            for (const char *c = headers->headers[i].name; *c && n + 1 < sizeof name; c++)
                name[n++] = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
            name[n] = '\0';
            if (i)
                strbuf_puts(&o, ",");
            put_str(&o, name, n);
            strbuf_puts(&o, ":");
            put_str(&o, headers->headers[i].value, strlen(headers->headers[i].value));
        }
        strbuf_puts(&o, "}");
    }
    strbuf_puts(&o, "}");
    emit(&o);
}

void apicheck_response(const char *method, const char *path, int status, const char *ctype,
                       const char *body, size_t len)
{
    record(method, path, status, ctype, body, len, NULL);
}

void apicheck_http(const char *method, const char *path, const httpc_response *r)
{
    record(method, path, r->status, httpc_response_header(r, "Content-Type"), r->body,
           r->body_len, r);
}

void apicheck_event(const char *method, const char *path, const char *event, const char *data)
{
    strbuf o = { 0 };
    begin_record(&o, method, path);
    strbuf_puts(&o, ",\"event\":");
    put_str(&o, event, strlen(event));
    strbuf_puts(&o, ",\"data\":");
    put_str(&o, data, strlen(data));
    strbuf_puts(&o, "}");
    emit(&o);
}

int apicheck_run(const char *hostport)
{
    apicheck_begin();
    if (!rec)
        return -1;
    fflush(rec);
    char err[128];
    httpc *c;
    if (httpc_open(hostport, 10000, &c, err, sizeof err))
        return -1;
    httpc_response r;
    int rc = httpc_request(c, "GET", "/openapi.json", NULL, 0, NULL, 0, &r);
    httpc_close(c);
    if (rc || r.status != 200) {
        fprintf(stderr, "apicheck: GET /openapi.json failed (%d, status %d)\n", rc, r.status);
        httpc_response_free(&r);
        return -1;
    }
    char doc[96];
    snprintf(doc, sizeof doc, "%s.openapi.json", rec_path);
    FILE *f = fopen(doc, "w");
    if (!f) {
        httpc_response_free(&r);
        return -1;
    }
    fwrite(r.body, 1, r.body_len, f);
    fclose(f);
    httpc_response_free(&r);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "node tests/openapi/check.mjs '%s' '%s' >&2", doc, rec_path);
    int st = system(cmd);
    unlink(doc);
    /* start over */
    fclose(rec);
    rec = fopen(rec_path, "w");
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

void apicheck_end(void)
{
    if (rec) {
        fclose(rec);
        rec = NULL;
        unlink(rec_path);
    }
}
