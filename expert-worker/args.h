/* args.h -- ddm-expert's command line (getopt_long) into an expert_config. */
#ifndef DDM_EXPERT_ARGS_H
#define DDM_EXPERT_ARGS_H

#include <stdio.h>

#include "expert-worker/worker.h"

typedef enum expert_args_result {
    EXPERT_ARGS_RUN = 0,    /* cfg is complete: serve */
    EXPERT_ARGS_EXIT = 1,   /* --help or --version was printed to out: exit 0 */
    EXPERT_ARGS_USAGE = 2,  /* bad command line, message in err: exit 2 */
} expert_args_result;

/* Parses argv into cfg (starting from expert_config_default) and sets the
 * log level from --log-level. String fields of cfg point into argv. */
expert_args_result expert_args_parse(int argc, char **argv, expert_config *cfg, FILE *out,
                                     char *err, size_t errlen);

/* Writes the --help text. */
void expert_args_usage(FILE *f);

#endif
