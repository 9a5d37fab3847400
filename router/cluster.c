/* cluster.c -- cluster file parsing (see cluster.h). */
#include "router/cluster.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/err.h"

void cluster_free(cluster *c)
{
    free(c->models_dir);
    free(c->router_path);
    free(c->listen);
    for (int k = 0; k < CLUSTER_MAX_EXPERTS; k++)
        for (int r = 0; r < c->experts[k].n_replicas; r++)
            free(c->experts[k].urls[r]);
    for (int i = 0; i < c->n_settings; i++) {
        free(c->set_keys[i]);
        free(c->set_values[i]);
    }
    memset(c, 0, sizeof *c);
}

const char *cluster_setting(const cluster *c, const char *key)
{
    for (int i = c->n_settings - 1; i >= 0; i--)
        if (!strcmp(c->set_keys[i], key))
            return c->set_values[i];
    return NULL;
}

static int valid_url(const char *u)
{
    if (!strncmp(u, "tcp://", 6))
        return strchr(u + 6, ':') != NULL && u[strlen(u) - 1] != ':';
    if (!strncmp(u, "ipc://", 6))
        return u[6] != '\0';
    return 0;
}

/* Parses one "key=value" attribute of an expert line into replica r of e.
 * Returns 0 or DDM_EFORMAT with "what is wrong" in why. */
static int parse_attr(cluster_expert *e, int r, const char *a, char *why, size_t whylen)
{
    const char *eq = strchr(a, '=');
    if (!eq || eq == a) {
        snprintf(why, whylen, "\"%s\" is not an attribute: use key=value (sha256=..., impl=...)", a);
        return DDM_EFORMAT;
    }
    size_t klen = (size_t)(eq - a);
    const char *v = eq + 1;
    if (klen == 6 && !strncmp(a, "sha256", 6)) {
        size_t n = strlen(v);
        int hex = n == 64;
        for (size_t i = 0; hex && i < n; i++)
            hex = (v[i] >= '0' && v[i] <= '9') || (v[i] >= 'a' && v[i] <= 'f') ||
                  (v[i] >= 'A' && v[i] <= 'F');
        if (!hex) {
            snprintf(why, whylen, "sha256 must be 64 hex digits (the weights file's sha256sum)");
            return DDM_EFORMAT;
        }
        for (size_t i = 0; i <= n; i++)
            e->sha256[r][i] = (char)(v[i] >= 'A' && v[i] <= 'F' ? v[i] - 'A' + 'a' : v[i]);
        return 0;
    }
    if (klen == 4 && !strncmp(a, "impl", 4)) {
        if (strcmp(v, "c") && strcmp(v, "torch")) {
            snprintf(why, whylen, "impl \"%s\" is unknown: use impl=c (ddm-expert) or impl=torch",
                     v);
            return DDM_EFORMAT;
        }
        snprintf(e->impl[r], sizeof e->impl[r], "%s", v);
        return 0;
    }
    snprintf(why, whylen, "unknown attribute \"%.*s\": use sha256=<hex> or impl=c|torch",
             (int)klen, a);
    return DDM_EFORMAT;
}

/* Splits line into at most max whitespace-separated words; returns the count,
 * or max + 1 if there are more. */
static int split(char *line, char **w, int max)
{
    int n = 0;
    for (char *s = strtok(line, " \t\r"); s; s = strtok(NULL, " \t\r")) {
        if (n == max)
            return max + 1;
        w[n++] = s;
    }
    return n;
}

static int replace(char **slot, const char *v)
{
    char *d = strdup(v);
    if (!d)
        return DDM_ENOMEM;
    free(*slot);
    *slot = d;
    return 0;
}

int cluster_parse(const char *text, const char *path, cluster *c, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    char *copy = strdup(text);
    if (!copy) {
        snprintf(err, errlen, "%s: out of memory", path);
        return DDM_ENOMEM;
    }
    int rc = 0, lineno = 0;
    char *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line && !rc;
         line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *w[8];
        int n = split(line, w, 7);
        if (n == 0)
            continue;
        if (!strcmp(w[0], "expert")) {
            if (n < 3 || n > 7) {
                snprintf(err, errlen, "%s:%d: expected \"expert <id> <url> [key=value ...]\"",
                         path, lineno);
                rc = DDM_EFORMAT;
                break;
            }
            char *end;
            errno = 0;
            long id = strtol(w[1], &end, 10);
            if (*end || errno || id < 0 || id >= CLUSTER_MAX_EXPERTS) {
                snprintf(err, errlen, "%s:%d: expert id \"%s\" must be an integer 0..%d", path,
                         lineno, w[1], CLUSTER_MAX_EXPERTS - 1);
                rc = DDM_EFORMAT;
                break;
            }
            if (!valid_url(w[2])) {
                snprintf(err, errlen,
                         "%s:%d: \"%s\" is not a worker URL: use tcp://host:port or ipc://path",
                         path, lineno, w[2]);
                rc = DDM_EFORMAT;
                break;
            }
            cluster_expert *e = &c->experts[id];
            for (int r = 0; r < e->n_replicas; r++)
                if (!strcmp(e->urls[r], w[2])) {
                    snprintf(err, errlen, "%s:%d: expert %ld lists replica %s twice", path,
                             lineno, id, w[2]);
                    rc = DDM_EFORMAT;
                }
            if (rc)
                break;
            if (e->n_replicas == CLUSTER_MAX_REPLICAS) {
                snprintf(err, errlen, "%s:%d: expert %ld has more than %d replicas", path, lineno,
                         id, CLUSTER_MAX_REPLICAS);
                rc = DDM_EFORMAT;
                break;
            }
            int r = e->n_replicas;
            e->sha256[r][0] = '\0';
            snprintf(e->impl[r], sizeof e->impl[r], "c");
            char why[160];
            for (int a = 3; a < n && !rc; a++)
                if ((rc = parse_attr(e, r, w[a], why, sizeof why)))
                    snprintf(err, errlen, "%s:%d: %s", path, lineno, why);
            if (rc)
                break;
            if (!(e->urls[r] = strdup(w[2]))) {
                rc = DDM_ENOMEM;
                break;
            }
            e->n_replicas++;
            if (id + 1 > c->n_experts)
                c->n_experts = (int)id + 1;
        } else if (!strcmp(w[0], "models") || !strcmp(w[0], "router") || !strcmp(w[0], "listen")) {
            if (n != 2) {
                snprintf(err, errlen, "%s:%d: expected \"%s <value>\"", path, lineno, w[0]);
                rc = DDM_EFORMAT;
                break;
            }
            char **slot = !strcmp(w[0], "models") ? &c->models_dir
                        : !strcmp(w[0], "router") ? &c->router_path : &c->listen;
            rc = replace(slot, w[1]);
        } else if (!strcmp(w[0], "set")) {
            if (n != 3) {
                snprintf(err, errlen, "%s:%d: expected \"set <key> <value>\"", path, lineno);
                rc = DDM_EFORMAT;
                break;
            }
            if (c->n_settings == CLUSTER_MAX_SETTINGS) {
                snprintf(err, errlen, "%s:%d: more than %d settings", path, lineno,
                         CLUSTER_MAX_SETTINGS);
                rc = DDM_EFORMAT;
                break;
            }
            c->set_keys[c->n_settings] = strdup(w[1]);
            c->set_values[c->n_settings] = strdup(w[2]);
            c->n_settings++;
            if (!c->set_keys[c->n_settings - 1] || !c->set_values[c->n_settings - 1])
                rc = DDM_ENOMEM;
        } else {
            snprintf(err, errlen,
                     "%s:%d: unknown directive \"%s\": use models, router, listen, expert or set",
                     path, lineno, w[0]);
            rc = DDM_EFORMAT;
        }
    }
    free(copy);
    if (!rc && c->n_experts == 0) {
        snprintf(err, errlen, "%s: no \"expert <id> <url>\" lines", path);
        rc = DDM_EFORMAT;
    }
    for (int k = 0; !rc && k < c->n_experts; k++)
        if (c->experts[k].n_replicas == 0) {
            snprintf(err, errlen, "%s: expert %d has no replica, but expert %d exists", path, k,
                     c->n_experts - 1);
            rc = DDM_EFORMAT;
        }
    if (!rc && !c->router_path && c->models_dir) {
        size_t len = strlen(c->models_dir) + 32;
        c->router_path = malloc(len);
        if (!c->router_path)
            rc = DDM_ENOMEM;
        else
            snprintf(c->router_path, len, "%s/router.safetensors", c->models_dir);
    }
    if (!rc && !c->router_path) {
        snprintf(err, errlen, "%s: says neither \"models <dir>\" nor \"router <path>\"", path);
        rc = DDM_EFORMAT;
    }
    if (rc == DDM_ENOMEM)
        snprintf(err, errlen, "%s: out of memory", path);
    if (rc)
        cluster_free(c);
    return rc;
}

int cluster_load(const char *path, cluster *out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        int e = errno;
        snprintf(err, errlen, "cluster file %s: %s", path, strerror(e));
        return -e;
    }
    struct stat sb;
    if (fstat(fileno(f), &sb) == 0 && !S_ISREG(sb.st_mode)) {
        fclose(f);
        snprintf(err, errlen, "cluster file %s: not a regular file (%s)", path,
                 S_ISDIR(sb.st_mode) ? "a directory" : "a device, FIFO or socket");
        return DDM_EINVAL;
    }
    char *buf = malloc(1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    int too_big = buf && !feof(f);
    fclose(f);
    if (!buf) {
        snprintf(err, errlen, "cluster file %s: out of memory", path);
        return DDM_ENOMEM;
    }
    if (too_big) {
        free(buf);
        snprintf(err, errlen, "cluster file %s: larger than 1 MiB", path);
        return DDM_EFORMAT;
    }
    buf[n] = '\0';
    int rc = cluster_parse(buf, path, out, err, errlen);
    free(buf);
    return rc;
}
