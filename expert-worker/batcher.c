/* batcher.c -- dynamic batching policy (see batcher.h). */
#include "expert-worker/batcher.h"

#include <stddef.h>

void batcher_init(batcher *b, int max_batch, uint64_t max_delay_ns)
{
    b->head = b->tail = NULL;
    b->count = 0;
    b->latents = 0;
    b->max_batch = max_batch;
    b->max_delay_ns = max_delay_ns;
}

void batcher_push(batcher *b, batcher_item *it)
{
    it->next = NULL;
    if (b->tail)
        b->tail->next = it;
    else
        b->head = it;
    b->tail = it;
    b->count++;
    b->latents += it->n;
}

int batcher_ready(const batcher *b, uint64_t now_ns, int flush, uint64_t *wait_ns)
{
    *wait_ns = UINT64_MAX;
    if (!b->head)
        return 0;
    if (flush || b->max_delay_ns == 0 || b->latents >= b->max_batch)
        return 1;
    uint64_t waited = now_ns > b->head->t_ns ? now_ns - b->head->t_ns : 0;
    if (waited >= b->max_delay_ns)
        return 1;
    *wait_ns = b->max_delay_ns - waited;
    return 0;
}

batcher_item *batcher_take(batcher *b, int *latents)
{
    batcher_item *first = b->head, *last = NULL;
    int n = 0;
    for (batcher_item *it = b->head; it; it = it->next) {
        if (last && n + it->n > b->max_batch)
            break;
        n += it->n;
        last = it;
        b->count--;
    }
    if (last) {
        b->head = last->next;
        if (!b->head)
            b->tail = NULL;
        last->next = NULL;
    }
    b->latents -= n;
    *latents = n;
    return last ? first : NULL;
}
