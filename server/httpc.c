/* httpc.c -- small blocking HTTP/1.1 client: one nonblocking socket driven with
 * poll() against a deadline, responses parsed by llhttp in response mode.
 * Bytes read past the end of one response (pipelining) are kept for the next. */
#include "server/httpc.h"

#include "common/err.h"

#include <errno.h>
#include <fcntl.h>
#include <llhttp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

struct httpc {
    char host[256];
    char port[16];
    char hosthdr[300];
    int fd;
    int timeout_ms;
    int served;              /* responses read on this connection */
    llhttp_t parser;
    llhttp_settings_t settings;
    buf left;                /* unparsed bytes after the last response */
    /* per-response parse state */
    int head;
    int done;
    buf store;               /* header names/values, NUL-separated */
    buf hoff;                /* uint32 pairs of offsets into store */
    int field_open, value_open;
    buf body;
    int status;
};

static int buf_put(buf *b, const void *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q)
            return DDM_ENOMEM;
        b->p = q;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static void buf_free(buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for events on fd until deadline; 1 ready, 0 timed out, <0 error. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = { .fd = fd, .events = events };
        int rc = poll(&p, 1, left > 1000000 ? 1000000 : (int)left);
        if (rc > 0)
            return 1;
        if (rc == 0)
            continue;
        if (errno != EINTR)
            return -errno;
    }
}

/* ---- llhttp response callbacks ---------------------------------------------------- */

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    httpc *c = p->data;
    if (!c->field_open) {
        uint32_t off[2] = { (uint32_t)c->store.len, UINT32_MAX };
        if (buf_put(&c->hoff, off, sizeof(off)) < 0)
            return -1;
        c->field_open = 1;
    }
    return buf_put(&c->store, at, n) < 0 ? -1 : 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    httpc *c = p->data;
    c->field_open = 0;
    return buf_put(&c->store, "", 1) < 0 ? -1 : 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    httpc *c = p->data;
    if (c->hoff.len < 2 * sizeof(uint32_t))
        return -1;
    if (!c->value_open) {
        uint32_t *off = (uint32_t *)(c->hoff.p + c->hoff.len) - 1;
        *off = (uint32_t)c->store.len;
        c->value_open = 1;
    }
    return buf_put(&c->store, at, n) < 0 ? -1 : 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    httpc *c = p->data;
    if (c->hoff.len < 2 * sizeof(uint32_t))
        return -1;
    uint32_t *off = (uint32_t *)(c->hoff.p + c->hoff.len) - 1;
    if (!c->value_open)
        *off = (uint32_t)c->store.len;
    c->value_open = 0;
    while (c->store.len > *off && (c->store.p[c->store.len - 1] == ' ' ||
                                   c->store.p[c->store.len - 1] == '\t'))
        c->store.len--;
    return buf_put(&c->store, "", 1) < 0 ? -1 : 0;
}

static int on_headers_complete(llhttp_t *p)
{
    httpc *c = p->data;
    c->status = p->status_code;
    if (c->head && p->status_code >= 200)
        return 1; /* HEAD: no body whatever the headers say */
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    httpc *c = p->data;
    return buf_put(&c->body, at, n) < 0 ? -1 : 0;
}

static void reset_response_state(httpc *c)
{
    c->store.len = 0;
    c->hoff.len = 0;
    c->body.len = 0;
    c->field_open = c->value_open = 0;
    c->status = 0;
}

static int on_message_complete(llhttp_t *p)
{
    httpc *c = p->data;
    if (p->status_code >= 100 && p->status_code < 200 && p->status_code != 101) {
        reset_response_state(c); /* interim response (100 Continue): wait for the real one */
        return 0;
    }
    c->done = 1;
    return HPE_PAUSED;
}

/* ---- public API --------------------------------------------------------------- */

static int split_hostport(const char *hp, char *host, size_t hl, char *port, size_t pl)
{
    const char *colon = strrchr(hp, ':');
    if (!colon || !colon[1] || strlen(colon + 1) >= pl)
        return DDM_EINVAL;
    const char *h = hp;
    size_t n = (size_t)(colon - hp);
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
        h++;
        n -= 2;
    }
    if (n == 0 || n >= hl)
        return DDM_EINVAL;
    memcpy(host, h, n);
    host[n] = '\0';
    strcpy(port, colon + 1);
    for (const char *q = port; *q; q++)
        if (*q < '0' || *q > '9')
            return DDM_EINVAL;
    return 0;
}

int httpc_open(const char *hostport, int timeout_ms, httpc **out, char *err, size_t errlen)
{
    *out = NULL;
    httpc *c = calloc(1, sizeof(*c));
    if (!c)
        return DDM_ENOMEM;
    if (!hostport || split_hostport(hostport, c->host, sizeof(c->host), c->port,
                                    sizeof(c->port)) < 0 ||
        strlen(hostport) >= sizeof(c->hosthdr)) {
        if (errlen)
            snprintf(err, errlen, "address \"%s\" is not host:port (e.g. 127.0.0.1:8080)",
                     hostport ? hostport : "");
        free(c);
        return DDM_EINVAL;
    }
    strcpy(c->hosthdr, hostport);
    c->fd = -1;
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : 30000;
    llhttp_settings_init(&c->settings);
    c->settings.on_header_field = on_header_field;
    c->settings.on_header_field_complete = on_header_field_complete;
    c->settings.on_header_value = on_header_value;
    c->settings.on_header_value_complete = on_header_value_complete;
    c->settings.on_headers_complete = on_headers_complete;
    c->settings.on_body = on_body;
    c->settings.on_message_complete = on_message_complete;
    *out = c;
    return 0;
}

void httpc_disconnect(httpc *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->served = 0;
    c->left.len = 0;
}

void httpc_close(httpc *c)
{
    if (!c)
        return;
    httpc_disconnect(c);
    buf_free(&c->left);
    buf_free(&c->store);
    buf_free(&c->hoff);
    buf_free(&c->body);
    free(c);
}

int httpc_fd(const httpc *c) { return c->fd; }

static int connect_deadline(httpc *c, int64_t deadline)
{
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    struct addrinfo *res = NULL;
    if (getaddrinfo(c->host, c->port, &hints, &res) != 0 || !res)
        return DDM_ENOTFOUND;
    int rc = DDM_EIO;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                        a->ai_protocol);
        if (fd < 0) {
            rc = -errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) < 0 && errno != EINPROGRESS) {
            rc = -errno;
            close(fd);
            continue;
        }
        int w = wait_fd(fd, POLLOUT, deadline);
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        if (w <= 0) {
            rc = w == 0 ? DDM_ETIMEDOUT : w;
            close(fd);
            if (w == 0)
                break;
            continue;
        }
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
        if (soerr) {
            rc = -soerr;
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c->fd = fd;
        c->served = 0;
        c->left.len = 0;
        rc = 0;
        break;
    }
    freeaddrinfo(res);
    return rc;
}

int httpc_connect(httpc *c)
{
    if (c->fd >= 0)
        return 0;
    return connect_deadline(c, now_ms() + c->timeout_ms);
}

/* Sends iov fully before deadline; 0 or a negative error. */
static int send_all(int fd, struct iovec *iov, int n, int64_t deadline)
{
    while (n > 0) {
        struct msghdr m = { .msg_iov = iov, .msg_iovlen = (size_t)n };
        ssize_t w = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return -errno;
            int r = wait_fd(fd, POLLOUT, deadline);
            if (r <= 0)
                return r == 0 ? DDM_ETIMEDOUT : r;
            continue;
        }
        size_t sent = (size_t)w;
        while (n > 0 && sent >= iov->iov_len) {
            sent -= iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + sent;
            iov->iov_len -= sent;
        }
    }
    return 0;
}

int httpc_send_raw(httpc *c, const void *bytes, size_t len)
{
    int64_t deadline = now_ms() + c->timeout_ms;
    if (c->fd < 0) {
        int rc = connect_deadline(c, deadline);
        if (rc < 0)
            return rc;
    }
    struct iovec iov = { .iov_base = (void *)bytes, .iov_len = len };
    return send_all(c->fd, &iov, 1, deadline);
}

static int fill_response(httpc *c, httpc_response *resp)
{
    size_t nh = c->hoff.len / (2 * sizeof(uint32_t));
    resp->status = c->status;
    resp->keep_alive = llhttp_should_keep_alive(&c->parser);
    resp->_store = malloc(c->store.len + 1);
    resp->headers = calloc(nh ? nh : 1, sizeof(httpc_header));
    resp->body = malloc(c->body.len + 1);
    if (!resp->_store || !resp->headers || !resp->body)
        return DDM_ENOMEM;
    if (c->store.len)
        memcpy(resp->_store, c->store.p, c->store.len);
    resp->_store[c->store.len] = '\0';
    const uint32_t *off = (const uint32_t *)c->hoff.p;
    for (size_t i = 0; i < nh; i++) {
        resp->headers[i].name = resp->_store + off[2 * i];
        resp->headers[i].value = off[2 * i + 1] == UINT32_MAX ? "" : resp->_store + off[2 * i + 1];
    }
    resp->nheaders = nh;
    if (c->body.len)
        memcpy(resp->body, c->body.p, c->body.len);
    resp->body[c->body.len] = '\0';
    resp->body_len = c->body.len;
    return 0;
}

/* Feeds data to the parser; keeps what follows a complete response in c->left. */
static int feed(httpc *c, const char *data, size_t n, int from_left)
{
    llhttp_errno_t e = llhttp_execute(&c->parser, data, n);
    if (e == HPE_PAUSED && c->done) {
        const char *pos = llhttp_get_error_pos(&c->parser);
        size_t rest = pos ? (size_t)(data + n - pos) : 0;
        if (from_left) {
            memmove(c->left.p, pos, rest);
            c->left.len = rest;
        } else {
            c->left.len = 0;
            if (rest && buf_put(&c->left, pos, rest) < 0)
                return DDM_ENOMEM;
        }
        return 0;
    }
    if (from_left)
        c->left.len = 0;
    if (e == HPE_OK)
        return 0;
    return DDM_EPROTO;
}

static int read_response(httpc *c, int head, httpc_response *resp, int64_t deadline)
{
    memset(resp, 0, sizeof(*resp));
    if (c->fd < 0)
        return DDM_ECLOSED;
    llhttp_init(&c->parser, HTTP_RESPONSE, &c->settings);
    c->parser.data = c;
    c->head = head;
    c->done = 0;
    reset_response_state(c);
    size_t got = 0;
    int rc = 0;
    if (c->left.len) {
        got += c->left.len;
        rc = feed(c, c->left.p, c->left.len, 1);
    }
    char tmp[16384];
    while (rc == 0 && !c->done) {
        ssize_t n = recv(c->fd, tmp, sizeof(tmp), 0);
        if (n > 0) {
            got += (size_t)n;
            rc = feed(c, tmp, (size_t)n, 0);
            continue;
        }
        if (n == 0) { /* EOF: a body delimited by close ends here */
            if (got) {
                llhttp_errno_t e = llhttp_finish(&c->parser);
                if ((e == HPE_OK || e == HPE_PAUSED) && c->done)
                    break; /* on_message_complete pauses, hence HPE_PAUSED */
            }
            rc = got ? DDM_EPROTO : DDM_ECLOSED;
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int w = wait_fd(c->fd, POLLIN, deadline);
            if (w <= 0)
                rc = w == 0 ? DDM_ETIMEDOUT : w;
            continue;
        }
        rc = (!got && (errno == ECONNRESET || errno == EPIPE)) ? DDM_ECLOSED : -errno;
    }
    if (rc == 0 && c->done) {
        rc = fill_response(c, resp);
        if (rc == 0) {
            c->served++;
            if (!resp->keep_alive)
                httpc_disconnect(c);
            return 0;
        }
    }
    if (rc == 0)
        rc = DDM_EPROTO;
    httpc_disconnect(c);
    return rc;
}

int httpc_read_response(httpc *c, int head, httpc_response *resp)
{
    return read_response(c, head, resp, now_ms() + c->timeout_ms);
}

static int method_has_body(const char *m)
{
    return !strcmp(m, "POST") || !strcmp(m, "PUT") || !strcmp(m, "PATCH");
}

int httpc_request(httpc *c, const char *method, const char *path,
                  const httpc_header *headers, size_t nheaders,
                  const void *body, size_t len, httpc_response *resp)
{
    memset(resp, 0, sizeof(*resp));
    int64_t deadline = now_ms() + c->timeout_ms;
    buf h = { 0 };
    char line[128];
    int rc = 0;
    rc |= buf_put(&h, method, strlen(method));
    rc |= buf_put(&h, " ", 1);
    rc |= buf_put(&h, path, strlen(path));
    rc |= buf_put(&h, " HTTP/1.1\r\nHost: ", 17);
    rc |= buf_put(&h, c->hosthdr, strlen(c->hosthdr));
    rc |= buf_put(&h, "\r\n", 2);
    for (size_t i = 0; i < nheaders; i++) {
        rc |= buf_put(&h, headers[i].name, strlen(headers[i].name));
        rc |= buf_put(&h, ": ", 2);
        rc |= buf_put(&h, headers[i].value, strlen(headers[i].value));
        rc |= buf_put(&h, "\r\n", 2);
    }
    if (body || method_has_body(method)) {
        int n = snprintf(line, sizeof(line), "Content-Length: %zu\r\n", body ? len : 0);
        rc |= buf_put(&h, line, (size_t)n);
    }
    rc |= buf_put(&h, "\r\n", 2);
    if (rc) {
        buf_free(&h);
        return DDM_ENOMEM;
    }
    int head = !strcmp(method, "HEAD");
    for (int attempt = 0; attempt < 2; attempt++) {
        int fresh = c->fd < 0;
        if (fresh) {
            rc = connect_deadline(c, deadline);
            if (rc < 0)
                break;
        }
        struct iovec iov[2] = { { h.p, h.len }, { (void *)body, body ? len : 0 } };
        rc = send_all(c->fd, iov, body && len ? 2 : 1, deadline);
        if (rc == 0)
            rc = read_response(c, head, resp, deadline);
        else
            httpc_disconnect(c);
        int stale = rc == DDM_ECLOSED || rc == -EPIPE || rc == -ECONNRESET;
        if (rc == 0 || fresh || !stale)
            break;
        httpc_response_free(resp); /* reused connection died idle: retry once fresh */
    }
    buf_free(&h);
    return rc;
}

const char *httpc_response_header(const httpc_response *resp, const char *name)
{
    for (size_t i = 0; i < resp->nheaders; i++)
        if (strcasecmp(resp->headers[i].name, name) == 0)
            return resp->headers[i].value;
    return NULL;
}

void httpc_response_free(httpc_response *resp)
{
    if (!resp)
        return;
    free(resp->headers);
    free(resp->body);
    free(resp->_store);
    memset(resp, 0, sizeof(*resp));
}

int httpc_wait_closed(httpc *c, int timeout_ms)
{
    if (c->fd < 0)
        return 1;
    int64_t deadline = now_ms() + timeout_ms;
    char tmp[4096];
    for (;;) {
        ssize_t n = recv(c->fd, tmp, sizeof(tmp), 0);
        if (n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE))) {
            httpc_disconnect(c);
            return 1;
        }
        if (n > 0 || (n < 0 && errno == EINTR))
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        int w = wait_fd(c->fd, POLLIN, deadline);
        if (w <= 0)
            return w;
    }
}

int httpc_raw(const char *hostport, const void *bytes, size_t len, int timeout_ms,
              char **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    httpc *c;
    int rc = httpc_open(hostport, timeout_ms, &c, NULL, 0);
    if (rc < 0)
        return rc;
    int64_t deadline = now_ms() + c->timeout_ms;
    rc = connect_deadline(c, deadline);
    if (rc == 0 && len) {
        struct iovec iov = { (void *)bytes, len };
        rc = send_all(c->fd, &iov, 1, deadline);
        if (rc == -EPIPE || rc == -ECONNRESET)
            rc = 0; /* the server may answer and close before taking everything */
    }
    buf b = { 0 };
    if (rc == 0)
        rc = buf_put(&b, "", 0);
    char tmp[16384];
    while (rc == 0) {
        ssize_t n = recv(c->fd, tmp, sizeof(tmp), 0);
        if (n > 0) {
            rc = buf_put(&b, tmp, (size_t)n);
            continue;
        }
        if (n == 0 || errno == ECONNRESET)
            break;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            rc = -errno;
            break;
        }
        int w = wait_fd(c->fd, POLLIN, deadline);
        if (w < 0)
            rc = w;
        if (w <= 0)
            break;
    }
    httpc_close(c);
    if (rc < 0) {
        buf_free(&b);
        return rc;
    }
    *out = b.p;
    *out_len = b.len;
    return 0;
}
