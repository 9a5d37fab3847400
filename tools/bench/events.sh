#!/bin/sh
# events.sh -- `make bench-events`: what streamed progress events (no previews)
# cost the served images/s of the digits cluster: alternating rounds with and
# without Accept: text/event-stream on POST /v1/samples, medians.
set -eu
BUILD=${BUILD:-build/rel}
BIN=${BIN:-bin}
echo "## events cost ($(date -u +%Y-%m-%d), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores)"
echo "command: make bench-events  (events_bench --clients 32 --rounds ${ROUNDS:-5} --seconds ${SECONDS_PER_ROUND:-6})"
DDM_BIN_DIR=$BIN "$BUILD/bench/events_bench" --clients 32 --rounds "${ROUNDS:-5}" --seconds "${SECONDS_PER_ROUND:-6}"
