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
int cmd_judge(const train_cfg *c);
int cmd_all(const train_cfg *c, const char *self_exe);

/* Helpers shared by the commands. */

/* Adds the training metadata every weights file carries to w: architecture
 * (arch), config (the schedule in o), seed, steps, loss, command, for a
 * folder of PNGs data_background, and nkv extra pairs kv[2i] = kv[2i + 1].
 * Returns 0, DDM_EINVAL or DDM_ENOMEM. */
int train_meta(st_writer *w, const train_cfg *c, const char *arch, uint64_t seed,
               const train_opts *o, const train_result *res, const char *const *kv, int nkv);

/* Writes a network to path (stored as c->dtype) with model_write's metadata,
 * the image shape and class names (model_shape_write), plus architecture,
 * config, seed, steps, loss, command and nkv extra pairs
 * kv[2i] = kv[2i + 1] -- nothing that depends on the clock, so re-running the
 * command reproduces the file byte for byte. centroid [in_dim], when not NULL, is
 * added as the F32 tensor "centroid". The file appears atomically. Returns 0
 * or an error with a one-line message in err. */
int train_save(const train_cfg *c, const char *path, model_kind kind, const net_config *nc,
               const model_shape *shape, const float *params, int expert_id, uint64_t seed, const train_opts *o,
               const train_result *res, const float *centroid, const char *const *kv, int nkv,
               char *err, size_t errlen);

#endif
