/* shard.h -- the files that carry a partition of the training set.
 *
 * `ddm-train partition` writes into data/<set>/k<K>/:
 *   partition.safetensors  "centroids" F32 [K][D] (pixel-space cluster means),
 *                          "assign" I32 [N] (cluster of every training image),
 *                          "table" I32 [K][C] (cluster x class counts)
 *   shard-<k>.safetensors  "images" U8 [n][D], "labels" I32 [n], "index" I32 [n]
 *                          (position in the training split), "centroid" F32 [D]
 * with __metadata__ ddm.kind ("partition" / "shard"), dataset, num_experts,
 * cluster (shards), n, dim, n_classes, and the image shape keys of
 * common/model.h (height, width, channels, class_names; absent = 28x28x1). A shard holds only its own cluster's images, so
 * an expert given one shard file cannot see the others' data. Pixels are
 * stored as bytes b with x = b * (2 / 255) - 1, the loaders' own mapping, so
 * they round-trip exactly. */
#ifndef DDM_TRAIN_SHARD_H
#define DDM_TRAIN_SHARD_H

#include <stddef.h>

#include "common/model.h"

typedef struct shard {
    char dataset[32];
    int id;            /* cluster */
    int K;             /* clusters of the partition */
    int n, dim;
    int n_classes;     /* label classes of the dataset */
    char sha256[65];   /* of the shard file */
    float *x;          /* [n][dim] in [-1, 1] */
    int *y;            /* [n] class labels */
    int *index;        /* [n] positions in the training split */
    float *centroid;   /* [dim] */
    model_shape shape; /* image shape and class names (owned) */
} shard;

typedef struct partition {
    char dataset[32];
    int K, n, dim, n_classes;
    int *assign;       /* [n] */
    float *centroids;  /* [K][dim] */
    int *table;        /* [K][n_classes] */
} partition;

/* "<dir>/shard-<k>.safetensors" and "<dir>/partition.safetensors" into buf. */
void shard_path(char *buf, size_t len, const char *dir, int k);
void partition_path(char *buf, size_t len, const char *dir);

/* Writes the partition file and one shard file per cluster into dir (which
 * must exist). shape: the images' (height * width * channels = dim; its
 * names, if any, n_classes of them). x [n][dim] in [-1, 1], y [n] classes
 * 0..n_classes-1, assign [n] in 0..K-1, centroids [K][dim]. Returns 0 or an
 * error with a message. */
int shard_write_all(const char *dir, const char *dataset, const model_shape *shape, int n,
                    int dim, const float *x,
                    const int *y, int n_classes, const int *assign, int K,
                    const float *centroids, char *err, size_t errlen);

/* Reads one shard file (the only file it opens). Returns 0 and *out (free
 * with shard_free) or an error naming the file. */
int shard_read(const char *path, shard **out, char *err, size_t errlen);
void shard_free(shard *s);

/* Reads dir's partition file. Returns 0 and *out (partition_free) or an error. */
int partition_read(const char *dir, partition **out, char *err, size_t errlen);
void partition_free(partition *p);

#endif
