#!/bin/sh
# expert.sh -- ddm-expert benchmark (make bench-expert): sgemm peak, in-process
# forward, served throughput with 1/4/16 clients, round-trip latency.
# Prints Markdown (also saved to $BUILD/bench/expert.md) for docs/benchmarks.md.
set -eu
BUILD=${BUILD:-build/rel}
BIN=${BIN:-bin}
SECONDS_PER_RUN=${EXPERT_BENCH_SECONDS:-3}
out="$BUILD/bench/expert.md"
{
    echo "Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1)," \
         "$(nproc) CPUs online, $(uname -sr); load average at start:" \
         "$(cut -d' ' -f1-3 /proc/loadavg)."
    echo "Command: \`make bench-expert\` ($BUILD/bench/expert_bench --bin $BIN/ddm-expert" \
         "--seconds $SECONDS_PER_RUN), $(date -u +%Y-%m-%d)."
    echo
    "$BUILD/bench/expert_bench" --bin "$BIN/ddm-expert" --seconds "$SECONDS_PER_RUN"
    echo
    echo "### OpenBLAS kernel choice"
    echo
    echo "Single-thread sgemm GFLOP/s, wall best (per CPU-second in brackets). Debian's"
    echo "OpenBLAS 0.3.21 falls back to Prescott kernels on CPUs it does not know;"
    echo "ddm-expert re-executes itself with OPENBLAS_CORETYPE set (common/blas.h)."
    echo
    echo "| kernels | 256x384x784 | 1024^3 |"
    echo "|---|---|---|"
    OPENBLAS_CORETYPE=Prescott "$BUILD/bench/expert_bench" --gemm-only
    "$BUILD/bench/expert_bench" --gemm-only
} | tee "$out"
echo "(saved to $out)" >&2
