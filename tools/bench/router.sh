#!/bin/sh
# router.sh -- `make bench-router`: served vs in-process sampling throughput,
# with single-image requests and with 4 images per request (4x the latents in
# flight at the same client count).
set -eu
BUILD=${BUILD:-build/rel}
BIN=${BIN:-bin}
DURATION=${DURATION:-15}
echo "## ddm-router: served vs in-process ($(date -u +%Y-%m-%d), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores)"
echo "command: make bench-router  (router_bench --steps 50 --duration $DURATION --images 1, then --images 4)"
for images in 1 4; do
    echo
    "$BUILD/bench/router_bench" --bin "$BIN" --steps 50 --duration "$DURATION" --images "$images"
done
