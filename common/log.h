/* log.h -- leveled, timestamped log lines on stderr, and rate-limited warnings.
 *
 * One line per call: "2026-11-26T10:00:00.123Z INFO  ddm-expert: message".
 * Thread-safe (one fprintf per line). The level and program name are global.
 *
 * Rate limits: a message that a peer can trigger at will (a bad request, a bad
 * reply) goes through a log_limit, so a flood cannot fill the disk. Each
 * limiter prints the first `burst` lines of a window (default 10 per second);
 * the rest are only counted, and once the window has ended one summary line
 * says how many were left out: "... suppressed 9300 similar messages in the
 * last 1.0 s (first: ...)". The summary is printed by the next message through
 * the same limiter, by log_limit_flush() on it, or, for call-site limiters,
 * by log_flush_suppressed(): daemons call that from a timer or their loop, so
 * a flood that stops is still reported. */
#ifndef DDM_LOG_H
#define DDM_LOG_H

#include <stdarg.h>
#include <stdint.h>

typedef enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_OFF } log_level;

/* Sets the program name shown in each line; the string must outlive logging. */
void log_set_name(const char *name);
void log_set_level(log_level level);
/* Parses "debug", "info", "warn", "error" or "off"; returns -1 if unknown. */
int log_parse_level(const char *s);
log_level log_get_level(void);

void log_msg(log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vmsg(log_level level, const char *fmt, va_list ap);

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#define LOG_LIMIT_BURST 10        /* lines per window by default */
#define LOG_LIMIT_WINDOW_MS 1000  /* window length by default */

/* One rate limiter. A zero-initialised static one (what log_warn_limited
 * declares per call site) registers itself on first use so that
 * log_flush_suppressed() reports it; one embedded in an object (one per
 * key, e.g. per replica) is set up with log_limit_init and is never
 * registered: its owner calls log_limit_flush before freeing it. The fields
 * are private. */
typedef struct log_limit {
    int burst;                 /* lines per window (0: LOG_LIMIT_BURST) */
    uint32_t window_ms;        /* 0: LOG_LIMIT_WINDOW_MS */
    int keyed;                 /* set by log_limit_init: never registered */
    int registered;
    uint64_t start_ns;         /* window start (monotonic), 0 = no window open */
    unsigned printed;          /* lines printed in this window */
    unsigned long long suppressed;
    log_level level;           /* of the first suppressed line */
    char first[120];           /* start of the first suppressed line */
    struct log_limit *next;    /* registry of call-site limiters */
} log_limit;

/* Prepares an embedded limiter: burst lines per window_ms (0 = defaults). */
void log_limit_init(log_limit *l, int burst, uint32_t window_ms);

/* Logs through l: printed if l's window still has room, else counted. When
 * a new window starts and lines were suppressed in the last one, their
 * summary line comes first. Thread-safe. */
void log_limited(log_limit *l, log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prints l's summary line now if its window has ended and lines were
 * suppressed in it (force: even if the window is still open). */
void log_limit_flush(log_limit *l, int force);

/* log_limit_flush(l, 0) for every registered (call-site) limiter; cheap
 * (one atomic read) when nothing is pending. */
void log_flush_suppressed(void);

/* A per-call-site limiter around log_msg. */
#define log_limited_site(level, ...)                                                     \
    do {                                                                                 \
        static log_limit log_site_limit_;                                                \
        log_limited(&log_site_limit_, (level), __VA_ARGS__);                             \
    } while (0)
#define log_warn_limited(...)  log_limited_site(LOG_WARN, __VA_ARGS__)
#define log_error_limited(...) log_limited_site(LOG_ERROR, __VA_ARGS__)

#endif
