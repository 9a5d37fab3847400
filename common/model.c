/* model.c -- load a network from a validated safetensors file, and write one.
 *
 * Loading checks the file against its own metadata: the config ints parse
 * strictly, the config passes net_config_check, and every tensor of the
 * layout is present with exactly the shape the config implies. Weights are
 * converted into one owned fp32 buffer (the file may store F16/BF16); the
 * mapping stays open for metadata and the file's sha256. */
#include "common/model.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

static const char *kind_names[] = { [MODEL_DENOISER] = "denoiser", [MODEL_ROUTER] = "router",
                                    [MODEL_CLASSIFIER] = "classifier" };
#define N_KINDS ((int)(sizeof kind_names / sizeof kind_names[0]))

const char *model_kind_name(model_kind k)
{
    return (int)k >= 0 && (int)k < N_KINDS ? kind_names[k] : "unknown";
}

/* Config fields in metadata, in the order of net_config. */
static const char *cfg_keys[] = { "in_dim", "hidden", "n_blocks", "out_dim",
                                  "n_classes", "time_dim", "gauss_rank" };
#define N_CFG ((int)(sizeof cfg_keys / sizeof cfg_keys[0]))

static int *cfg_field(net_config *c, int i)
{
    int *f[] = { &c->in_dim, &c->hidden, &c->n_blocks, &c->out_dim,
                 &c->n_classes, &c->time_dim, &c->gauss_rank };
    return f[i];
}

/* Which config fields decide each tensor's shape, and which one makes it
 * absent when zero; for messages. */
static const struct { const char *tensor, *fields, *absent_if_zero; } shape_src[] = {
    { "w_in", "hidden, in_dim", NULL },          { "b_in", "hidden", NULL },
    { "w_t", "hidden, time_dim", "time_dim" },   { "emb", "n_classes, hidden", "n_classes" },
    { "ln_g", "n_blocks, hidden", NULL },        { "w1", "n_blocks, hidden", "n_blocks" },
    { "b1", "n_blocks, hidden", "n_blocks" },    { "w2", "n_blocks, hidden", "n_blocks" },
    { "b2", "n_blocks, hidden", "n_blocks" },    { "w_out", "out_dim, hidden", NULL },
    { "b_out", "out_dim", NULL },                { "g_mu", "in_dim", "gauss_rank" },
    { "g_u", "gauss_rank, in_dim", "gauss_rank" }, { "g_lam", "gauss_rank", "gauss_rank" },
    { "g_sig2", "gauss_rank", "gauss_rank" },
};
#define N_NET_TENSORS ((int)(sizeof shape_src / sizeof shape_src[0]))

static void __attribute__((format(printf, 4, 5)))
fail(const char *path, char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    int n = snprintf(err, errlen, "weights file %s: ", path);
    if (n < 0 || (size_t)n >= errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

/* A metadata value made safe for a one-line message: control bytes become
 * '?', long values are cut to 40 characters. */
static const char *show(const char *s, char buf[48])
{
    size_t i = 0;
    for (; i < 40 && s[i]; i++)
        buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    if (s[i]) {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = '\0';
    return buf;
}

/* Strict decimal: optional '-' only if allow_neg, then digits and nothing
 * else. Returns 0, -1 if not such a number, -2 if beyond 9 digits. */
static int parse_int(const char *s, int allow_neg, int *out)
{
    int neg = 0;
    if (allow_neg && *s == '-') {
        neg = 1;
        s++;
    }
    size_t n = strspn(s, "0123456789");
    if (n == 0 || s[n] != '\0')
        return -1;
    if (n > 9)
        return -2;
    int v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    *out = neg ? -v : v;
    return 0;
}

/* Parses metadata key as an int; on failure sets err and returns -1. */
static int meta_int(const model *m, const char *key, int allow_neg, int *out, const char *path,
                    char *err, size_t errlen)
{
    const char *v = st_meta(m->file, key);
    char b[48];
    int rc = parse_int(v, allow_neg, out);
    if (rc == -2)
        fail(path, err, errlen, "metadata %s = \"%s\" is out of range", key, show(v, b));
    else if (rc)
        fail(path, err, errlen, "metadata %s = \"%s\" is not %sa non-negative decimal integer",
             key, show(v, b), allow_neg ? "-1 or " : "");
    return rc ? -1 : 0;
}

static void format_shape(int ndim, const int64_t *shape, char *buf, size_t len)
{
    size_t n = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (n < len)
        snprintf(buf + n, len - n, "]");
}

/* "(hidden=512, n_blocks=2)" for the fields a tensor's shape comes from. */
static void format_src(const char *tensor, const net_config *c, char *buf, size_t len)
{
    const char *fields = "";
    for (int i = 0; i < N_NET_TENSORS; i++)
        if (!strcmp(shape_src[i].tensor, tensor))
            fields = shape_src[i].fields;
    net_config cc = *c;
    size_t n = (size_t)snprintf(buf, len, "(");
    for (int i = 0; i < N_CFG && n < len; i++) {
        const char *hit = strstr(fields, cfg_keys[i]);
        if (hit)
            n += (size_t)snprintf(buf + n, len - n, "%s%s=%d", n > 1 ? ", " : "", cfg_keys[i],
                                  *cfg_field(&cc, i));
    }
    if (n < len)
        snprintf(buf + n, len - n, ")");
}

/* Reads and checks the metadata into m. Returns 0 or -1 with err set. */
static int read_meta(model *m, const char *path, char *err, size_t errlen)
{
    const st_file *f = m->file;
    char b[48];
    const char *fmt = st_meta(f, "ddm.format");
    if (!fmt) {
        fail(path, err, errlen, "no ddm.format in __metadata__: not a ddm weights file "
             "(expected ddm.format = \"%s\")", MODEL_FORMAT);
        return -1;
    }
    if (strcmp(fmt, MODEL_FORMAT)) {
        fail(path, err, errlen, "ddm.format is \"%s\", this build reads \"%s\"", show(fmt, b),
             MODEL_FORMAT);
        return -1;
    }
    const char *kind = st_meta(f, "ddm.kind");
    int k = 0;
    while (kind && k < N_KINDS && strcmp(kind, kind_names[k]))
        k++;
    if (!kind || k == N_KINDS) {
        fail(path, err, errlen, "ddm.kind is %s%s%s, expected denoiser, router or classifier",
             kind ? "\"" : "", kind ? show(kind, b) : "missing", kind ? "\"" : "");
        return -1;
    }
    m->kind = (model_kind)k;

    for (int i = 0; i < N_CFG; i++) {
        const char *v = st_meta(f, cfg_keys[i]);
        if (!v) {
            fail(path, err, errlen, "metadata %s is missing", cfg_keys[i]);
            return -1;
        }
        if (meta_int(m, cfg_keys[i], 0, cfg_field(&m->cfg, i), path, err, errlen))
            return -1;
    }
    char msg[256];
    if (net_config_check(&m->cfg, msg, sizeof msg)) {
        fail(path, err, errlen, "%s", msg);
        return -1;
    }
    if (m->kind == MODEL_DENOISER && m->cfg.out_dim != m->cfg.in_dim) {
        fail(path, err, errlen, "a denoiser needs out_dim == in_dim (in_dim %d, out_dim %d)",
             m->cfg.in_dim, m->cfg.out_dim);
        return -1;
    }

    if (st_meta(f, "expert_id") && meta_int(m, "expert_id", 1, &m->expert_id, path, err, errlen))
        return -1;
    if (m->expert_id < -1) {
        fail(path, err, errlen, "metadata expert_id = %d: use -1 for a non-expert", m->expert_id);
        return -1;
    }
    if (st_meta(f, "num_experts") &&
        meta_int(m, "num_experts", 0, &m->num_experts, path, err, errlen))
        return -1;
    if (m->num_experts > 0 && m->expert_id >= m->num_experts) {
        fail(path, err, errlen, "metadata expert_id = %d is outside 0..%d (num_experts = %d)",
             m->expert_id, m->num_experts - 1, m->num_experts);
        return -1;
    }
    if (m->kind == MODEL_ROUTER && m->num_experts > 0 && m->cfg.out_dim != m->num_experts) {
        fail(path, err, errlen, "a router for num_experts = %d needs out_dim = %d, has %d",
             m->num_experts, m->num_experts, m->cfg.out_dim);
        return -1;
    }
    const char *v = st_meta(f, "dataset");
    if (v && strlen(v) >= sizeof m->dataset) {
        fail(path, err, errlen, "metadata dataset = \"%s\" is longer than %zu characters",
             show(v, b), sizeof m->dataset - 1);
        return -1;
    }
    snprintf(m->dataset, sizeof m->dataset, "%s", v ? v : "");
    /* a classifier's classes are its outputs */
    int classes = m->kind == MODEL_CLASSIFIER ? m->cfg.out_dim : m->cfg.n_classes;
    if (model_shape_read(f, m->cfg.in_dim, classes, &m->shape, err, errlen))
        return -1;
    return 0;
}

/* Checks every tensor of the layout and converts it into m->params. */
static int read_tensors(model *m, const char *path, char *err, size_t errlen)
{
    net_tensor_info info[NET_MAX_TENSORS];
    int n = net_tensor_table(&m->cfg, info);
    char want[160], got[160], src[160], msg[256];

    /* A network tensor the config says should not exist means the metadata
     * and the tensors disagree. */
    for (int i = 0; i < N_NET_TENSORS; i++) {
        int expected = 0;
        for (int j = 0; j < n; j++)
            expected |= !strcmp(info[j].name, shape_src[i].tensor);
        if (!expected && st_get(m->file, shape_src[i].tensor)) {
            const char *why = shape_src[i].absent_if_zero;
            fail(path, err, errlen, "tensor \"%s\" is present but metadata %s=0 says the "
                 "network has none", shape_src[i].tensor, why ? why : "?");
            return -1;
        }
    }

    /* Every tensor present with the shape the metadata implies, before anything is
     * allocated: the sizes then come from bytes the file holds, not from its
     * metadata alone (a small file claiming hidden 8192 must not cost gigabytes). */
    for (int i = 0; i < n; i++) {
        const net_tensor_info *ti = &info[i];
        const st_tensor *t = st_get(m->file, ti->name);
        format_shape(ti->ndim, ti->shape, want, sizeof want);
        format_src(ti->name, &m->cfg, src, sizeof src);
        if (!t) {
            fail(path, err, errlen, "tensor \"%s\" is missing: metadata %s requires shape %s",
                 ti->name, src, want);
            return -1;
        }
        if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
            fail(path, err, errlen, "tensor \"%s\" has dtype %s, expected F32, F16 or BF16",
                 ti->name, st_dtype_name(t->dtype));
            return -1;
        }
        int same = t->ndim == ti->ndim;
        for (int d = 0; same && d < t->ndim; d++)
            same = t->shape[d] == ti->shape[d];
        if (!same) {
            format_shape(t->ndim, t->shape, got, sizeof got);
            fail(path, err, errlen, "tensor \"%s\" shape %s does not match metadata %s: "
                 "expected %s", ti->name, got, src, want);
            return -1;
        }
    }

    /* the parameters, then their transposed copies for net_forward */
    m->params = malloc((net_param_count(&m->cfg) + net_transposed_count(&m->cfg)) *
                       sizeof *m->params + 1);
    if (!m->params) {
        fail(path, err, errlen, "out of memory for %zu parameters", net_param_count(&m->cfg));
        return -1;
    }
    for (int i = 0; i < n; i++) {
        const net_tensor_info *ti = &info[i];
        const st_tensor *t = st_get(m->file, ti->name);
        float *dst = m->params + ti->offset;
        if (st_read_f32(t, dst, ti->numel, msg, sizeof msg)) {
            fail(path, err, errlen, "%s", msg);
            return -1;
        }
        for (size_t j = 0; j < ti->numel; j++) {
            if (!isfinite(dst[j])) {
                fail(path, err, errlen, "tensor \"%s\" holds a non-finite value (%g) at "
                     "element %zu", ti->name, (double)dst[j], j);
                return -1;
            }
        }
    }
    net_bind(&m->cfg, m->params, &m->w);
    net_transpose(&m->cfg, &m->w, m->params + net_param_count(&m->cfg));
    /* fp16 files: the same values in half the bytes for small batches */
    m->halves = malloc(net_half_count(&m->cfg) * sizeof *m->halves + 1);
    if (!m->halves) {
        fail(path, err, errlen, "out of memory for the half copies");
        return -1;
    }
    if (net_half(&m->cfg, &m->w, m->halves) == 0) { /* none usable: not fp16, or no AVX-512 */
        free(m->halves);
        m->halves = NULL;
    }

    /* The Gaussian baseline divides by these variances. */
    for (int r = 0; m->w.g_lam && r < m->cfg.gauss_rank; r++) {
        if (m->w.g_lam[r] < 0) {
            fail(path, err, errlen, "tensor \"g_lam\" element %d = %g is negative (a variance)",
                 r, (double)m->w.g_lam[r]);
            return -1;
        }
    }
    if (m->w.g_sig2 && !(m->w.g_sig2[0] > 0)) {
        fail(path, err, errlen, "tensor \"g_sig2\" = %g must be positive (a variance)",
             (double)m->w.g_sig2[0]);
        return -1;
    }
    return 0;
}

model *model_open(const char *path, char *err, size_t errlen)
{
    model *m = calloc(1, sizeof *m);
    if (!m) {
        fail(path, err, errlen, "out of memory");
        return NULL;
    }
    m->expert_id = -1;
    if (!(m->file = st_open(path, err, errlen)) || read_meta(m, path, err, errlen) ||
        read_tensors(m, path, err, errlen)) {
        model_close(m);
        return NULL;
    }
    return m;
}

void model_close(model *m)
{
    if (!m)
        return;
    st_close(m->file);
    model_shape_free(&m->shape);
    free(m->params);
    free(m->halves);
    free(m);
}

const char *model_meta(const model *m, const char *key) { return st_meta(m->file, key); }

int model_write(st_writer *w, model_kind kind, const net_config *c, const float *params,
                st_dtype dtype, const char *dataset, int expert_id, int num_experts)
{
    char msg[256];
    if (!w || !c || !params || (int)kind < 0 || (int)kind >= N_KINDS ||
        (dtype != ST_F32 && dtype != ST_F16 && dtype != ST_BF16) ||
        net_config_check(c, msg, sizeof msg) || expert_id < -1 || num_experts < 0 ||
        (dataset && strlen(dataset) >= sizeof((model *)0)->dataset))
        return DDM_EINVAL;
    net_tensor_info info[NET_MAX_TENSORS];
    int n = net_tensor_table(c, info);
    for (int i = 0; i < n; i++) {
        int rc = st_writer_add_f32(w, info[i].name, dtype, info[i].ndim, info[i].shape,
                                   params + info[i].offset);
        if (rc)
            return rc;
    }
    net_config cc = *c;
    char num[16];
    int rc = st_writer_meta(w, "ddm.format", MODEL_FORMAT);
    if (!rc)
        rc = st_writer_meta(w, "ddm.kind", model_kind_name(kind));
    for (int i = 0; i < N_CFG && !rc; i++) {
        snprintf(num, sizeof num, "%d", *cfg_field(&cc, i));
        rc = st_writer_meta(w, cfg_keys[i], num);
    }
    if (!rc)
        rc = st_writer_meta(w, "dataset", dataset ? dataset : "");
    snprintf(num, sizeof num, "%d", expert_id);
    if (!rc)
        rc = st_writer_meta(w, "expert_id", num);
    snprintf(num, sizeof num, "%d", num_experts);
    if (!rc)
        rc = st_writer_meta(w, "num_experts", num);
    return rc;
}

/* ---- image shape and class names ------------------------------------------------ */

void model_shape_default(model_shape *s, int in_dim)
{
    memset(s, 0, sizeof *s);
    int side = 1;
    while ((long)side * side < in_dim)
        side++;
    s->channels = 1;
    if ((long)side * side == in_dim) {
        s->height = s->width = side;
    } else {
        s->height = 1;
        s->width = in_dim;
    }
}

void model_shape_free(model_shape *s)
{
    if (!s)
        return;
    free(s->class_names);
    s->class_names = NULL;
    s->n_class_names = 0;
}

/* One allocation: n pointers, then the strings; names[i] taken from get(i). */
static char **names_alloc(int n, const char *(*get)(const void *, int), const void *ud)
{
    size_t bytes = (size_t)n * sizeof(char *);
    for (int i = 0; i < n; i++)
        bytes += strlen(get(ud, i)) + 1;
    char **names = malloc(bytes ? bytes : 1);
    if (!names)
        return NULL;
    char *at = (char *)(names + n);
    for (int i = 0; i < n; i++) {
        size_t len = strlen(get(ud, i)) + 1;
        memcpy(at, get(ud, i), len);
        names[i] = at;
        at += len;
    }
    return names;
}

static const char *json_name(const void *ud, int i)
{
    return cJSON_GetArrayItem((const cJSON *)ud, i)->valuestring;
}

static const char *shape_name(const void *ud, int i)
{
    return ((const model_shape *)ud)->class_names[i];
}

int model_shape_copy(model_shape *dst, const model_shape *src)
{
    *dst = *src;
    dst->class_names = NULL;
    if (src->n_class_names > 0) {
        dst->class_names = names_alloc(src->n_class_names, shape_name, src);
        if (!dst->class_names) {
            dst->n_class_names = 0;
            return DDM_ENOMEM;
        }
    }
    return 0;
}

/* NULL when name is usable as a class name, else why not. */
static const char *bad_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0)
        return "is empty";
    if (n >= MODEL_MAX_CLASS_NAME)
        return "is too long";
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
            return "holds a control character";
    return NULL;
}

static int read_names(const st_file *f, const char *v, int n_classes, model_shape *out,
                      char *err, size_t errlen)
{
    const char *path = st_path(f);
    char b[48];
    cJSON *arr = cJSON_Parse(v);
    int rc = 0, n = cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : -1;
    if (n < 0) {
        fail(path, err, errlen, "metadata class_names = \"%s\" is not a JSON array of strings",
             show(v, b));
        rc = DDM_EFORMAT;
    } else if (n != n_classes) {
        fail(path, err, errlen, "metadata class_names has %d names, the network has n_classes = %d",
             n, n_classes);
        rc = DDM_EMISMATCH;
    }
    for (int i = 0; i < n && !rc; i++) {
        const cJSON *it = cJSON_GetArrayItem(arr, i);
        const char *why = cJSON_IsString(it) ? bad_name(it->valuestring) : "is not a string";
        for (int j = 0; j < i && !why; j++)
            if (!strcmp(cJSON_GetArrayItem(arr, j)->valuestring, it->valuestring))
                why = "repeats an earlier name";
        if (why) {
            fail(path, err, errlen, "metadata class_names: entry %d %s", i, why);
            rc = DDM_EFORMAT;
        }
    }
    if (!rc && n > 0) {
        out->class_names = names_alloc(n, json_name, arr);
        if (!out->class_names) {
            fail(path, err, errlen, "out of memory for the class names");
            rc = DDM_ENOMEM;
        } else {
            out->n_class_names = n;
        }
    }
    cJSON_Delete(arr);
    return rc;
}

int model_shape_read(const st_file *f, int in_dim, int n_classes, model_shape *out, char *err,
                     size_t errlen)
{
    static const char *keys[3] = { "height", "width", "channels" };
    const char *path = st_path(f);
    char b[48];
    int v[3], have = 0;
    model_shape_default(out, in_dim);
    if (in_dim == 784)
        out->height = out->width = 28; /* the files from before the shape keys */
    for (int i = 0; i < 3; i++) {
        const char *s = st_meta(f, keys[i]);
        if (!s)
            continue;
        have++;
        if (parse_int(s, 0, &v[i]) || v[i] < 1 || v[i] > 1 << 20) {
            fail(path, err, errlen, "metadata %s = \"%s\" is not a positive decimal integer",
                 keys[i], show(s, b));
            return DDM_EFORMAT;
        }
    }
    if (have != 0 && have != 3) {
        fail(path, err, errlen, "metadata has only some of height, width, channels: give all "
             "three (or none for 28x28x1)");
        return DDM_EFORMAT;
    }
    if (have == 3) {
        if (v[2] != 1 && v[2] != 3) {
            fail(path, err, errlen, "metadata channels = %d: 1 (grey) or 3 (RGB)", v[2]);
            return DDM_EFORMAT;
        }
        if ((long)v[0] * v[1] * v[2] != in_dim) {
            fail(path, err, errlen, "metadata height x width x channels = %dx%dx%d = %ld, but "
                 "in_dim = %d", v[0], v[1], v[2], (long)v[0] * v[1] * v[2], in_dim);
            return DDM_EMISMATCH;
        }
        out->height = v[0], out->width = v[1], out->channels = v[2];
    }
    const char *names = st_meta(f, "class_names");
    return names ? read_names(f, names, n_classes, out, err, errlen) : 0;
}

int model_shape_write(st_writer *w, const model_shape *s)
{
    if ((s->channels != 1 && s->channels != 3) || s->height < 1 || s->width < 1)
        return DDM_EINVAL;
    char num[16];
    const int v[3] = { s->height, s->width, s->channels };
    static const char *keys[3] = { "height", "width", "channels" };
    for (int i = 0; i < 3; i++) {
        snprintf(num, sizeof num, "%d", v[i]);
        int rc = st_writer_meta(w, keys[i], num);
        if (rc)
            return rc;
    }
    if (s->n_class_names <= 0)
        return 0;
    cJSON *arr = cJSON_CreateArray();
    int rc = arr ? 0 : DDM_ENOMEM;
    for (int i = 0; i < s->n_class_names && !rc; i++) {
        if (bad_name(s->class_names[i]))
            rc = DDM_EINVAL;
        else if (!cJSON_AddItemToArray(arr, cJSON_CreateString(s->class_names[i])))
            rc = DDM_ENOMEM;
    }
    char *text = rc ? NULL : cJSON_PrintUnformatted(arr);
    if (!rc && !text)
        rc = DDM_ENOMEM;
    if (!rc)
        rc = st_writer_meta(w, "class_names", text);
    free(text);
    cJSON_Delete(arr);
    return rc;
}

int model_shape_equal(const model_shape *a, const model_shape *b)
{
    if (a->height != b->height || a->width != b->width || a->channels != b->channels ||
        a->n_class_names != b->n_class_names)
        return 0;
    for (int i = 0; i < a->n_class_names; i++)
        if (strcmp(a->class_names[i], b->class_names[i]))
            return 0;
    return 1;
}

int model_class_index(const model_shape *s, const char *name)
{
    for (int i = 0; name && i < s->n_class_names; i++)
        if (!strcmp(s->class_names[i], name))
            return i;
    return -1;
}

const char *model_shape_str(const model_shape *s, char *buf, size_t len)
{
    snprintf(buf, len, "%dx%dx%d", s->height, s->width, s->channels);
    return buf;
}
