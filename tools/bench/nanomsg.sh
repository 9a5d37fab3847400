#!/bin/sh
# nanomsg.sh -- `make bench-nanomsg`: what nanomsg itself costs per tick of
# ddm-router's fan-out (8 messages out, 8 replies), with no ddm code, on ipc://
# and on tcp:// loopback.
set -eu
BUILD=${BUILD:-build/rel}
echo "## nanomsg fan-out floor ($(date -u +%Y-%m-%d), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores)"
echo "command: make bench-nanomsg  (nanomsg_bench --transport ipc, then tcp)"
for transport in ipc tcp; do
    echo
    "$BUILD/bench/nanomsg_bench" --transport "$transport"
done
