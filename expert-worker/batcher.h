/* batcher.h -- dynamic batching policy: a FIFO of requests (each some
 * latents) and the rule for when to start a forward pass.
 *
 * A batch starts when the queue holds max_batch latents, or the oldest
 * request has waited max_delay, or the caller flushes (shutdown); it takes
 * requests in arrival order while they fit in max_batch latents. No request
 * overtakes an earlier one, so none can starve. Pure logic: no clock of its
 * own, no allocation (items are intrusive). */
#ifndef DDM_EXPERT_BATCHER_H
#define DDM_EXPERT_BATCHER_H

#include <stdint.h>

typedef struct batcher_item {
    struct batcher_item *next;
    int n;              /* latents, 1..max_batch */
    uint64_t t_ns;      /* arrival time */
} batcher_item;

typedef struct batcher {
    batcher_item *head, *tail;
    int count;          /* requests queued */
    long latents;       /* latents queued */
    int max_batch;
    uint64_t max_delay_ns;
} batcher;

void batcher_init(batcher *b, int max_batch, uint64_t max_delay_ns);

/* Appends it (it->n and it->t_ns set by the caller; n must be 1..max_batch). */
void batcher_push(batcher *b, batcher_item *it);

/* Whether a batch should start at now_ns. Returns 1 if so. Otherwise 0 and
 * *wait_ns: how long until the oldest request's delay runs out (UINT64_MAX
 * when the queue is empty). flush != 0 ignores the delay. */
int batcher_ready(const batcher *b, uint64_t now_ns, int flush, uint64_t *wait_ns);

/* Pops requests in FIFO order while their latents fit in max_batch (always
 * at least the first). Returns the popped list (linked by next, NULL-ended)
 * and their latent total in *latents; NULL and 0 when empty. */
batcher_item *batcher_take(batcher *b, int *latents);

#endif
