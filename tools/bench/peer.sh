#!/bin/sh
# peer.sh -- `make bench-peer`: ddm against a PyTorch peer, side by side
# (tools/bench/peer_bench_main.c runs tools/bench/torch_peer.py, ddm in-process
# and a served cluster on loopback; top-2 and full, 1 image and 32 in flight).
# PEER_ROUNDS (5) and PEER_SECONDS (4) set the rounds and the seconds each
# system is measured per round and load point. Prints Markdown for
# docs/benchmarks.md (also saved to $BUILD/bench/peer.md). About 10 minutes.
set -eu
BUILD=${BUILD:-build/rel}
BIN=${BIN:-bin}
ROUNDS=${PEER_ROUNDS:-5}
SECS=${PEER_SECONDS:-4}
out="$BUILD/bench/peer.md"
rm -f "$out.failed"
if ! /usr/bin/python3 -c 'import torch' 2>/dev/null; then
    echo "bench-peer: Debian's python3-torch is missing (make deps installs it)" >&2
    exit 1
fi
{
    echo "Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1)" \
         "(family $(lscpu | sed -n 's/^CPU family: *//p'), model $(lscpu | sed -n 's/^Model: *//p' | head -1))," \
         "$(nproc) CPUs online, $(uname -sr); PyTorch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)')" \
         "(Debian python3-torch); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo "Command: \`make bench-peer\` ($BUILD/bench/peer_bench --bin $BIN --rounds $ROUNDS" \
         "--seconds $SECS), $(date -u '+%Y-%m-%d %H:%M UTC')."
    echo
    "$BUILD/bench/peer_bench" --bin "$BIN" --rounds "$ROUNDS" --seconds "$SECS" || touch "$out.failed"
    echo
    echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
} | tee "$out"
if [ -e "$out.failed" ]; then
    rm -f "$out.failed"
    echo "bench-peer: peer_bench failed (above)" >&2
    exit 1
fi
echo "(saved to $out)" >&2
