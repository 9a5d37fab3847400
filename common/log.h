/* log.h -- leveled, timestamped log lines on stderr.
 *
 * One line per call: "2026-11-26T10:00:00.123Z INFO  ddm-expert: message".
 * Thread-safe (one fprintf per line). The level and program name are global. */
#ifndef DDM_LOG_H
#define DDM_LOG_H

typedef enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_OFF } log_level;

/* Sets the program name shown in each line; the string must outlive logging. */
void log_set_name(const char *name);
void log_set_level(log_level level);
/* Parses "debug", "info", "warn", "error" or "off"; returns -1 if unknown. */
int log_parse_level(const char *s);
log_level log_get_level(void);

void log_msg(log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
