#!/bin/sh
# spec.sh -- `make bench-spec`: speculative dispatch end to end on real binaries
# on loopback: how often top-2's selected experts change between steps
# (in-process, per band of t), then single-image served latency against
# in-process with speculation and inline planning off and on (p50, p99, the
# per-step split, the wasted expert rows), then images/s at 32 clients with
# speculation off and on; then load-aware substitution with every expert up,
# the busiest one stopped, then killed. About 3 minutes. SPEC_ARGS go to the
# latency part (spec_bench --help).
set -eu
BUILD=${BUILD:-build/rel}
BIN=${BIN:-bin}
SPEC_ARGS=${SPEC_ARGS:-}
echo "## speculative dispatch ($(date -u '+%Y-%m-%d %H:%M UTC'), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg))"
echo "command: make bench-spec  (spec_bench --switches --images 512; spec_bench --bin $BIN $SPEC_ARGS; spec_bench --substitution --clients 4 --seconds 5)"
echo
"$BUILD/bench/spec_bench" --switches --images 512
# shellcheck disable=SC2086
"$BUILD/bench/spec_bench" --bin "$BIN" $SPEC_ARGS
"$BUILD/bench/spec_bench" --bin "$BIN" --substitution --clients 4 --seconds 5
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
