/* proc.h -- child processes for end-to-end tests: the real binaries, started
 * the way a user starts them, with their output in a log file. */
#ifndef DDM_TEST_PROC_H
#define DDM_TEST_PROC_H

#include <sys/types.h>

/* Path of binary name ("ddm-router") under $DDM_BIN_DIR (default ./bin). */
const char *proc_bin(const char *name, char *buf, size_t len);

/* Starts argv (argv[0] = path) with stdout and stderr appended to log
 * (NULL: /dev/null). Returns the pid or -1. */
pid_t proc_start(char *const argv[], const char *log);

/* Sends sig and waits up to timeout_ms for the exit; then SIGKILLs.
 * Returns the exit status as from waitpid (or -1). */
int proc_stop(pid_t pid, int sig, int timeout_ms);

/* Waits up to timeout_ms for pid to exit by itself; returns the waitpid
 * status, or -1 on timeout (the process keeps running). */
int proc_wait(pid_t pid, int timeout_ms);

/* Polls http://127.0.0.1:port path until it answers want_status or
 * timeout_ms passes. Returns 0 on success, -1 on timeout. */
int proc_wait_http(int port, const char *path, int want_status, int timeout_ms);

/* A TCP port that was free a moment ago (bind to port 0 and close). */
int proc_free_port(void);

/* Reads /proc/pid/stat into buf and returns the fields after the command
 * name (" S ppid pgrp ..."; the name may hold spaces and parentheses), or
 * NULL when the process is gone or the line is cut. */
const char *proc_stat(pid_t pid, char *buf, size_t len);

/* CPU seconds (user + system, all threads) a live process has used, from
 * /proc/<pid>/stat; NAN if it cannot be read. */
double proc_cpu_seconds(pid_t pid);

/* Seconds on the monotonic clock (for intervals). */
double proc_now_s(void);

/* CPU seconds this process has used, all its threads (getrusage). */
double proc_self_cpu_seconds(void);

/* Runs the shell command made from fmt (sh -c, stdout and stderr together)
 * and returns its output, malloc'd and NUL-terminated (caller frees), or
 * NULL if it could not run; *status is its exit status 0..255, or -1. */
char *proc_sh(int *status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints the last lines of a log file to stderr (for failing tests). */
void proc_dump_log(const char *log);

#endif
