/* pipeline.c -- ddm-train all: the whole pipeline for one dataset.
 *
 * Every step runs as a child process `ddm-train <step> ...` (this binary,
 * re-executed) with its full command line spelled out by cfg_argv(), so each
 * expert trains in a process of its own that reads only its shard file --
 * exactly what another machine would do. Jobs are scheduled on --jobs cores:
 * experts, router, classifier and conv judge with one OpenBLAS thread each (two at a time
 * on two cores), the monolith last with all cores. A step whose output
 * already exists and loads is skipped (restart after an interruption), unless
 * --force or a new partition invalidates it. At the end `verify` measures
 * the set and MANIFEST lists every weights file, its sha256 and the command
 * that wrote it (read back from the file's own metadata). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/fsutil.h"
#include "common/model.h"
#include "tools/train/cmds.h"
#include "tools/train/conv.h"
#include "tools/train/shard.h"

#define MAX_JOBS 80

typedef struct job {
    char name[32];     /* "expert 3", "router", ... */
    char step[16];     /* subcommand */
    int shard;
    int threads;
    char output[CFG_PATH + 64];
    pid_t pid;
    double t0, secs;
    int state;         /* 0 pending, 1 running, 2 done, 3 failed, 4 skipped */
} job;

static int file_exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* A weights file that exists and loads (an MLP of common/model.h or the conv judge). */
static int weights_ok(const char *p)
{
    char err[256];
    if (!file_exists(p))
        return 0;
    if (conv_is_judge_file(p)) {
        conv_model *j = conv_open(p, err, sizeof err);
        conv_close(j);
        return j != NULL;
    }
    model *m = model_open(p, err, sizeof err);
    model_close(m);
    return m != NULL;
}

static pid_t spawn(const train_cfg *c, const char *self, const char *step, int shard,
                   int threads)
{
    train_cfg cc = *c;
    cc.threads = threads;
    cc.force = 0;
    static char store[16384];
    char *argv[CFG_MAX_ARGS + 2];
    argv[0] = "ddm-train";
    int argc = cfg_argv(&cc, step, shard, argv + 1, store, sizeof store);
    if (argc < 0) {
        fprintf(stderr, "ddm-train: all: command line of %s too long\n", step);
        return -1;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        execv(self, argv);
        fprintf(stderr, "ddm-train: cannot run %s: %s\n", self, strerror(errno));
        _exit(127);
    }
    if (pid < 0)
        fprintf(stderr, "ddm-train: all: fork failed: %s\n", strerror(errno));
    return pid;
}

/* Runs one step to completion; returns its exit status (0 ok). */
static int run_one(const train_cfg *c, const char *self, const char *step, int threads,
                   double *secs)
{
    double t0 = fit_now();
    pid_t pid = spawn(c, self, step, -1, threads);
    int status = 0;
    if (pid < 0)
        return 1;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    *secs = fit_now() - t0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

static int run_jobs(const train_cfg *c, const char *self, job *jobs, int n)
{
    int used = 0, failed = 0, running = 0;
    for (;;) {
        /* launch whatever fits, in order */
        for (int i = 0; i < n && !failed; i++) {
            job *j = &jobs[i];
            if (j->state != 0)
                continue;
            if (used + j->threads > c->jobs && running > 0)
                break; /* keep order: wait for room */
            j->pid = spawn(c, self, j->step, j->shard, j->threads);
            if (j->pid < 0) {
                j->state = 3;
                failed = 1;
                break;
            }
            j->state = 1;
            j->t0 = fit_now();
            used += j->threads;
            running++;
            fprintf(stderr, "all: started %s (pid %d, %d thread%s)\n", j->name, (int)j->pid,
                    j->threads, j->threads > 1 ? "s" : "");
        }
        if (running == 0)
            break;
        int status = 0;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "ddm-train: all: waitpid: %s\n", strerror(errno));
            return 1;
        }
        for (int i = 0; i < n; i++) {
            job *j = &jobs[i];
            if (j->state != 1 || j->pid != pid)
                continue;
            j->secs = fit_now() - j->t0;
            used -= j->threads;
            running--;
            if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
                j->state = 2;
                fprintf(stderr, "all: %s done in %.1f s\n", j->name, j->secs);
            } else {
                j->state = 3;
                failed = 1;
                fprintf(stderr, "ddm-train: all: %s failed (%s %d); fix it and re-run: finished "
                        "steps are kept\n", j->name,
                        WIFEXITED(status) ? "exit" : "signal",
                        WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
            }
        }
    }
    return failed;
}

static int write_manifest(const train_cfg *c, const job *jobs, int n)
{
    char path[CFG_PATH + 64], tmp[CFG_PATH + 80], err[512];
    snprintf(path, sizeof path, "%s/MANIFEST", c->out);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        fprintf(stderr, "ddm-train: cannot write %s: %s\n", tmp, strerror(errno));
        return 1;
    }
    fprintf(f, "# ddm weights: dataset %s, K = %d experts, router, monolith, classifier, "
            "conv judge.\n",
            c->dataset, c->K);
    char store[4096], *argv[CFG_MAX_ARGS];
    int argc = cfg_argv(c, "partition", -1, argv, store, sizeof store);
    fprintf(f, "# Produced by `%s`, which partitioned the data with `ddm-train", c->command);
    for (int i = 0; i < argc; i++)
        fprintf(f, " %s", argv[i]);
    fprintf(f, "`.\n");
    fprintf(f, "# One line per file: <file> <sha256> <the command that wrote it>\n");
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        st_file *m = weights_ok(jobs[i].output) ? st_open(jobs[i].output, err, sizeof err)
                                                : NULL;
        if (!m) {
            fprintf(stderr, "ddm-train: %s does not load; re-run its step\n", jobs[i].output);
            rc = 1;
            break;
        }
        const char *cmd = st_meta(m, "command");
        const char *base = strrchr(jobs[i].output, '/');
        fprintf(f, "%s %s %s\n", base ? base + 1 : jobs[i].output, st_sha256(m),
                cmd ? cmd : "(unknown)");
        st_close(m);
    }
    if (fclose(f) != 0 && !rc) {
        fprintf(stderr, "ddm-train: cannot write %s: %s\n", tmp, strerror(errno));
        rc = 1;
    }
    if (!rc && rename(tmp, path) != 0) {
        fprintf(stderr, "ddm-train: cannot rename %s: %s\n", tmp, strerror(errno));
        rc = 1;
    }
    if (rc)
        unlink(tmp);
    else
        printf("all: wrote %s\n", path);
    return rc;
}

int cmd_all(const train_cfg *c, const char *self)
{
    char err[4096], ppath[CFG_PATH + 64];
    double t_all = fit_now();
    if (fs_mkdirs(c->out, err, sizeof err)) {
        fprintf(stderr, "ddm-train: %s\n", err);
        return 1;
    }
    if (c->K + 4 > MAX_JOBS) {
        fprintf(stderr, "ddm-train: all: at most %d experts\n", MAX_JOBS - 4);
        return 1;
    }
    /* 1. partition, unless a matching one exists */
    partition_path(ppath, sizeof ppath, c->shards);
    partition *p = NULL;
    int fresh = c->force;
    if (!c->force && partition_read(c->shards, &p, err, sizeof err) == 0 && p->K == c->K) {
        printf("all: partition %s exists (K = %d); kept\n", ppath, p->K);
    } else {
        double secs = 0.0;
        fresh = 1;
        if (run_one(c, self, "partition", c->jobs, &secs) != 0) {
            partition_free(p);
            fprintf(stderr, "ddm-train: all: partition failed\n");
            return 1;
        }
        printf("all: partition done in %.1f s\n", secs);
    }
    partition_free(p);

    /* 2. experts, router, classifier (one thread each), monolith (all cores) */
    static job jobs[MAX_JOBS];
    int n = 0;
    for (int k = 0; k < c->K; k++) {
        job *j = &jobs[n++];
        memset(j, 0, sizeof *j);
        snprintf(j->name, sizeof j->name, "expert %d", k);
        snprintf(j->step, sizeof j->step, "expert");
        snprintf(j->output, sizeof j->output, "%s/expert-%d.safetensors", c->out, k);
        j->shard = k;
        j->threads = 1;
    }
    const char *singles[] = { "router", "classifier", "judge", "monolith" };
    const char *files[] = { "router", "classifier", "judge-conv", "monolith" };
    for (int i = 0; i < 4; i++) {
        job *j = &jobs[n++];
        memset(j, 0, sizeof *j);
        snprintf(j->name, sizeof j->name, "%s", singles[i]);
        snprintf(j->step, sizeof j->step, "%s", singles[i]);
        snprintf(j->output, sizeof j->output, "%s/%s.safetensors", c->out, files[i]);
        j->shard = -1;
        j->threads = strcmp(singles[i], "monolith") == 0 ? c->jobs : 1;
    }
    for (int i = 0; i < n; i++) {
        /* the judges do not depend on the partition */
        int redo = fresh && strcmp(jobs[i].step, "classifier") != 0 &&
                   strcmp(jobs[i].step, "judge") != 0;
        if (!c->force && !redo && weights_ok(jobs[i].output)) {
            jobs[i].state = 4;
            printf("all: %s exists; kept (--force redoes it)\n", jobs[i].output);
        }
    }
    if (run_jobs(c, self, jobs, n))
        return 1;

    /* 3. verify (writes the sample grids when --grids is set), 4. MANIFEST */
    double vsecs = 0.0;
    if (run_one(c, self, "verify", c->jobs, &vsecs) != 0) {
        fprintf(stderr, "ddm-train: all: verify failed\n");
        return 1;
    }
    if (write_manifest(c, jobs, n))
        return 1;
    printf("all: times (s):");
    for (int i = 0; i < n; i++)
        if (jobs[i].state == 2)
            printf(" %s %.0f;", jobs[i].name, jobs[i].secs);
    printf(" verify %.0f; total %.0f\n", vsecs, fit_now() - t_all);
    return 0;
}
