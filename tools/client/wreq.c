/* wreq.c -- blocking raw REQ client of a worker (see wreq.h). Deadlines
 * are the socket's NN_SNDTIMEO / NN_RCVTIMEO, set before each wait. With a
 * key, the request MACs sit in a ring indexed by request id (ids are
 * consecutive, so the ring holds the last WREQ_MACS sends). */
#include "tools/client/wreq.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>

#include "common/err.h"
#include "common/nnuv.h"

struct wreq {
    int sock;
    uint32_t next_id;
    int has_key;
    hmac_key key;
    struct {
        int used;                /* a signed request has this slot */
        uint32_t id;
        uint8_t mac[HMAC_SIZE];
    } macs[WREQ_MACS];           /* by id % WREQ_MACS */
    int last_mac;                /* wreq_reply_mac */
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

int wreq_open(const char *url, wreq **out, char *err, size_t errlen)
{
    *out = NULL;
    wreq *c = calloc(1, sizeof *c);
    if (!c)
        return ddm_errf(err, errlen, DDM_ENOMEM, "out of memory");
    /* ids start somewhere else in every client: a stale reply on a reused
     * connection cannot be taken for a new one */
    c->next_id = ((uint32_t)getpid() * 2654435761u + (uint32_t)(uintptr_t)c) & 0x3fffffffu;
    c->last_mac = WREQ_MAC_UNCHECKED;
    c->sock = nn_socket(AF_SP_RAW, NN_REQ);
    if (c->sock < 0) {
        int e = nn_errno();
        free(c);
        return ddm_errf(err, errlen, -e, "nanomsg socket: %s", nn_strerror(e));
    }
    int unlimited = -1, linger = 0;
    nn_setsockopt(c->sock, NN_SOL_SOCKET, NN_RCVMAXSIZE, &unlimited, sizeof unlimited);
    nn_setsockopt(c->sock, NN_SOL_SOCKET, NN_LINGER, &linger, sizeof linger);
    if (nn_connect(c->sock, url) < 0) {
        int e = nn_errno();
        nn_close(c->sock);
        free(c);
        if (e == EINVAL || e == EPROTONOSUPPORT || e == ENAMETOOLONG)
            return ddm_errf(err, errlen, DDM_EINVAL, "\"%s\" is not a worker URL: use "
                            "tcp://host:port or ipc:///path", url);
        return ddm_errf(err, errlen, -e, "cannot connect to %s: %s", url, nn_strerror(e));
    }
    *out = c;
    return 0;
}

void wreq_close(wreq *c)
{
    if (!c)
        return;
    nn_close(c->sock);
    free(c);
}

static void set_timeout(int sock, int opt, int ms)
{
    if (ms < 1)
        ms = 1;
    nn_setsockopt(sock, NN_SOL_SOCKET, opt, &ms, sizeof ms);
}

static int timed_out(int rc) { return rc == -ETIMEDOUT || rc == -EAGAIN; }

void wreq_set_key(wreq *c, const hmac_key *k)
{
    c->key = *k;
    c->has_key = 1;
}

int wreq_reply_mac(const wreq *c) { return c->last_mac; }

static int send_msg(wreq *c, const void *buf, size_t len, int sign, int timeout_ms,
                    uint32_t *id)
{
    size_t tlen = sign ? HMAC_TRAILER_SIZE : 0;
    uint8_t *body = nn_allocmsg(len + tlen, 0);
    if (!body)
        return DDM_ENOMEM;
    if (len)
        memcpy(body, buf, len);
    *id = c->next_id++ & 0x7fffffffu;
    unsigned slot = *id % WREQ_MACS;
    c->macs[slot].used = sign;
    if (sign) {
        hmac_trailer_req(&c->key, body, len, body + len);
        c->macs[slot].id = *id;
        memcpy(c->macs[slot].mac, body + len + 2, HMAC_SIZE);
    }
    nnuv_hdr h;
    nnuv_hdr_set_id(&h, *id);
    set_timeout(c->sock, NN_SNDTIMEO, timeout_ms);
    int rc = nnuv_sendmsg(c->sock, 0, body, &h);
    if (rc < 0) {
        nn_freemsg(body);
        return timed_out(rc) ? DDM_ETIMEDOUT : rc;
    }
    return 0;
}

int wreq_send(wreq *c, const void *buf, size_t len, int timeout_ms, uint32_t *id)
{
    return send_msg(c, buf, len, c->has_key, timeout_ms, id);
}

int wreq_send_raw(wreq *c, const void *buf, size_t len, int timeout_ms, uint32_t *id)
{
    return send_msg(c, buf, len, 0, timeout_ms, id);
}

/* Sets c->last_mac for the reply body[0..*len) to request id; strips a
 * valid trailer from *len. */
static void check_mac(wreq *c, uint32_t id, const void *body, size_t *len)
{
    unsigned slot = id % WREQ_MACS;
    c->last_mac = WREQ_MAC_UNCHECKED;
    if (!c->has_key || !c->macs[slot].used || c->macs[slot].id != id)
        return;
    c->last_mac = hmac_trailer_check_rep(&c->key, c->macs[slot].mac, body, *len);
    if (c->last_mac == 0)
        *len -= HMAC_TRAILER_SIZE;
}

int wreq_recv(wreq *c, int timeout_ms, uint32_t *id, void **body, size_t *len)
{
    nnuv_hdr h;
    set_timeout(c->sock, NN_RCVTIMEO, timeout_ms);
    int n = nnuv_recvmsg(c->sock, 0, body, &h);
    if (n < 0)
        return timed_out(n) ? DDM_ETIMEDOUT : n == DDM_ERANGE ? DDM_EPROTO : n;
    if (nnuv_hdr_id(&h, id) != 0) {
        nn_freemsg(*body);
        *body = NULL;
        return DDM_EPROTO;
    }
    *len = (size_t)n;
    check_mac(c, *id, *body, len);
    return 0;
}

int wreq_recv_id(wreq *c, uint32_t id, int timeout_ms, void **body, size_t *len)
{
    double end = now_ms() + timeout_ms;
    for (;;) {
        double left = end - now_ms();
        if (left < 1)
            return DDM_ETIMEDOUT;
        uint32_t got;
        int rc = wreq_recv(c, (int)left, &got, body, len);
        if (rc == DDM_EPROTO)
            continue;
        if (rc < 0 || got == id)
            return rc;
        nn_freemsg(*body); /* a late reply to an earlier request */
        *body = NULL;
    }
}

int wreq_call(wreq *c, const void *buf, size_t len, int timeout_ms, void **body,
                 size_t *blen)
{
    uint32_t id;
    int rc = wreq_send(c, buf, len, timeout_ms, &id);
    return rc < 0 ? rc : wreq_recv_id(c, id, timeout_ms, body, blen);
}
