#!/bin/sh
# fairness.sh -- `make bench-fairness`: the latency of a small request (1 image,
# 50 steps, top-2) while a maximal request runs, as a ratio to its idle latency,
# in one run; and the expert evaluations per second the cost cap is sized by.
set -eu
BUILD=${BUILD:-build/rel}
BIN=${BIN:-bin}
echo "## ddm-router: small-request latency under a maximal request ($(date -u +%Y-%m-%d), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores)"
echo "command: make bench-fairness  (fairness $*)"
echo
"$BUILD/bench/fairness" --bin "$BIN" "$@"
