/* test_deploy.c -- the deployment files checked by the tools that consume them:
 * systemd units by systemd-analyze, the Kubernetes base by kubectl kustomize
 * (and the router's own cluster-file parser on its ConfigMap), the Dockerfile's
 * runtime packages against the binaries' shared libraries, and the multi-host
 * test (tests/multihost/run.sh: three network namespaces, a host cut under
 * load), and the weights pins of the shipped cluster files against the
 * MANIFEST. Each test skips with a message saying what is missing when its tool
 * is absent or it needs root. Run from the repository root. */
#define _GNU_SOURCE /* memmem */
#include <cjson/cJSON.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/png.h"
#include "router/cluster.h"
#include "router/local.h"
#include "tests/support/images.h"
#include "tests/support/proc.h"
#include "tests/support/toyset.h"

/* ---- helpers ------------------------------------------------------------------------ */

/* Runs cmd with sh -c, stdout and stderr together into *out (malloc'd, caller
 * frees). Returns the exit status (0..255), or -1 if it could not run. */
static int run(char **out, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    char full[4200];
    snprintf(full, sizeof full, "(%s) 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p) {
        free(buf);
        *out = NULL;
        return -1;
    }
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len < 2) {
            cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
    }
    buf[len] = 0;
    int st = pclose(p);
    *out = buf;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int have(const char *tool)
{
    char *out;
    int rc = run(&out, "command -v %s", tool);
    free(out);
    return rc == 0;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = 0;
    fclose(f);
    return s;
}

#define SKIP(...)                                                                             \
    do {                                                                                      \
        fprintf(stderr, "SKIP: " __VA_ARGS__);                                                \
        fprintf(stderr, "\n");                                                                \
        skip();                                                                               \
    } while (0)

static const char *bin_dir(char *buf, size_t len)
{
    const char *d = getenv("DDM_BIN_DIR");
    if (!realpath(d && *d ? d : "bin", buf))
        snprintf(buf, len, "%s", d && *d ? d : "bin");
    return buf;
}

/* ---- systemd -------------------------------------------------------------------------- */

static const char *const units[] = { "ddm-expert@.service", "ddm-router.service", "ddm.target" };

/* systemd-analyze verify on copies of the units whose ExecStart points at the
 * built binaries (verify checks that the command exists), the template as
 * instance 3; any warning fails. Then the hardening is held to an exposure
 * level of at most 2.0 (systemd's scale: 0 safe .. 10 exposed). */
static void test_systemd_units_verify(void **state)
{
    (void)state;
    if (!have("systemd-analyze"))
        SKIP("systemd-analyze not found: apt-get install systemd to check deploy/systemd");
    char dir[128], bins[512], *out;
    assert_int_equal(toyset_tempdir(dir, sizeof dir, "deploy-systemd"), 0);
    bin_dir(bins, sizeof bins);
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        const char *dst = strcmp(units[i], "ddm-expert@.service") ? units[i] : "ddm-expert@3.service";
        assert_int_equal(run(&out, "sed 's|/usr/local/bin/|%s/|' deploy/systemd/%s > %s/%s", bins,
                             units[i], dir, dst), 0);
        free(out);
    }
    int rc = run(&out, "cd %s && systemd-analyze verify ddm-expert@3.service ddm-router.service "
                       "ddm.target", dir);
    if (rc != 0 || out[0])
        fail_msg("systemd-analyze verify (exit %d):\n%s", rc, out);
    free(out);
    static const char *const svc[] = { "ddm-expert@3.service", "ddm-router.service" };
    for (int i = 0; i < 2; i++) {
        rc = run(&out, "cd %s && systemd-analyze security --offline=yes --threshold=20 %s", dir,
                 svc[i]);
        if (rc != 0)
            fail_msg("%s: exposure above 2.0 or security check failed (exit %d):\n%s", svc[i], rc,
                     out);
        assert_non_null(strstr(out, "Overall exposure level"));
        free(out);
    }
    toyset_rmdir(dir);
}

/* The hardening and restart policy the deployment promises are in both units. */
static void test_systemd_units_hardening(void **state)
{
    (void)state;
    static const char *const need[] = {
        "DynamicUser=yes",      "NoNewPrivileges=yes",   "ProtectSystem=strict",
        "ProtectHome=yes",      "PrivateTmp=yes",        "Restart=on-failure",
        "CapabilityBoundingSet=\n", "SystemCallFilter=@system-service", "KillSignal=SIGTERM",
    };
    const char *files[] = { "deploy/systemd/ddm-expert@.service", "deploy/systemd/ddm-router.service" };
    for (int f = 0; f < 2; f++) {
        char *s = slurp(files[f]);
        assert_non_null(s);
        for (size_t i = 0; i < sizeof need / sizeof need[0]; i++)
            if (!strstr(s, need[i]))
                fail_msg("%s lacks %s", files[f], need[i]);
        free(s);
    }
    char *s = slurp("deploy/systemd/ddm-expert@.service");
    assert_non_null(strstr(s, "EnvironmentFile=/etc/ddm/expert-%i.env"));
    assert_non_null(strstr(s, "--weights ${DDM_WEIGHTS} --listen ${DDM_LISTEN} $DDM_ARGS"));
    free(s);
}

/* The example environment and cluster files are usable as they stand: the
 * cluster file parses with the router's parser and names 8 experts with 2
 * replicas of expert 1, and the DDM_ARGS of the examples are flags the
 * binaries accept (they start with them and answer /healthz). */
static void test_systemd_examples(void **state)
{
    (void)state;
    cluster cl;
    char err[256];
    if (cluster_load("deploy/systemd/cluster.conf.example", &cl, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(cl.n_experts, 8);
    assert_int_equal(cl.experts[1].n_replicas, 2);
    for (int k = 0; k < 8; k++)
        assert_true(!strncmp(cl.experts[k].urls[0], "tcp://10.0.0.", 13));
    cluster_free(&cl);

    char dir[128], bins[512], *out;
    assert_int_equal(toyset_tempdir(dir, sizeof dir, "deploy-env"), 0);
    assert_int_equal(toyset_write(dir, 2, 16, 0, 5), 0);
    bin_dir(bins, sizeof bins);
    int port = proc_free_port(), rport = proc_free_port();
    /* the expert example's DDM_ARGS, with its metrics address moved to a free port */
    int rc = run(&out, ". deploy/systemd/expert-3.env.example && "
                       "args=$(echo \"$DDM_ARGS\" | sed 's/--metrics [^ ]*/--metrics 127.0.0.1:%d/') && "
                       "echo \"$args\" | grep -q -- '--metrics 127.0.0.1:%d' && "
                       "{ %s/ddm-expert --weights %s/expert-0.safetensors --listen ipc://%s/e0.ipc $args "
                       "> %s/expert.log 2>&1 & echo $! > %s/expert.pid; }",
                 port, port, bins, dir, dir, dir, dir);
    assert_int_equal(rc, 0);
    free(out);
    /* the router example's DDM_ARGS with a cluster of that one worker */
    char conf[256];
    snprintf(conf, sizeof conf, "%s/cluster.conf", dir);
    FILE *f = fopen(conf, "w");
    assert_non_null(f);
    fprintf(f, "models %s\nexpert 0 ipc://%s/e0.ipc\nexpert 1 ipc://%s/e0.ipc\n", dir, dir, dir);
    fclose(f);
    rc = run(&out, ". deploy/systemd/router.env.example && "
                   "args=$(echo \"$DDM_ARGS\" | sed 's/--listen [^ ]*/--listen 127.0.0.1:%d/') && "
                   "{ %s/ddm-router --cluster %s/cluster.conf $args > %s/router.log 2>&1 & "
                   "echo $! > %s/router.pid; }",
             rport, bins, dir, dir, dir);
    assert_int_equal(rc, 0);
    free(out);
    int ok_expert = proc_wait_http(port, "/healthz", 200, 10000);
    int ok_router = proc_wait_http(rport, "/healthz", 200, 10000);
    char path[256];
    const char *names[] = { "expert", "router" };
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s.pid", dir, names[i]);
        char *pid = slurp(path);
        if (pid) {
            proc_stop((pid_t)atoi(pid), SIGTERM, 5000);
            free(pid);
        }
    }
    if (ok_expert || ok_router) {
        snprintf(path, sizeof path, "%s/%s.log", dir, ok_expert ? "expert" : "router");
        proc_dump_log(path);
        fail_msg("ddm-%s did not start with the DDM_ARGS of its example env file",
                 ok_expert ? "expert" : "router");
    }
    toyset_rmdir(dir);
}

/* ---- Kubernetes ------------------------------------------------------------------------- */

/* One rendered object: its kind, name and text (pointers into the render). */
typedef struct kobj {
    char kind[64], name[128];
    const char *text;
    size_t len;
} kobj;

/* Value of the first line "<indent>key: value" in [s, s+len) at exactly that indent. */
static int yaml_field(const char *s, size_t len, const char *indent_key, char *val, size_t vlen)
{
    char pat[128];
    snprintf(pat, sizeof pat, "\n%s: ", indent_key);
    size_t plen = strlen(pat);
    for (const char *p = s; p && p + plen <= s + len; p = memchr(p + 1, '\n', (size_t)(s + len - p - 1))) {
        if (!strncmp(p, pat, plen) || (p == s && !strncmp(p, pat + 1, plen - 1))) {
            const char *v = p + (p == s && *p != '\n' ? plen - 1 : plen);
            size_t n = strcspn(v, "\n");
            if (n >= vlen)
                n = vlen - 1;
            memcpy(val, v, n);
            val[n] = 0;
            return 0;
        }
    }
    return -1;
}

static int split_objects(char *render, kobj *objs, int max)
{
    int n = 0;
    const char *p = render;
    while (p && *p && n < max) {
        const char *end = strstr(p, "\n---\n");
        size_t len = end ? (size_t)(end - p) + 1 : strlen(p);
        kobj *o = &objs[n];
        o->text = p, o->len = len;
        if (yaml_field(p, len, "kind", o->kind, sizeof o->kind) ||
            yaml_field(p, len, "  name", o->name, sizeof o->name))
            fail_msg("object %d of the render has no kind or metadata.name", n);
        n++;
        p = end ? end + 5 : NULL;
    }
    return n;
}

static const kobj *find(const kobj *objs, int n, const char *kind, const char *name)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(objs[i].kind, kind) && !strncmp(objs[i].name, name, strlen(name)))
            return &objs[i];
    return NULL;
}

static int has(const kobj *o, const char *s)
{
    return memmem(o->text, o->len, s, strlen(s)) != NULL;
}

/* The ConfigMap's cluster.conf block (a YAML literal block) as plain text. */
static char *configmap_cluster(const kobj *cm)
{
    const char *b = memmem(cm->text, cm->len, "  cluster.conf: |\n", 18);
    assert_non_null(b);
    b += 18;
    char *out = malloc(cm->len + 1);
    assert_non_null(out);
    size_t o = 0;
    while (b < cm->text + cm->len && !strncmp(b, "    ", 4)) {
        size_t n = strcspn(b, "\n");
        memcpy(out + o, b + 4, n - 4);
        o += n - 4;
        out[o++] = '\n';
        b += n + 1;
    }
    out[o] = 0;
    return out;
}

/* kubectl kustomize renders the base; per expert a StatefulSet and a headless
 * Service; the ConfigMap's cluster file parses with the router's parser and
 * its replica URLs are exactly the pods the StatefulSets make; probes and
 * resource requests everywhere; the router HPA; experts.yaml is what
 * gen-experts.sh writes. */
static void test_k8s_kustomize(void **state)
{
    (void)state;
    if (!have("kubectl"))
        SKIP("kubectl not found (not a Debian package): deploy/k8s not rendered");
    char *render;
    int rc = run(&render, "kubectl kustomize deploy/k8s");
    if (rc != 0)
        fail_msg("kubectl kustomize deploy/k8s failed (exit %d):\n%s", rc, render);
    kobj objs[64];
    int n = split_objects(render, objs, 64);

    const kobj *cm = find(objs, n, "ConfigMap", "ddm-cluster-");
    assert_non_null(cm);
    char *text = configmap_cluster(cm);
    cluster cl;
    char err[256];
    if (cluster_parse(text, "ConfigMap ddm-cluster", &cl, err, sizeof err))
        fail_msg("%s", err);
    assert_int_equal(cl.n_experts, 8);
    for (int k = 0; k < cl.n_experts; k++) {
        char name[32], val[32], url[128];
        snprintf(name, sizeof name, "expert-%d", k);
        const kobj *ss = find(objs, n, "StatefulSet", name);
        const kobj *svc = find(objs, n, "Service", name);
        if (!ss || !svc)
            fail_msg("expert %d: no StatefulSet or Service %s", k, name);
        assert_int_equal(yaml_field(svc->text, svc->len, "  clusterIP", val, sizeof val), 0);
        assert_string_equal(val, "None");
        assert_int_equal(yaml_field(ss->text, ss->len, "  replicas", val, sizeof val), 0);
        int replicas = atoi(val);
        if (replicas != cl.experts[k].n_replicas)
            fail_msg("expert %d: StatefulSet has %d replicas, the cluster file lists %d", k,
                     replicas, cl.experts[k].n_replicas);
        for (int r = 0; r < replicas; r++) {
            snprintf(url, sizeof url, "tcp://expert-%d-%d.expert-%d:7100", k, r, k);
            assert_string_equal(cl.experts[k].urls[r], url);
        }
        assert_true(has(ss, "livenessProbe") && has(ss, "readinessProbe"));
        assert_true(has(ss, "path: /healthz"));
        assert_true(has(ss, "requests:"));
        char weights[96];
        snprintf(weights, sizeof weights, "/expert-%d.safetensors", k);
        assert_true(has(ss, weights));
    }
    assert_int_equal(cl.experts[1].n_replicas, 2); /* the busiest expert */
    cluster_free(&cl);
    free(text);

    const kobj *dep = find(objs, n, "Deployment", "ddm-router");
    assert_non_null(dep);
    assert_true(has(dep, "path: /healthz") && has(dep, "path: /readyz"));
    assert_true(has(dep, "requests:"));
    assert_true(has(dep, "name: ddm-cluster-")); /* the generated ConfigMap, hash included */
    assert_non_null(find(objs, n, "Service", "ddm-router"));
    const kobj *hpa = find(objs, n, "HorizontalPodAutoscaler", "ddm-router");
    assert_non_null(hpa);
    assert_true(has(hpa, "name: ddm-router") && has(hpa, "kind: Deployment"));
    assert_non_null(find(objs, n, "NetworkPolicy", "ddm-expert"));
    free(render);

    char *gen, *committed = slurp("deploy/k8s/experts.yaml");
    assert_non_null(committed);
    assert_int_equal(run(&gen, "sh deploy/k8s/gen-experts.sh 8"), 0);
    if (strcmp(gen, committed))
        fail_msg("deploy/k8s/experts.yaml differs from gen-experts.sh 8: regenerate it");
    free(gen);
    free(committed);
}

/* Every shared library the binaries link directly comes from a package that
 * the Dockerfile's runtime stage installs. */
static void test_dockerfile_runtime_packages(void **state)
{
    (void)state;
    if (!have("readelf") || !have("dpkg") || !have("ldd"))
        SKIP("readelf, ldd or dpkg missing: cannot map libraries to Debian packages");
    char *docker = slurp("deploy/k8s/Dockerfile");
    assert_non_null(docker);
    const char *rt = strstr(docker, "AS runtime");
    assert_non_null(rt);
    assert_non_null(strstr(docker, "FROM debian:12 AS build"));
    char bins[512], *pkgs;
    bin_dir(bins, sizeof bins);
    int rc = run(&pkgs,
                 "for b in %s/ddm-router %s/ddm-expert; do"
                 "  for l in $(readelf -d $b | sed -n 's/.*Shared library: \\[\\(.*\\)\\]/\\1/p'); do"
                 "    p=$(ldd $b | awk -v l=$l '$1 == l { print $3 }');"
                 "    r=$(readlink -f $p);"
                 "    { dpkg -S \"$r\" || dpkg -S \"$p\" || dpkg -S \"${r#/usr}\" ||"
                 "      echo \"no-package-for:$l\"; } 2>/dev/null | head -1 | cut -d: -f1;"
                 "  done; done | sort -u", bins, bins);
    assert_int_equal(rc, 0);
    int count = 0;
    for (char *save, *p = strtok_r(pkgs, "\n", &save); p; p = strtok_r(NULL, "\n", &save)) {
        count++;
        /* libc6 is in every image; sanitizer runtimes only in SANITIZE=1 builds */
        if (!strcmp(p, "libc6") || !strncmp(p, "libasan", 7) || !strncmp(p, "libubsan", 8))
            continue;
        char word[96];
        snprintf(word, sizeof word, " %s ", p);
        if (!strstr(rt, word))
            fail_msg("deploy/k8s/Dockerfile runtime stage does not install %s", p);
    }
    assert_true(count >= 5); /* libuv, protobuf-c, nanomsg, openblas, ... were found */
    free(pkgs);
    free(docker);
}

/* ---- weights pins ------------------------------------------------------------------------ */

/* The sha256 MANIFEST lists for expert-k.safetensors, into hex (65 bytes). */
static void manifest_hash(const char *manifest, int k, char *hex)
{
    char *m = slurp(manifest);
    assert_non_null(m);
    char name[64];
    snprintf(name, sizeof name, "\nexpert-%d.safetensors ", k);
    const char *at = strstr(m, name);
    if (!at)
        fail_msg("%s has no line for expert-%d.safetensors", manifest, k);
    at += strlen(name);
    assert_int_equal(strspn(at, "0123456789abcdef"), 64);
    memcpy(hex, at, 64);
    hex[64] = 0;
    free(m);
}

/* The shipped cluster files pin every replica to models/digits/MANIFEST
 * (deploy/local/digits.conf, the Kubernetes ConfigMap's cluster.conf), and
 * `ddm-cluster pin` is what writes them: pins removed from a copy come back
 * byte for byte. */
static void test_pins_match_manifest(void **state)
{
    (void)state;
    static const char *const confs[] = { "deploy/local/digits.conf", "deploy/k8s/cluster.conf" };
    const char *manifest = "models/digits/MANIFEST";
    char dir[128], err[256];
    assert_int_equal(toyset_tempdir(dir, sizeof dir, "deploy-pins"), 0);
    for (int i = 0; i < 2; i++) {
        cluster cl;
        if (cluster_load(confs[i], &cl, err, sizeof err))
            fail_msg("%s", err);
        assert_int_equal(cl.n_experts, 8);
        for (int k = 0; k < cl.n_experts; k++) {
            char want[65];
            manifest_hash(manifest, k, want);
            for (int r = 0; r < cl.experts[k].n_replicas; r++)
                if (strcmp(cl.experts[k].sha256[r], want))
                    fail_msg("%s: expert %d replica %s pins \"%s\", %s says %s: run "
                             "deploy/local/ddm-cluster pin %s%s%s", confs[i], k,
                             cl.experts[k].urls[r], cl.experts[k].sha256[r], manifest, want,
                             confs[i], i ? " --manifest " : "", i ? manifest : "");
        }
        cluster_free(&cl);
        char *out;
        int rc = run(&out, "sed '/^expert/s/ sha256=[0-9a-f]*//' %s > %s/c.conf && "
                     "sh deploy/local/ddm-cluster pin %s/c.conf --manifest %s && cmp %s %s/c.conf",
                     confs[i], dir, dir, manifest, confs[i], dir);
        if (rc != 0)
            fail_msg("ddm-cluster pin does not rewrite %s as committed (exit %d):\n%s", confs[i],
                     rc, out);
        free(out);
    }
    /* a MANIFEST without the expert: refused, the file unchanged */
    char *out;
    int rc = run(&out, "printf 'models %s\\nexpert 0 tcp://127.0.0.1:1\\nexpert 9 tcp://127.0.0.1:2\\n' "
                 "> %s/bad.conf && cp %s/bad.conf %s/bad.orig && "
                 "sh deploy/local/ddm-cluster pin %s/bad.conf --manifest %s", dir, dir, dir, dir,
                 dir, manifest);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "expert-9.safetensors"));
    free(out);
    assert_int_equal(run(&out, "cmp %s/bad.conf %s/bad.orig", dir, dir), 0);
    free(out);
    toyset_rmdir(dir);
}

/* ---- multi-host ------------------------------------------------------------------------- */

#define MH_K 4
#define MH_DIM 64

/* Images of a saved JSON response equal in-process sampling of the same
 * request (n 4, steps 8, seed 42, top-2) to one 8-bit level. */
static void check_images(const char *path, const float *ref)
{
    char *s = slurp(path);
    if (!s)
        fail_msg("%s missing", path);
    cJSON *root = cJSON_Parse(s);
    assert_non_null(root);
    uint8_t px[4 * MH_DIM], cell[MH_DIM];
    assert_int_equal(images_from_json(root, px, 4, MH_DIM), 4);
    for (int i = 0; i < 4; i++) {
        pngio_grid_render(ref + i * MH_DIM, 1, 8, 8, 1, cell); /* MH_DIM = 8 x 8 */
        for (int d = 0; d < MH_DIM; d++)
            if (abs((int)px[i * MH_DIM + d] - (int)cell[d]) > 1)
                fail_msg("%s image %d pixel %d: %d, in-process %d", path, i, d,
                         px[i * MH_DIM + d], cell[d]);
    }
    cJSON_Delete(root);
    free(s);
}

static void test_multihost(void **state)
{
    (void)state;
    if (geteuid() != 0)
        SKIP("multi-host test needs root (network namespaces): run make test as root");
    if (!have("ip") || !have("curl") || !have("jq"))
        SKIP("multi-host test needs ip (iproute2), curl and jq");
    char dir[128], out_dir[200], bins[512], *out;
    assert_int_equal(toyset_tempdir(dir, sizeof dir, "deploy-mh"), 0);
    assert_int_equal(toyset_write(dir, MH_K, MH_DIM, 10, 21), 0);
    snprintf(out_dir, sizeof out_dir, "%s/out", dir);
    bin_dir(bins, sizeof bins);
    int rc = run(&out, "timeout -k 5 120 bash tests/multihost/run.sh --models %s --bin %s --out %s",
                 dir, bins, out_dir);
    fprintf(stderr, "%s", out);
    if (rc == 77) {
        free(out);
        toyset_rmdir(dir);
        SKIP("tests/multihost/run.sh cannot run here (see its message above)");
    }
    if (rc != 0)
        fail_msg("tests/multihost/run.sh failed (exit %d)", rc);
    free(out);

    char err[256], path[256];
    ensemble *e = ensemble_open(dir, err, sizeof err);
    if (!e)
        fail_msg("%s", err);
    sample_params p;
    sample_params_default(&p, MH_K);
    p.n = 4, p.steps = 8, p.seed = 42;
    float x[4 * MH_DIM];
    assert_int_equal(ensemble_sample(e, &p, x, NULL, NULL), 0);
    static const char *const files[] = { "all-up.json", "host-a-cut.json", "host-a-back.json" };
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", out_dir, files[i]);
        check_images(path, x);
    }
    ensemble_close(e);
    toyset_rmdir(dir);
}

/* ---- make --------------------------------------------------------------------------- */

/* Plain `make` (the default goal) installs what is missing and builds every
 * binary into bin/, as README says: a dry run into scratch directories must
 * link each of them (the default goal was once a generated library rule). */
static void test_make_default_goal(void **state)
{
    (void)state;
    if (!have("make"))
        SKIP("make is not installed");
    char dir[128], *out;
    assert_int_equal(toyset_tempdir(dir, sizeof dir, "deploy-make"), 0);
    int rc = run(&out, "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -n BUILD=%s/build BIN=%s/bin",
                 dir, dir);
    if (rc != 0)
        fail_msg("make -n failed (exit %d): %.2000s", rc, out);
    if (!strstr(out, "mk/deps.sh"))
        fail_msg("plain make does not run mk/deps.sh first: %.2000s", out);
    static const char *const bins[] = { "router", "expert", "train", "eval", "client" };
    for (int i = 0; i < 5; i++) {
        char want[256];
        snprintf(want, sizeof want, "-o %s/bin/ddm-%s ", dir, bins[i]);
        if (!strstr(out, want))
            fail_msg("plain make does not build bin/ddm-%s (no \"%s\" in its dry run)", bins[i],
                     want);
    }
    free(out);
    toyset_rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_make_default_goal),
        cmocka_unit_test(test_systemd_units_verify),
        cmocka_unit_test(test_systemd_units_hardening),
        cmocka_unit_test(test_systemd_examples),
        cmocka_unit_test(test_k8s_kustomize),
        cmocka_unit_test(test_dockerfile_runtime_packages),
        cmocka_unit_test(test_pins_match_manifest),
        cmocka_unit_test(test_multihost),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
