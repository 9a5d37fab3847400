/* http_internal.h -- private structures shared by http.c (connections, parsing)
 * and http_req.c (request accessors, responses). Not for use outside server/.
 *
 * A request moves PARSING -> PENDING (in a handler) -> READY (response built,
 * waiting for earlier ones) -> WRITING (uv_write in flight) -> freed in the write
 * callback. Requests PARSING/PENDING/READY sit in their connection's queue in
 * arrival order; WRITING ones are owned by their uv_write_t. When a connection
 * dies, PENDING requests are detached (conn = NULL, aborted) and live on until
 * their owner finishes them; the others are freed by the connection. */
#ifndef DDM_SERVER_HTTP_INTERNAL_H
#define DDM_SERVER_HTTP_INTERNAL_H

#include "server/http.h"

#include <llhttp.h>

typedef struct http_conn http_conn;

typedef enum req_state { REQ_PARSING, REQ_PENDING, REQ_READY, REQ_WRITING } req_state;

typedef struct hdr_ent {
    uint32_t name, name_len;   /* offsets into req->arena */
    uint32_t val, val_len;
} hdr_ent;

struct http_req {
    http_conn *conn;           /* NULL once detached (client gone) */
    http_req *next;            /* connection queue, or the abort list */
    req_state state;
    unsigned aborted : 1;
    unsigned abort_pending : 1; /* on the abort list: finishing only marks finished */
    unsigned finished : 1;
    unsigned keep_alive : 1;
    unsigned is_head : 1;
    unsigned url_open : 1, field_open : 1, value_open : 1, headers_done : 1;
    unsigned resp_close : 1;   /* handler asked for Connection: close */
    unsigned receiving : 1;    /* being parsed: bcap counts in body_bytes_receiving */
    int minor;                 /* HTTP/1.minor */
    const char *method;        /* static string from llhttp */
    uint64_t start_ns;

    char *arena;               /* url, header names and values, NUL-separated */
    size_t alen, acap;
    uint32_t url, url_len;     /* url split in place: path at url, query at query */
    uint32_t query;
    size_t hdr_bytes;          /* request line + header bytes seen */
    hdr_ent *hdrs;
    uint32_t nhdrs, hcap;

    uint8_t *body;             /* [blen] + NUL, NULL when empty */
    size_t blen, bcap;
    size_t blimit;             /* Content-Length when given (the buffer grows to it), else 0 */

    void *user;
    void (*abort_fn)(http_req *req, void *ud);
    void *abort_ud;

    char *rhdrs;               /* extra response header lines "Name: value\r\n" */
    size_t rh_len, rh_cap;
    uint32_t rh_count;
    char *head;                /* status line + headers (+ copied body) */
    size_t head_len;
    const void *rbody;         /* body to send: inside head, or owned */
    size_t rbody_len;
    void *rbody_owned;         /* malloc'd body to free, or NULL */
    uv_write_t wr;

    /* streamed response (http_stream.c) */
    unsigned streaming : 1;    /* http_stream_begin was called */
    unsigned stream_live : 1;  /* head written: this is conn->stream */
    unsigned stream_ended : 1; /* the owner called http_stream_end */
    char *sbuf;                /* body bytes written before the head went out */
    size_t sbuf_len, sbuf_cap;
    void (*drain_fn)(http_req *req, void *ud);
    void *drain_ud;
};

struct http_conn {
    uv_tcp_t tcp;              /* first: handle -> conn cast */
    uv_timer_t timer;
    http_server *srv;
    http_conn *prev, *next;    /* server's connection list */
    llhttp_t parser;
    http_req *cur;             /* request being parsed, or NULL */
    http_req *q_head, *q_tail; /* PENDING/READY in arrival order */
    uint32_t nqueued, nwriting;
    int handles;               /* open uv handles; freed at 0 */
    unsigned closing : 1;      /* uv_close issued */
    unsigned reading : 1;
    unsigned read_eof : 1;
    unsigned stop_parse : 1;   /* no further requests are accepted */
    unsigned close_after_write : 1;
    unsigned lingering : 1;    /* final response sent: draining input before close */
    unsigned paused : 1;       /* parser paused: pipeline full */
    unsigned limited : 1;      /* a reserve connection: "always" routes only */
    unsigned cont_busy : 1;    /* 100 Continue write in flight */
    unsigned had_request : 1;
    int in_parse;
    int err_status;            /* set by a parser callback that failed */
    const char *err_code, *err_msg;
    uint64_t t_begin, t_headers;   /* uv_now() ms: request started, headers done */
    uint64_t t_activity;           /* last read or write progress */
    uint64_t t_write;              /* last write progress (stall detection) */
    uint64_t t_linger;             /* lingering close began */
    struct sockaddr_storage peer;  /* client address (per-address cap) */
    int has_peer;
    char *saved;               /* unparsed input while paused */
    size_t saved_len, saved_cap;
    uv_write_t cont_wr;
    uv_shutdown_t shut;
    http_req *stream;          /* streamed response being written, owns the connection */
    size_t stream_queued;      /* its bytes handed to uv_write and not yet written */
};

typedef struct route {
    char *method, *path;
    int prefix;                /* matches every path that starts with path */
    http_handler_fn fn;
    void *ud;
    int always;                /* served on reserve connections too */
} route;

struct http_server {
    uv_loop_t *loop;
    http_config cfg;
    uv_tcp_t listener;
    int listening;
    int closing;
    int draining;              /* http_server_shutdown: no new requests, close when done */
    int grace_open;            /* grace timer initialised and not closed yet */
    uv_timer_t grace;          /* http_server_shutdown's deadline */
    int nhandles;              /* listener + connections not yet freed */
    uint32_t nlimited;         /* open reserve connections */
    uint32_t nactive;          /* connections neither reserve nor closing */
    int was_near;              /* near the cap at the last accept */
    void (*close_cb)(void *ud);
    void *close_ud;
    route *routes;
    size_t nroutes, croutes;
    int (*filter)(http_req *req, void *ud); /* runs before routing; nonzero: it answered */
    void *filter_ud;
    http_conn *conns;
    llhttp_settings_t settings;
    http_stats stats;
    uint64_t status_counts[600];
    char rbuf[65536];          /* shared read buffer: parsed synchronously in read_cb */
};

/* http_req.c */
http_req *req_new(http_conn *conn);
void req_free(http_req *req);
/* Finishes a detached request (frees it, or marks it if on the abort list). */
void req_release_detached(http_req *req);
/* Builds the response of req from the server itself (error or 404/405). */
int req_respond_internal(http_req *req, int status, const char *code, const char *msg,
                         const char *allow);

/* http_parse.c */
/* Fills the llhttp callbacks of the server's request parser. */
void http_parse_settings(llhttp_settings_t *st);

/* http.c */
/* Writes "100 Continue" if no earlier response is owed on conn. */
void conn_send_continue(http_conn *conn);
/* Called when req in conn's queue became READY: writes what is in order. */
void conn_flush(http_conn *conn);
/* Closes conn now, aborting pending requests (their on_abort run before return). */
void conn_close_hard(http_conn *conn);
/* Removes req from conn's queue (it must be there). */
void conn_unlink_req(http_conn *conn, http_req *req);
/* Frees the request being parsed (if any), releasing its body's accounting. */
void conn_drop_cur(http_conn *conn);
/* The request being parsed stops receiving (complete, or answered with an error):
 * its body no longer counts as arriving. */
void conn_cur_received(http_conn *conn, http_req *req);
/* Re-arms conn's timer from its state. */
void conn_arm(http_conn *conn);
/* Shuts the write side down and drains input for a while, then closes. */
void conn_begin_linger(http_conn *conn);

/* http_stream.c */
/* The head of streamed response req was written (status from uv_write): req
 * becomes conn->stream, or is detached/aborted when the connection is closing. */
void stream_head_written(http_req *req, int status);
/* conn is closing: detaches its stream (if any) onto *tail for the abort callbacks,
 * or frees it when its owner had already ended it. Returns the new tail. */
http_req **stream_detach(http_conn *conn, http_req **tail);

#endif
