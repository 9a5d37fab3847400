/* nnuv.c -- drive nanomsg sockets from a libuv loop.
 *
 * Design: one uv_poll per nanomsg descriptor. The receive poll runs while a
 * callback is set; the send poll only while the send queue is not empty. The
 * SP header travels as one PROTO_SP/SP_HDR control message, in a buffer on
 * the stack: nanomsg copies it on send, so nothing here owns a control
 * chunk (nn_sendmsg frees an NN_MSG control chunk even when it fails with
 * EAGAIN, which would leave a queued message without its header). */
#include "common/nnuv.h"

#include <errno.h>
#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

#include <nanomsg/nn.h>

#include "common/err.h"
#include "common/log.h"

#define NNUV_RECV_BURST 256 /* messages per readiness event, then let the loop run */
/* control buffer: one SP_HDR message holding a size_t length and the header */
#define NNUV_CTRL_BYTES (NN_CMSG_SPACE(sizeof(size_t) + NNUV_MAX_HDR))

typedef struct nnuv_out {
    void *body;     /* NN_MSG buffer */
    nnuv_hdr hdr;
} nnuv_out;

struct nnuv {
    uv_loop_t *loop;
    int sock;
    uv_poll_t rpoll;         /* on NN_RCVFD, when has_r */
    uv_poll_t spoll;         /* on NN_SNDFD, when has_s */
    int has_r, has_s;
    int receiving;           /* rpoll started */
    int sending;             /* spoll started */
    int closing;
    int open_handles;        /* poll handles not yet closed by libuv */
    nnuv_recv_fn fn;
    void *ud;
    nnuv_out *q;             /* ring buffer of waiting sends */
    size_t qcap, qhead, qlen;
    nnuv_stats st;
    void (*close_cb)(void *ud);
    void *close_ud;
};

typedef union nnuv_ctrl {
    max_align_t align;
    unsigned char b[NNUV_CTRL_BYTES];
} nnuv_ctrl;

static int get_fd(int sock, int opt, int *fd)
{
    size_t sz = sizeof *fd;
    if (nn_getsockopt(sock, NN_SOL_SOCKET, opt, fd, &sz) != 0)
        return -nn_errno();
    return 0;
}

int nnuv_open(uv_loop_t *loop, int sock, nnuv **out)
{
    *out = NULL;
    int rfd = -1, sfd = -1;
    int has_r = get_fd(sock, NN_RCVFD, &rfd) == 0;
    int has_s = get_fd(sock, NN_SNDFD, &sfd) == 0;
    if (!has_r && !has_s)
        return DDM_EINVAL;
    nnuv *s = calloc(1, sizeof *s);
    if (!s)
        return DDM_ENOMEM;
    s->loop = loop;
    s->sock = sock;
    int rc = 0;
    if (has_r) {
        rc = uv_poll_init(loop, &s->rpoll, rfd);
        if (rc < 0) {
            free(s);
            return rc;
        }
        s->rpoll.data = s;
        s->has_r = 1;
        s->open_handles++;
    }
    if (has_s) {
        rc = uv_poll_init(loop, &s->spoll, sfd);
        if (rc < 0) {
            if (s->has_r) {
                /* rpoll must be closed through libuv; the socket stays the caller's */
                s->sock = -1;
                nnuv_close(s, NULL, NULL);
            } else {
                free(s);
            }
            return rc;
        }
        s->spoll.data = s;
        s->has_s = 1;
        s->open_handles++;
    }
    *out = s;
    return 0;
}

/* Reads the SP_HDR control message nanomsg wrote into ctrl. Returns 0, or
 * DDM_ERANGE when it was missing (header too long for the buffer) or over
 * NNUV_MAX_HDR. */
static int parse_hdr(const nnuv_ctrl *ctrl, nnuv_hdr *h)
{
    const struct nn_cmsghdr *cm = (const struct nn_cmsghdr *)ctrl->b;
    h->len = 0;
    if (cm->cmsg_len < NN_CMSG_SPACE(sizeof(size_t)) || cm->cmsg_level != PROTO_SP ||
        cm->cmsg_type != SP_HDR)
        return DDM_ERANGE;
    const unsigned char *p = NN_CMSG_DATA(cm);
    size_t n;
    memcpy(&n, p, sizeof n);
    if (n > NNUV_MAX_HDR)
        return DDM_ERANGE;
    memcpy(h->b, p + sizeof n, n);
    h->len = (uint32_t)n;
    return 0;
}

int nnuv_recvmsg(int sock, int flags, void **body, nnuv_hdr *hdr)
{
    nnuv_ctrl ctrl;
    ((struct nn_cmsghdr *)ctrl.b)->cmsg_len = 0;
    *body = NULL;
    struct nn_iovec iov = { .iov_base = body, .iov_len = NN_MSG };
    struct nn_msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                            .msg_control = ctrl.b, .msg_controllen = sizeof ctrl.b };
    int n = nn_recvmsg(sock, &mh, flags);
    if (n < 0)
        return -nn_errno();
    if (parse_hdr(&ctrl, hdr) != 0) {
        nn_freemsg(*body);
        *body = NULL;
        return DDM_ERANGE;
    }
    return n;
}

int nnuv_sendmsg(int sock, int flags, void *body, const nnuv_hdr *hdr)
{
    nnuv_ctrl ctrl;
    struct nn_iovec iov = { .iov_base = &body, .iov_len = NN_MSG };
    struct nn_msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (hdr && hdr->len > 0) {
        if (hdr->len > NNUV_MAX_HDR)
            return DDM_EINVAL;
        struct nn_cmsghdr *cm = (struct nn_cmsghdr *)ctrl.b;
        size_t n = hdr->len;
        cm->cmsg_len = NN_CMSG_SPACE(sizeof n + n);
        cm->cmsg_level = PROTO_SP;
        cm->cmsg_type = SP_HDR;
        unsigned char *p = NN_CMSG_DATA(cm);
        memcpy(p, &n, sizeof n);
        memcpy(p + sizeof n, hdr->b, n);
        mh.msg_control = ctrl.b;
        mh.msg_controllen = cm->cmsg_len;
    }
    if (nn_sendmsg(sock, &mh, flags) < 0)
        return -nn_errno();
    return 0;
}

static void on_readable(uv_poll_t *p, int status, int events)
{
    (void)events;
    nnuv *s = p->data;
    if (status < 0) {
        log_error("nnuv: socket %d: receive poll failed: %s; receiving stopped", s->sock,
                  uv_strerror(status));
        nnuv_recv_stop(s);
        return;
    }
    for (int i = 0; i < NNUV_RECV_BURST && s->receiving && !s->closing; i++) {
        void *body;
        nnuv_hdr h;
        int n = nnuv_recvmsg(s->sock, NN_DONTWAIT, &body, &h);
        if (n == DDM_ERANGE) {
            s->st.dropped++;
            log_warn_limited("nnuv: socket %d: dropped a message whose SP header is over %d "
                             "bytes (too many device hops)", s->sock, NNUV_MAX_HDR);
            continue;
        }
        if (n < 0) {
            if (n != -EAGAIN && n != -EINTR) {
                log_error("nnuv: socket %d: receive failed: %s; receiving stopped", s->sock,
                          nn_strerror(-n));
                nnuv_recv_stop(s);
            }
            return;
        }
        s->st.received++;
        s->fn(s, body, (size_t)n, &h, s->ud);
    }
}

int nnuv_recv_start(nnuv *s, nnuv_recv_fn fn, void *ud)
{
    if (s->closing)
        return DDM_ECLOSED;
    if (!s->has_r || !fn)
        return DDM_EINVAL;
    s->fn = fn;
    s->ud = ud;
    int rc = uv_poll_start(&s->rpoll, UV_READABLE, on_readable);
    if (rc < 0)
        return rc;
    s->receiving = 1;
    return 0;
}

void nnuv_recv_stop(nnuv *s)
{
    if (s->receiving)
        uv_poll_stop(&s->rpoll);
    s->receiving = 0;
}

/* One non-blocking nn_sendmsg of *body with hdr. Returns 0 (nanomsg took
 * *body) or -errno (caller keeps *body). */
static int try_send(nnuv *s, void **body, const nnuv_hdr *hdr)
{
    int rc = nnuv_sendmsg(s->sock, NN_DONTWAIT, *body, hdr);
    if (rc < 0)
        return rc;
    s->st.sent++;
    return 0;
}

/* Sends queued messages until nanomsg pushes back; stops the send poll when
 * the queue is empty. Messages that fail for another reason are dropped. */
static void flush(nnuv *s)
{
    while (s->qlen > 0) {
        nnuv_out *o = &s->q[s->qhead];
        int rc = try_send(s, &o->body, &o->hdr);
        if (rc == -EAGAIN)
            return;
        if (rc < 0) {
            log_warn_limited("nnuv: socket %d: queued message dropped: %s", s->sock,
                             nn_strerror(-rc));
            nn_freemsg(o->body);
            s->st.dropped++;
        }
        s->qhead = (s->qhead + 1) % s->qcap;
        s->qlen--;
    }
    if (s->sending)
        uv_poll_stop(&s->spoll);
    s->sending = 0;
}

static void on_writable(uv_poll_t *p, int status, int events)
{
    (void)events;
    nnuv *s = p->data;
    if (status < 0)
        log_warn("nnuv: socket %d: send poll: %s", s->sock, uv_strerror(status));
    flush(s);
}

/* Appends to the ring buffer, doubling it when full (amortised: the queue
 * only grows while a peer is missing or slow). */
static int enqueue(nnuv *s, void *body, const nnuv_hdr *hdr)
{
    if (s->qlen == s->qcap) {
        size_t ncap = s->qcap ? 2 * s->qcap : 16;
        nnuv_out *nq = malloc(ncap * sizeof *nq);
        if (!nq)
            return DDM_ENOMEM;
        for (size_t i = 0; i < s->qlen; i++)
            nq[i] = s->q[(s->qhead + i) % s->qcap];
        free(s->q);
        s->q = nq;
        s->qcap = ncap;
        s->qhead = 0;
    }
    nnuv_out *o = &s->q[(s->qhead + s->qlen) % s->qcap];
    o->body = body;
    if (hdr && hdr->len > 0)
        o->hdr = *hdr;
    else
        o->hdr.len = 0;
    s->qlen++;
    s->st.queued_total++;
    return 0;
}

int nnuv_send(nnuv *s, void *body, const nnuv_hdr *hdr)
{
    if (s->closing)
        return DDM_ECLOSED;
    if (!s->has_s || !body || (hdr && hdr->len > NNUV_MAX_HDR))
        return DDM_EINVAL;
    if (s->qlen == 0) {
        int rc = try_send(s, &body, hdr);
        if (rc != -EAGAIN)
            return rc;
    }
    int rc = enqueue(s, body, hdr);
    if (rc < 0)
        return rc;
    if (!s->sending) {
        rc = uv_poll_start(&s->spoll, UV_READABLE, on_writable);
        if (rc < 0) {
            s->qlen--; /* undo: the caller keeps body */
            return rc;
        }
        s->sending = 1;
    }
    return 0;
}

int nnuv_send_copy(nnuv *s, const void *data, size_t len, const nnuv_hdr *hdr)
{
    void *body = nn_allocmsg(len, 0);
    if (!body)
        return DDM_ENOMEM;
    if (len)
        memcpy(body, data, len);
    int rc = nnuv_send(s, body, hdr);
    if (rc < 0)
        nn_freemsg(body);
    return rc;
}

size_t nnuv_queued(const nnuv *s) { return s->qlen; }
int nnuv_socket(const nnuv *s) { return s->sock; }
void nnuv_get_stats(const nnuv *s, nnuv_stats *out) { *out = s->st; }

static void on_handle_closed(uv_handle_t *h)
{
    nnuv *s = h->data;
    if (--s->open_handles > 0)
        return;
    if (s->sock >= 0)
        nn_close(s->sock);
    free(s->q);
    void (*cb)(void *) = s->close_cb;
    void *ud = s->close_ud;
    free(s);
    if (cb)
        cb(ud);
}

void nnuv_close(nnuv *s, void (*close_cb)(void *ud), void *ud)
{
    if (s->closing)
        return;
    nnuv_recv_stop(s);
    flush(s);
    s->closing = 1;
    while (s->qlen > 0) {
        nn_freemsg(s->q[s->qhead].body);
        s->qhead = (s->qhead + 1) % s->qcap;
        s->qlen--;
        s->st.dropped++;
    }
    if (s->sending)
        uv_poll_stop(&s->spoll);
    s->sending = 0;
    s->close_cb = close_cb;
    s->close_ud = ud;
    /* nnuv_open guarantees at least one handle, so close_cb always runs */
    if (s->has_r)
        uv_close((uv_handle_t *)&s->rpoll, on_handle_closed);
    if (s->has_s)
        uv_close((uv_handle_t *)&s->spoll, on_handle_closed);
}

void nnuv_hdr_set_id(nnuv_hdr *h, uint32_t id)
{
    id |= 0x80000000u;
    h->len = 4;
    h->b[0] = (uint8_t)(id >> 24);
    h->b[1] = (uint8_t)(id >> 16);
    h->b[2] = (uint8_t)(id >> 8);
    h->b[3] = (uint8_t)id;
}

static uint32_t get_be32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

int nnuv_hdr_id(const nnuv_hdr *h, uint32_t *id)
{
    if (h->len != 4 || !(h->b[0] & 0x80))
        return DDM_EPROTO;
    *id = get_be32(h->b) & 0x7fffffffu;
    return 0;
}

uint32_t nnuv_hdr_peer(const nnuv_hdr *h)
{
    return h->len >= 4 ? get_be32(h->b) : 0;
}
