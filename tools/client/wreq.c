/* wreq.c -- blocking raw REQ client of a worker (see wreq.h). Deadlines
 * are the socket's NN_SNDTIMEO / NN_RCVTIMEO, set before each wait. */
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

int wreq_send(wreq *c, const void *buf, size_t len, int timeout_ms, uint32_t *id)
{
    void *body = nn_allocmsg(len, 0);
    if (!body)
        return DDM_ENOMEM;
    if (len)
        memcpy(body, buf, len);
    *id = c->next_id++ & 0x7fffffffu;
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
