/* wclient.h -- a blocking client of worker protocol v1 for end-to-end tests:
 * a raw nanomsg REQ socket that talks to a worker the way ddm-router does
 * (each message tagged with a 31-bit request id in its SP header, many in
 * flight), optionally with the cluster key's MAC trailer (HELPERS.md,
 * docs/protocol.md "Authentication"). */
#ifndef DDM_TEST_WCLIENT_H
#define DDM_TEST_WCLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "ddm/v1/worker.pb-c.h"

#define WCLIENT_MAC_LEN 32

typedef struct wclient wclient;

/* Connects a raw REQ socket to url; replies wait at most rcv_ms. Returns
 * NULL (message on stderr) on failure. */
wclient *wclient_open(const char *url, int rcv_ms);
void wclient_close(wclient *c);

/* From now on every request carries a MAC under key (len >= 16 bytes, kept
 * by the client) and every reply's MAC is checked; len 0 turns it off. */
void wclient_set_key(wclient *c, const uint8_t *key, size_t len);

/* Sends buf[0..len) as one message tagged with request id (< 2^31), as is:
 * no MAC even when keyed. Returns 0 or -1. */
int wclient_send_raw(wclient *c, uint32_t id, const void *buf, size_t len);

/* Packs r and sends it tagged with id, with the MAC trailer when keyed.
 * Returns 0 or -1. */
int wclient_send(wclient *c, uint32_t id, const Ddm__V1__WorkerRequest *r);

/* Receives until the reply to request id arrives (replies to other ids are
 * dropped). Returns it (free with ddm__v1__worker_reply__free_unpacked(r,
 * NULL)) or NULL on timeout or an undecodable reply. When keyed, *mac_ok
 * (if not NULL) is 1 when the reply carries a valid reply MAC for that
 * request, else 0. */
Ddm__V1__WorkerReply *wclient_recv(wclient *c, uint32_t id, int *mac_ok);

/* Sends an InfoRequest until the worker answers (it may still be starting),
 * for up to timeout_ms. Returns the reply or NULL. */
Ddm__V1__WorkerReply *wclient_info(wclient *c, int timeout_ms);

/* A fresh request id. */
uint32_t wclient_next_id(wclient *c);

/* HMAC-SHA256(key, a || b || c) into out; any part may be empty. */
void wclient_hmac(const uint8_t *key, size_t keylen, const void *a, size_t alen, const void *b,
                  size_t blen, const void *c, size_t clen, uint8_t out[WCLIENT_MAC_LEN]);

#endif
