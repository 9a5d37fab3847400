/* fakeworker.h -- a hostile or broken "worker" for tests: a thread with its
 * own raw REP socket that answers the Info handshake with whatever identity
 * it is told to claim, and denoise requests with zeros, NaN, the wrong
 * length, or nothing at all. What an attacker or a buggy implementation
 * could put on a worker's port. */
#ifndef DDM_TEST_FAKEWORKER_H
#define DDM_TEST_FAKEWORKER_H

#include <stddef.h>

typedef enum fake_mode {
    FAKE_ZEROS,   /* v all zeros: plausible, all-black images */
    FAKE_NAN,     /* v all NaN */
    FAKE_SHORT,   /* v one float short of batch * dim */
    FAKE_SILENT,  /* denoise requests are never answered */
} fake_mode;

typedef struct fake_config {
    const char *url;               /* nanomsg URL to bind */
    int expert_id, dim, n_classes, n_experts, max_batch;
    const char *sha256;            /* weights_sha256 claimed; NULL: field absent */
    const char *protocol_version;  /* NULL: field absent */
    fake_mode mode;
} fake_config;

typedef struct fake_worker fake_worker;

/* Binds c->url and starts answering on a thread. The strings of c are
 * copied. Returns NULL (message in err) if the URL cannot be bound. */
fake_worker *fake_worker_start(const fake_config *c, char *err, size_t errlen);

/* Requests received so far (thread-safe reads). */
long fake_worker_denoise_count(const fake_worker *f);
long fake_worker_info_count(const fake_worker *f);

/* paused 1: f reads nothing, as a stopped process (SIGSTOP) would; what
 * arrives meanwhile waits in the socket and is answered after
 * fake_worker_pause(f, 0), late, as after SIGCONT. */
void fake_worker_pause(fake_worker *f, int paused);

/* Stops the thread, closes the socket and frees f. */
void fake_worker_stop(fake_worker *f);

#endif
