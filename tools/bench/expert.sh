#!/bin/sh
# expert.sh -- ddm-expert benchmark (make bench-expert): the OpenBLAS kernels and
# half_gemm crossover measured again and the table they are chosen from, the
# physical limits of one core (FMA peak, bandwidth), the forward as a share of
# them, half_gemm vs OpenBLAS per batch size, startup cost, served throughput
# with 1/4/16 clients, round-trip latency.
# Prints Markdown (also saved to $BUILD/bench/expert.md) for docs/benchmarks.md.
# EXPERT_BENCH_SECONDS (3) sets the served windows, EXPERT_BENCH_ROUNDS (15)
# the interleaved rounds of the kernel measurement.
set -eu
BUILD=${BUILD:-build/rel}
BIN=${BIN:-bin}
SECONDS_PER_RUN=${EXPERT_BENCH_SECONDS:-3}
ROUNDS=${EXPERT_BENCH_ROUNDS:-15}
out="$BUILD/bench/expert.md"
{
    echo "Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1)" \
         "(family $(lscpu | sed -n 's/^CPU family: *//p'), model $(lscpu | sed -n 's/^Model: *//p' | head -1))," \
         "$(nproc) CPUs online, $(uname -sr); load average at start:" \
         "$(cut -d' ' -f1-3 /proc/loadavg)."
    echo "Command: \`make bench-expert\` ($BUILD/bench/expert_bench --retune $ROUNDS, then" \
         "--bin $BIN/ddm-expert --seconds $SECONDS_PER_RUN), $(date -u '+%Y-%m-%d %H:%M UTC')."
    echo
    echo "### OpenBLAS kernels and the half_gemm crossover"
    echo
    "$BUILD/bench/expert_bench" --retune "$ROUNDS"
    echo
    "$BUILD/bench/expert_bench" --bin "$BIN/ddm-expert" --seconds "$SECONDS_PER_RUN"
    echo
    echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
} | tee "$out"
echo "(saved to $out)" >&2
