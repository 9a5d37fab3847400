#!/bin/sh
# router.sh -- `make bench-router`: served vs in-process sampling throughput.
set -eu
BUILD=${BUILD:-build/rel}
BIN=${BIN:-bin}
echo "## ddm-router: served vs in-process ($(date -u +%Y-%m-%d), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores)"
echo "command: make bench-router  (router_bench --steps 50 --duration ${DURATION:-15})"
echo
"$BUILD/bench/router_bench" --bin "$BIN" --steps 50 --duration "${DURATION:-15}"
