/* cmds.h -- the ddm-train subcommands; each returns a process exit code
 * (0 success, 1 runtime error with a one-line message on stderr). */
#ifndef DDM_TRAIN_CMDS_H
#define DDM_TRAIN_CMDS_H

#include "common/model.h"
#include "tools/train/cfg.h"

int cmd_partition(const train_cfg *c);
int cmd_expert(const train_cfg *c);
int cmd_router(const train_cfg *c);
int cmd_monolith(const train_cfg *c);
int cmd_classifier(const train_cfg *c);
int cmd_verify(const train_cfg *c);
int cmd_all(const train_cfg *c, const char *self_exe);

/* Helpers shared by the commands. */

/* mkdir -p; returns 0 or -errno with a message. */
int train_mkdirs(const char *path, char *err, size_t errlen);

/* Writes a network to path (c->dtype) with model_write's metadata plus
 * architecture, config, seed, steps, loss, seconds, command and the extra
 * key/value pairs kv[0..2*nkv) (NULL-terminated pairs allowed to be 0).
 * centroid [dim] is added as tensor "centroid" when not NULL. Returns 0 or
 * an error with a message. */
int train_save(const train_cfg *c, const char *path, model_kind kind, const net_config *nc,
               const float *params, int expert_id, uint64_t seed, const train_opts *o,
               const train_result *res, const float *centroid, const char *const *kv, int nkv,
               char *err, size_t errlen);

#endif
