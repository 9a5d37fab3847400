#!/bin/sh
# hmac.sh -- `make bench-hmac`: what the cluster key (--cluster-key-file: an
# HMAC-SHA256 on every router <-> worker message) costs per tick, with the CPU's
# SHA extensions and with the portable code, for a 32-image top-2 tick and a
# 32-image full tick (8 of 8 experts) of the digits model, and per 50-step image.
set -eu
BUILD=${BUILD:-build/rel}
echo "## HMAC cost per tick ($(date -u +%Y-%m-%d), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores)"
echo "command: make bench-hmac  (hmac_bench --images 32 --k 2, then --k 8)"
for k in 2 8; do
    echo
    "$BUILD/bench/hmac_bench" --images 32 --k "$k" --experts 8 --dim 784 --steps 50
done
