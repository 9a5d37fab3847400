/* log.c -- leveled, timestamped log lines on stderr, and rate limiters.
 *
 * The limiters share one mutex: they are only touched on the paths that
 * log, never per message served. */
#include "common/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const char *log_name = "ddm";
static log_level log_current = LOG_INFO;

void log_set_name(const char *name) { log_name = name; }
void log_set_level(log_level level) { log_current = level; }
log_level log_get_level(void) { return log_current; }

int log_parse_level(const char *s)
{
    static const char *names[] = { "debug", "info", "warn", "error", "off" };
    for (int i = 0; i < 5; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

void log_vmsg(log_level level, const char *fmt, va_list ap)
{
    static const char *tags[] = { "DEBUG", "INFO ", "WARN ", "ERROR" };
    if (level < log_current || level >= LOG_OFF)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char line[1024];
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, tags[level], log_name);
    if (n > 0 && (size_t)n < sizeof line)
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    fprintf(stderr, "%s\n", line);
}

void log_msg(log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, fmt, ap);
    va_end(ap);
}

/* ---- rate limits ------------------------------------------------------------------ */

static pthread_mutex_t limit_mu = PTHREAD_MUTEX_INITIALIZER;
static log_limit *limit_sites;  /* registered call-site limiters */
static int limit_pending;       /* limiters holding suppressed lines (atomic reads) */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t window_ns(const log_limit *l)
{
    return (uint64_t)(l->window_ms ? l->window_ms : LOG_LIMIT_WINDOW_MS) * 1000000u;
}

void log_limit_init(log_limit *l, int burst, uint32_t window_ms)
{
    memset(l, 0, sizeof *l);
    l->burst = burst;
    l->window_ms = window_ms;
    l->keyed = 1;
}

/* Takes l's summary (under limit_mu) into buf if there is one; closes the
 * window. Returns the level to print it at, or LOG_OFF for none. */
static log_level take_summary(log_limit *l, uint64_t now, char *buf, size_t len)
{
    log_level lv = LOG_OFF;
    if (l->suppressed > 0) {
        double secs = (double)(now - l->start_ns) / 1e9;
        snprintf(buf, len, "suppressed %llu similar message%s in the last %.1f s (first: %s)",
                 l->suppressed, l->suppressed == 1 ? "" : "s", secs, l->first);
        lv = l->level;
        __atomic_fetch_sub(&limit_pending, 1, __ATOMIC_RELAXED);
    }
    l->suppressed = 0;
    l->printed = 0;
    l->start_ns = 0;
    return lv;
}

void log_limited(log_limit *l, log_level level, const char *fmt, ...)
{
    if (level < log_current || level >= LOG_OFF)
        return;
    uint64_t now = now_ns();
    char summary[256];
    log_level slv = LOG_OFF;
    int print, first_suppressed = 0;
    pthread_mutex_lock(&limit_mu);
    if (!l->keyed && !l->registered) {
        l->registered = 1;
        l->next = limit_sites;
        limit_sites = l;
    }
    if (l->start_ns && now - l->start_ns >= window_ns(l))
        slv = take_summary(l, now, summary, sizeof summary);
    if (!l->start_ns)
        l->start_ns = now;
    unsigned burst = (unsigned)(l->burst > 0 ? l->burst : LOG_LIMIT_BURST);
    print = l->printed < burst;
    if (print) {
        l->printed++;
    } else if (l->suppressed++ == 0) {
        first_suppressed = 1;
        l->level = level;
        __atomic_fetch_add(&limit_pending, 1, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&limit_mu);
    if (slv != LOG_OFF)
        log_msg(slv, "%s", summary);
    va_list ap;
    va_start(ap, fmt);
    if (print) {
        log_vmsg(level, fmt, ap);
    } else if (first_suppressed) {
        char first[sizeof l->first];
        vsnprintf(first, sizeof first, fmt, ap);
        pthread_mutex_lock(&limit_mu);
        memcpy(l->first, first, sizeof first);
        pthread_mutex_unlock(&limit_mu);
    }
    va_end(ap);
}

void log_limit_flush(log_limit *l, int force)
{
    if (!__atomic_load_n(&limit_pending, __ATOMIC_RELAXED))
        return;
    uint64_t now = now_ns();
    char summary[256];
    log_level lv = LOG_OFF;
    pthread_mutex_lock(&limit_mu);
    if (l->suppressed && (force || now - l->start_ns >= window_ns(l)))
        lv = take_summary(l, now, summary, sizeof summary);
    pthread_mutex_unlock(&limit_mu);
    if (lv != LOG_OFF)
        log_msg(lv, "%s", summary);
}

void log_flush_suppressed(void)
{
    if (!__atomic_load_n(&limit_pending, __ATOMIC_RELAXED))
        return;
    uint64_t now = now_ns();
    for (;;) {
        char summary[256];
        log_level lv = LOG_OFF;
        pthread_mutex_lock(&limit_mu);
        for (log_limit *l = limit_sites; l && lv == LOG_OFF; l = l->next)
            if (l->suppressed && now - l->start_ns >= window_ns(l))
                lv = take_summary(l, now, summary, sizeof summary);
        pthread_mutex_unlock(&limit_mu);
        if (lv == LOG_OFF)
            return;
        log_msg(lv, "%s", summary);
    }
}
