/* hmac_bench_main.c -- what the cluster key (HMAC-SHA256 on every router <->
 * worker message) costs per tick, on this CPU, with the SHA extensions and
 * with the portable code.
 *
 * A tick of `images` single-image trajectories under top-k routing sends
 * images * k rows, spread over `experts` experts: one request and one reply
 * per expert, each about rows/experts * dim * 4 bytes. Per message the
 * router MACs the request and checks the reply's MAC, and the worker checks
 * the request's and MACs its reply: four HMACs over the message sizes per
 * expert and tick, two on each side. Prints a markdown table: microseconds of
 * CPU per tick (router side, worker side summed over the experts), per image
 * of `steps` steps (one tick per step: an image rides in `steps` ticks), and
 * the hashing speed. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/hmac.h"
#include "common/sha256.h"
#include "tests/support/proc.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: hmac_bench [--images 32] [--k 2] [--experts 8] [--dim 784] "
               "[--steps 50] [--seconds 2]\n");
}

int main(int argc, char **argv)
{
    int images = 32, k = 2, experts = 8, dim = 784, steps = 50;
    double seconds = 2;
    static const struct option opts[] = {
        { "images", required_argument, 0, 'n' }, { "k", required_argument, 0, 'k' },
        { "experts", required_argument, 0, 'e' }, { "dim", required_argument, 0, 'd' },
        { "seconds", required_argument, 0, 's' }, { "steps", required_argument, 0, 't' },
        { "help", no_argument, 0, 'h' },
        { 0, 0, 0, 0 },
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'n': images = atoi(optarg); break;
        case 'k': k = atoi(optarg); break;
        case 'e': experts = atoi(optarg); break;
        case 'd': dim = atoi(optarg); break;
        case 's': seconds = atof(optarg); break;
        case 't': steps = atoi(optarg); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (images < 1 || k < 1 || experts < 1 || dim < 1 || steps < 1 || seconds <= 0) {
        usage(stderr);
        return 2;
    }
    int rows = (images * k + experts - 1) / experts; /* per expert and tick */
    /* a request: x, per-row t and label, a few scalars; a reply: v and scalars */
    size_t req = (size_t)rows * (size_t)dim * 4 + (size_t)rows * 6 + 32;
    size_t rep = (size_t)rows * (size_t)dim * 4 + 24;
    uint8_t *buf = malloc(req + HMAC_TRAILER_SIZE);
    if (!buf)
        return 1;
    for (size_t i = 0; i < req; i++)
        buf[i] = (uint8_t)(i * 2654435761u >> 24);
    hmac_key key;
    hmac_key_set(&key, "a cluster key of thirty-two bytes", 33);
    printf("### HMAC-SHA256 per tick: %d images, %d of %d experts each (%d rows of dim %d per "
           "expert), %zu-byte requests, %zu-byte replies\n\n", images, k, experts, rows, dim,
           req, rep);
    printf("| sha256 code | MB/s | router us/tick | workers us/tick | both us/tick | router "
           "us/image (%d steps) | workers us/image |\n", steps);
    printf("|---|---:|---:|---:|---:|---:|---:|\n");
    for (int hw = 1; hw >= 0; hw--) {
        if (hw && !sha256_hw_available())
            continue;
        sha256_use_hw(hw);
        uint8_t t[HMAC_TRAILER_SIZE], mac[HMAC_SIZE];
        long ticks = 0;
        double c0 = proc_self_cpu_seconds(), w0 = proc_now_s();
        while (proc_now_s() - w0 < seconds) {
            for (int e = 0; e < experts; e++) {
                hmac_trailer_req(&key, buf, req, t);                /* router: request */
                memcpy(mac, t + 2, HMAC_SIZE);
                hmac_trailer_rep(&key, mac, buf, rep, t);           /* router: check reply */
            }
            ticks++;
        }
        double cpu = proc_self_cpu_seconds() - c0;
        double side = cpu / (double)ticks * 1e6; /* the worker side does the same work */
        double mbps = (double)ticks * (double)experts * (double)(req + rep) / cpu / 1e6;
        double per_image = side * steps / images;
        printf("| %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n",
               hw ? "SHA-NI" : "portable C", mbps, side, side, 2 * side, per_image, per_image);
    }
    sha256_use_hw(1);
    free(buf);
    return 0;
}
