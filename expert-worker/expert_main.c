/* expert_main.c -- ddm-expert: serve one expert's weights over nanomsg. */
#include <signal.h>
#include <stdio.h>

#include <uv.h>

#include "common/log.h"
#include "expert-worker/args.h"
#include "common/blas.h"
#include "expert-worker/worker.h"

int main(int argc, char **argv)
{
    log_set_name("ddm-expert");
    blas_select(&argc, argv); /* may re-execute with the kernels measured fastest here */
    expert_config cfg;
    char err[512];
    switch (expert_args_parse(argc, argv, &cfg, stdout, err, sizeof err)) {
    case EXPERT_ARGS_EXIT: return 0;
    case EXPERT_ARGS_USAGE:
        fprintf(stderr, "ddm-expert: %s\n", err);
        return 2;
    case EXPERT_ARGS_RUN: break;
    }
    signal(SIGPIPE, SIG_IGN);
    uv_loop_t *loop = uv_default_loop();
    expert_worker *w;
    if (expert_worker_new(loop, &cfg, &w, err, sizeof err) < 0) {
        fprintf(stderr, "ddm-expert: %s\n", err);
        uv_loop_close(loop);
        return 1;
    }
    uv_run(loop, UV_RUN_DEFAULT);
    expert_worker_free(w);
    int rc = uv_loop_close(loop);
    if (rc < 0)
        log_warn("event loop closed with handles open: %s", uv_strerror(rc));
    return 0;
}
