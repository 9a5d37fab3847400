/* log.c -- leveled, timestamped log lines on stderr. */
#include "common/log.h"

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

void log_msg(log_level level, const char *fmt, ...)
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
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof line)
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", line);
}
