#!/bin/sh
# router_ab.sh -- `make bench-router_ab`: router (and worker) CPU per image of two
# variants, alternating rounds so that a shared machine's drift hits both alike.
#   default: the same ddm-router against 8 keyless and 8 keyed ddm-expert workers
#            (what --cluster-key-file costs end to end)
#   ROUTER_A=path ROUTER_B=path: two ddm-router binaries against the same keyless
#            workers (e.g. before/after a change: build the old one elsewhere)
# Environment: ROUNDS (default 5), DURATION (default 8s), STRATEGY (top-2),
# CLIENTS (32), MODELS (models/digits), BIN (bin). Workers on ipc:// in a temp
# dir; the router on a free port. Prints one line per round and the medians.
set -eu
BIN=${BIN:-bin}
MODELS=${MODELS:-models/digits}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8s}
STRATEGY=${STRATEGY:-top-2}
CLIENTS=${CLIENTS:-32}
[ -f "$MODELS/router.safetensors" ] || { echo "router_ab: $MODELS has no router.safetensors" >&2; exit 1; }
MODELS=$(cd "$MODELS" && pwd)
W=$(mktemp -d /tmp/ddm-router-ab-XXXXXX)
PIDS=""
cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT INT TERM
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$W/key"
chmod 600 "$W/key"

# start_workers NAME [key]: 8 workers on ipc://$W/NAME-<k>.ipc, a cluster file $W/NAME.conf
start_workers() {
    {
        echo "models $MODELS"
        for k in 0 1 2 3 4 5 6 7; do echo "expert $k ipc://$W/$1-$k.ipc"; done
        echo "set ticks 1"
        echo "set threads 2"
        [ $# -gt 1 ] && echo "set cluster-key-file $W/key"
    } >"$W/$1.conf"
    wp=""
    for k in 0 1 2 3 4 5 6 7; do
        "$BIN/ddm-expert" --weights "$MODELS/expert-$k.safetensors" --listen "ipc://$W/$1-$k.ipc" \
            --max-delay-us 0 ${2:+--cluster-key-file "$W/key"} >"$W/$1-w$k.log" 2>&1 &
        wp="$wp $!"
    done
    PIDS="$PIDS $wp"
    eval "WORKERS_$1=\"$wp\""
}

ticks() { t=0; for p in "$@"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done; echo "$t"; }

# round LABEL ROUTER CONF WORKERS: one measured bench; prints "LABEL images r_ms w_ms ips"
round() {
    "$2" --cluster "$3" --listen 127.0.0.1:0 >"$W/router.log" 2>&1 &
    rp=$!
    port=""
    for i in $(seq 100); do
        port=$(sed -n 's/.*listening on .* (port \([0-9]*\)).*/\1/p' "$W/router.log")
        [ -n "$port" ] && "$BIN/ddm-client" ready --url "http://127.0.0.1:$port" >/dev/null 2>&1 && break
        sleep 0.1
    done
    url="http://127.0.0.1:$port"
    "$BIN/ddm-client" bench --url "$url" -c "$CLIENTS" -d 2s -S "$STRATEGY" -q >/dev/null 2>&1 || true
    r0=$(ticks $rp); w0=$(ticks $4)
    out=$("$BIN/ddm-client" bench --url "$url" -c "$CLIENTS" -d "$DURATION" -S "$STRATEGY" -q --json 2>/dev/null || true)
    r1=$(ticks $rp); w1=$(ticks $4)
    kill "$rp"; wait "$rp" 2>/dev/null || true
    n=$(echo "$out" | sed -n 's/.*"ok":\([0-9]*\).*/\1/p')
    ips=$(echo "$out" | sed -n 's/.*"images_per_s":\([0-9.]*\).*/\1/p')
    hz=$(getconf CLK_TCK)
    awk -v l="$1" -v n="${n:-0}" -v r=$((r1 - r0)) -v w=$((w1 - w0)) -v hz="$hz" -v ips="${ips:-0}" \
        'BEGIN { if (n > 0) printf "%s %d %.3f %.3f %.1f\n", l, n, r / hz / n * 1000, w / hz / n * 1000, ips }'
}

echo "## router A/B ($(date -u +%Y-%m-%dT%H:%MZ), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
start_workers plain
if [ -n "${ROUTER_A:-}" ] && [ -n "${ROUTER_B:-}" ]; then
    A="A:$ROUTER_A"; B="B:$ROUTER_B"
    ra=$ROUTER_A; rb=$ROUTER_B; ca=$W/plain.conf; cb=$W/plain.conf
    wa=$WORKERS_plain; wb=$WORKERS_plain
else
    start_workers keyed key
    A="no-key"; B="cluster-key"
    ra=$BIN/ddm-router; rb=$BIN/ddm-router; ca=$W/plain.conf; cb=$W/keyed.conf
    wa=$WORKERS_plain; wb=$WORKERS_keyed
fi
sleep 1
echo "command: ROUNDS=$ROUNDS DURATION=$DURATION STRATEGY=$STRATEGY CLIENTS=$CLIENTS sh tools/bench/router_ab.sh"
echo
echo "| variant | images | router CPU ms/image | workers CPU ms/image | images/s |"
echo "|---|---:|---:|---:|---:|"
: >"$W/rows"
for i in $(seq "$ROUNDS"); do
    round "$A" "$ra" "$ca" "$wa" | tee -a "$W/rows" | awk '{ printf "| %s | %d | %.3f | %.3f | %.1f |\n", $1, $2, $3, $4, $5 }'
    round "$B" "$rb" "$cb" "$wb" | tee -a "$W/rows" | awk '{ printf "| %s | %d | %.3f | %.3f | %.1f |\n", $1, $2, $3, $4, $5 }'
done
echo
for v in "$A" "$B"; do
    for col in 3 4 5; do
        awk -v v="$v" -v c=$col '$1 == v { print $c }' "$W/rows" | sort -n |
            awk -v v="$v" -v c=$col '{ a[NR] = $1 } END { m = NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2;
                 name = c == 3 ? "router CPU ms/image" : c == 4 ? "workers CPU ms/image" : "images/s";
                 printf "median %s, %s: %.3f (%d rounds)\n", v, name, m, NR }'
    done
done
