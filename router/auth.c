/* auth.c -- bearer tokens (see auth.h). */
#include "router/auth.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"

#define AUTH_MAX_FILE (1 << 20)
#define TOKEN_MIN 16
#define TOKEN_MAX 256

struct auth {
    char *path;
    auth_defaults d;
    auth_token **t;
    int n;
};

void auth_defaults_init(auth_defaults *d)
{
    d->concurrency = 4;
    d->queue = 16;
}

void auth_token_hold(auth_token *t)
{
    if (t)
        t->refs++;
}

void auth_token_release(auth_token *t)
{
    if (t && --t->refs == 0)
        free(t);
}

static void table_free(auth_token **t, int n)
{
    for (int i = 0; i < n; i++)
        auth_token_release(t[i]);
    free(t);
}

/* The whole file, NUL-terminated (caller frees), or NULL with err set. */
static char *read_file(const char *path, char *warn, size_t warnlen, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        ddm_errf(err, errlen, -errno, "token file %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    char *buf = NULL;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
        ddm_errf(err, errlen, DDM_EINVAL, "token file %s is not a regular file", path);
        goto out;
    }
    if (sb.st_size > AUTH_MAX_FILE) {
        ddm_errf(err, errlen, DDM_EINVAL, "token file %s is larger than 1 MiB", path);
        goto out;
    }
    if (warnlen)
        warn[0] = '\0';
    if (sb.st_mode & 077)
        snprintf(warn, warnlen, "token file %s may be read by other users (mode %03o): "
                 "chmod 600 it", path, (unsigned)(sb.st_mode & 0777));
    buf = malloc((size_t)sb.st_size + 1);
    if (!buf) {
        ddm_errf(err, errlen, DDM_ENOMEM, "out of memory reading %s", path);
        goto out;
    }
    size_t got = 0;
    while (got < (size_t)sb.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)sb.st_size - got);
        if (r <= 0) {
            ddm_errf(err, errlen, DDM_EIO, "token file %s: read failed", path);
            free(buf);
            buf = NULL;
            goto out;
        }
        got += (size_t)r;
    }
    buf[got] = '\0';
out:
    close(fd);
    return buf;
}

static int b64token_char(int c)
{
    return isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/';
}

/* Length of a valid b64token at s (ending at a space or the end), or -1. */
static int token_len(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && b64token_char((unsigned char)s[i]))
        i++;
    size_t body = i;
    while (i < n && s[i] == '=')
        i++;
    return body > 0 && i == n ? (int)n : -1;
}

static void digest_of(const char *tok, size_t len, unsigned char out[SHA256_DIGEST_SIZE])
{
    sha256_ctx c;
    sha256_init(&c);
    sha256_update(&c, tok, len);
    sha256_final(&c, out);
}

/* Parses one non-empty line (no comment) into t. 0 or an error in err. */
static int parse_line(char *line, int lineno, const char *path, const auth_defaults *d,
                      auth_token *t, char *err, size_t errlen)
{
    char *save = NULL, *word = strtok_r(line, " \t", &save);
    char *colon = strchr(word, ':');
    const char *tok = word;
    if (colon) {
        *colon = '\0';
        tok = colon + 1;
        size_t nl = strlen(word);
        if (nl < 1 || nl > 64)
            return ddm_errf(err, errlen, DDM_EINVAL, "%s:%d: a token's name is 1..64 characters",
                            path, lineno);
        for (const char *c = word; *c; c++)
            if (!isalnum((unsigned char)*c) && *c != '_' && *c != '.' && *c != '-')
                return ddm_errf(err, errlen, DDM_EINVAL,
                                "%s:%d: a token's name may hold A-Z a-z 0-9 _ . - only", path,
                                lineno);
        snprintf(t->name, sizeof t->name, "%s", word);
    } else {
        snprintf(t->name, sizeof t->name, "token-%d", lineno);
    }
    size_t tl = strlen(tok);
    if (tl < TOKEN_MIN || tl > TOKEN_MAX || token_len(tok, tl) < 0)
        return ddm_errf(err, errlen, DDM_EINVAL,
                        "%s:%d: the token of \"%s\" must be %d..%d characters of A-Z a-z 0-9 "
                        "- . _ ~ + / (then =): make one with openssl rand -hex 24", path, lineno,
                        t->name, TOKEN_MIN, TOKEN_MAX);
    digest_of(tok, tl, t->digest);
    t->concurrency = d->concurrency;
    t->queue = d->queue;
    for (char *kv; (kv = strtok_r(NULL, " \t", &save));) {
        char *eq = strchr(kv, '='), *end;
        long v = eq ? strtol(eq + 1, &end, 10) : -1;
        int ok = eq && eq[1] && !*end;
        if (ok && eq - kv == 11 && !strncmp(kv, "concurrency", 11) && v >= 1 && v <= 100000)
            t->concurrency = (int)v;
        else if (ok && eq - kv == 5 && !strncmp(kv, "queue", 5) && v >= 0 && v <= 1000000)
            t->queue = (int)v;
        else
            return ddm_errf(err, errlen, DDM_EINVAL,
                            "%s:%d: \"%.40s\" after the token of \"%s\": use concurrency=1..100000 "
                            "or queue=0..1000000", path, lineno, kv, t->name);
    }
    return 0;
}

/* Parses the file into a new table. */
static int load_table(const char *path, const auth_defaults *d, auth_token ***out, int *n_out,
                      char *warn, size_t warnlen, char *err, size_t errlen)
{
    char *text = read_file(path, warn, warnlen, err, errlen);
    if (!text)
        return DDM_EINVAL;
    auth_token **t = NULL;
    int n = 0, cap = 0, rc = 0, lineno = 0;
    for (char *line = text, *next; line && !rc; line = next) {
        lineno++;
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        size_t len = strlen(line);
        while (len && isspace((unsigned char)line[len - 1]))
            line[--len] = '\0';
        while (*line == ' ' || *line == '\t')
            line++;
        if (!*line)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 8;
            auth_token **nt = realloc(t, (size_t)cap * sizeof *nt);
            if (!nt) {
                rc = ddm_errf(err, errlen, DDM_ENOMEM, "out of memory reading %s", path);
                break;
            }
            t = nt;
        }
        auth_token *tk = calloc(1, sizeof *tk);
        if (!tk) {
            rc = ddm_errf(err, errlen, DDM_ENOMEM, "out of memory reading %s", path);
            break;
        }
        tk->refs = 1;
        t[n++] = tk;
        rc = parse_line(line, lineno, path, d, tk, err, errlen);
        for (int i = 0; i < n - 1 && !rc; i++) {
            if (!strcmp(t[i]->name, tk->name))
                rc = ddm_errf(err, errlen, DDM_EINVAL, "%s:%d: a second token named \"%s\"",
                              path, lineno, tk->name);
            else if (!memcmp(t[i]->digest, tk->digest, SHA256_DIGEST_SIZE))
                rc = ddm_errf(err, errlen, DDM_EINVAL, "%s:%d: \"%s\" has the same token as \"%s\"",
                              path, lineno, tk->name, t[i]->name);
        }
    }
    /* the text held tokens: clear it before it goes back to the allocator */
    size_t tl = strlen(text);
    memset(text, 0, tl);
    free(text);
    if (!rc && n == 0)
        rc = ddm_errf(err, errlen, DDM_EINVAL, "token file %s holds no token", path);
    if (rc) {
        table_free(t, n);
        return rc;
    }
    *out = t;
    *n_out = n;
    return 0;
}

int auth_load(const char *path, const auth_defaults *d, auth **out, char *warn, size_t warnlen,
              char *err, size_t errlen)
{
    auth *a = calloc(1, sizeof *a);
    if (!a || !(a->path = strdup(path))) {
        free(a);
        return ddm_errf(err, errlen, DDM_ENOMEM, "out of memory");
    }
    a->d = *d;
    int rc = load_table(path, d, &a->t, &a->n, warn, warnlen, err, errlen);
    if (rc) {
        free(a->path);
        free(a);
        return rc;
    }
    *out = a;
    return 0;
}

int auth_reload(auth *a, char *warn, size_t warnlen, char *err, size_t errlen)
{
    auth_token **t;
    int n;
    int rc = load_table(a->path, &a->d, &t, &n, warn, warnlen, err, errlen);
    if (rc)
        return rc;
    /* a token still there (same name and token) keeps its object: its requests and
     * queue go on; its limits come from the file */
    for (int i = 0; i < n; i++)
        for (int j = 0; j < a->n; j++)
            if (a->t[j] && !strcmp(a->t[j]->name, t[i]->name) &&
                !memcmp(a->t[j]->digest, t[i]->digest, SHA256_DIGEST_SIZE)) {
                a->t[j]->concurrency = t[i]->concurrency;
                a->t[j]->queue = t[i]->queue;
                auth_token_release(t[i]);
                t[i] = a->t[j];
                a->t[j] = NULL; /* moved */
                break;
            }
    table_free(a->t, a->n);
    a->t = t;
    a->n = n;
    return 0;
}

int auth_count(const auth *a) { return a->n; }
auth_token *auth_token_at(const auth *a, int i) { return a->t[i]; }

auth_token *auth_check(const auth *a, const char *authorization)
{
    if (!authorization || strncasecmp(authorization, "Bearer", 6) ||
        (authorization[6] != ' ' && authorization[6] != '\t'))
        return NULL;
    const char *tok = authorization + 6;
    while (*tok == ' ' || *tok == '\t')
        tok++;
    size_t len = strlen(tok);
    if (len < 1 || len > TOKEN_MAX || token_len(tok, len) < 0)
        return NULL;
    unsigned char d[SHA256_DIGEST_SIZE];
    digest_of(tok, len, d);
    auth_token *hit = NULL;
    for (int i = 0; i < a->n; i++) { /* every token, every byte: no early exit */
        unsigned diff = 0;
        for (int b = 0; b < SHA256_DIGEST_SIZE; b++)
            diff |= (unsigned)(d[b] ^ a->t[i]->digest[b]);
        unsigned match = 1u & ((diff - 1u) >> 8); /* 1 iff diff == 0 (diff < 256) */
        hit = match ? a->t[i] : hit;
    }
    return hit;
}

void auth_free(auth *a)
{
    if (!a)
        return;
    table_free(a->t, a->n);
    free(a->path);
    free(a);
}
