/* fakeworker.c -- a hostile or broken worker on a thread (see fakeworker.h).
 *
 * Plain blocking nanomsg calls with a receive timeout (so the thread notices
 * a stop): a raw REP socket delivers each request's SP header as an NN_MSG
 * control chunk, which is handed back to nn_sendmsg with the reply so that
 * the reply finds its requester. */
#include "tests/support/fakeworker.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nanomsg/nn.h>
#include <nanomsg/reqrep.h>

#include "ddm/v1/worker.pb-c.h"

struct fake_worker {
    fake_config c;
    char url[256], sha[80], ver[16];
    int sock;
    pthread_t th;
    int stop;
    int paused;               /* reads nothing (fake_worker_pause) */
    int idle;                 /* the thread saw paused and reads no more */
    long n_denoise, n_info;
};

void fake_worker_pause(fake_worker *f, int paused)
{
    __atomic_store_n(&f->paused, paused, __ATOMIC_SEQ_CST);
    /* a receive in progress may still take a message: wait until it ended */
    while (paused && !__atomic_load_n(&f->idle, __ATOMIC_SEQ_CST))
        usleep(1000);
}

long fake_worker_denoise_count(const fake_worker *f)
{
    return __atomic_load_n(&f->n_denoise, __ATOMIC_SEQ_CST);
}

long fake_worker_info_count(const fake_worker *f)
{
    return __atomic_load_n(&f->n_info, __ATOMIC_SEQ_CST);
}

/* Sends reply r with the request's SP header ctrl (ownership passes). */
static void send_reply(fake_worker *f, const Ddm__V1__WorkerReply *r, void *ctrl)
{
    size_t len = ddm__v1__worker_reply__get_packed_size(r);
    void *body = nn_allocmsg(len ? len : 1, 0);
    ddm__v1__worker_reply__pack(r, body);
    struct nn_iovec iov = { .iov_base = &body, .iov_len = NN_MSG };
    struct nn_msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &ctrl,
                            .msg_controllen = NN_MSG };
    if (nn_sendmsg(f->sock, &mh, 0) < 0)
        nn_freemsg(body);
}

static void answer(fake_worker *f, const Ddm__V1__WorkerRequest *req, void *ctrl)
{
    Ddm__V1__WorkerReply r = DDM__V1__WORKER_REPLY__INIT;
    if (req && req->kind_case == DDM__V1__WORKER_REQUEST__KIND_INFO) {
        __atomic_fetch_add(&f->n_info, 1, __ATOMIC_SEQ_CST);
        Ddm__V1__InfoReply i = DDM__V1__INFO_REPLY__INIT;
        i.has_id = req->info->has_id, i.id = req->info->id;
        i.has_expert_id = 1, i.expert_id = f->c.expert_id;
        i.has_dim = 1, i.dim = (uint32_t)f->c.dim;
        i.has_num_experts = 1, i.num_experts = (uint32_t)f->c.n_experts;
        i.has_num_classes = 1, i.num_classes = (uint32_t)f->c.n_classes;
        i.has_max_batch = 1, i.max_batch = (uint32_t)f->c.max_batch;
        /* claims the square grey shape of its dim, as a copycat would */
        uint32_t side = 1;
        while ((side + 1) * (side + 1) <= (uint32_t)f->c.dim)
            side++;
        if (side * side == (uint32_t)f->c.dim) {
            i.has_height = i.has_width = i.has_channels = 1;
            i.height = i.width = side;
            i.channels = 1;
        }
        i.architecture = "fake";
        i.dataset = "fake";
        i.weights_sha256 = f->c.sha256 ? f->sha : NULL;
        i.protocol_version = f->c.protocol_version ? f->ver : NULL;
        r.kind_case = DDM__V1__WORKER_REPLY__KIND_INFO;
        r.info = &i;
        send_reply(f, &r, ctrl);
        return;
    }
    if (!req || req->kind_case != DDM__V1__WORKER_REQUEST__KIND_DENOISE) {
        nn_freemsg(ctrl);
        return;
    }
    __atomic_fetch_add(&f->n_denoise, 1, __ATOMIC_SEQ_CST);
    if (f->c.mode == FAKE_SILENT) {
        nn_freemsg(ctrl);
        return;
    }
    size_t n = (size_t)req->denoise->batch * (size_t)f->c.dim;
    if (f->c.mode == FAKE_SHORT && n > 0)
        n--;
    float *v = calloc(n ? n : 1, sizeof *v);
    if (f->c.mode == FAKE_NAN)
        for (size_t i = 0; i < n; i++)
            v[i] = NAN;
    Ddm__V1__DenoiseReply d = DDM__V1__DENOISE_REPLY__INIT;
    d.has_id = req->denoise->has_id, d.id = req->denoise->id;
    d.has_v = 1;
    d.v.data = (uint8_t *)v;
    d.v.len = n * sizeof(float);
    r.kind_case = DDM__V1__WORKER_REPLY__KIND_DENOISE;
    r.denoise = &d;
    send_reply(f, &r, ctrl);
    free(v);
}

static void *run(void *arg)
{
    fake_worker *f = arg;
    while (!__atomic_load_n(&f->stop, __ATOMIC_SEQ_CST)) {
        int paused = __atomic_load_n(&f->paused, __ATOMIC_SEQ_CST);
        __atomic_store_n(&f->idle, paused, __ATOMIC_SEQ_CST);
        if (paused) {
            usleep(5000);
            continue;
        }
        void *body = NULL, *ctrl = NULL;
        struct nn_iovec iov = { .iov_base = &body, .iov_len = NN_MSG };
        struct nn_msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &ctrl,
                                .msg_controllen = NN_MSG };
        int n = nn_recvmsg(f->sock, &mh, 0);
        if (n < 0)
            continue; /* timeout: look at the stop flag */
        Ddm__V1__WorkerRequest *req = ddm__v1__worker_request__unpack(NULL, (size_t)n, body);
        nn_freemsg(body);
        answer(f, req, ctrl);
        if (req)
            ddm__v1__worker_request__free_unpacked(req, NULL);
    }
    return NULL;
}

fake_worker *fake_worker_start(const fake_config *c, char *err, size_t errlen)
{
    fake_worker *f = calloc(1, sizeof *f);
    if (!f) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    f->c = *c;
    snprintf(f->url, sizeof f->url, "%s", c->url);
    snprintf(f->sha, sizeof f->sha, "%s", c->sha256 ? c->sha256 : "");
    snprintf(f->ver, sizeof f->ver, "%s", c->protocol_version ? c->protocol_version : "");
    f->c.url = f->url;
    if (f->c.max_batch <= 0)
        f->c.max_batch = 256;
    f->sock = nn_socket(AF_SP_RAW, NN_REP);
    int timeo = 50, big = 64 << 20;
    if (f->sock < 0 ||
        nn_setsockopt(f->sock, NN_SOL_SOCKET, NN_RCVTIMEO, &timeo, sizeof timeo) < 0 ||
        nn_setsockopt(f->sock, NN_SOL_SOCKET, NN_RCVMAXSIZE, &big, sizeof big) < 0 ||
        nn_bind(f->sock, f->url) < 0) {
        snprintf(err, errlen, "fake worker on %s: %s", f->url, nn_strerror(nn_errno()));
        if (f->sock >= 0)
            nn_close(f->sock);
        free(f);
        return NULL;
    }
    if (pthread_create(&f->th, NULL, run, f) != 0) {
        snprintf(err, errlen, "fake worker: cannot start a thread");
        nn_close(f->sock);
        free(f);
        return NULL;
    }
    return f;
}

void fake_worker_stop(fake_worker *f)
{
    if (!f)
        return;
    __atomic_store_n(&f->stop, 1, __ATOMIC_SEQ_CST);
    pthread_join(f->th, NULL);
    nn_close(f->sock);
    free(f);
}
