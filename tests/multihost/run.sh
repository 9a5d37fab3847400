#!/bin/bash
# run.sh -- multi-host test of ddm: three "hosts" made of network namespaces on
# one machine, expert workers on two of them (every expert on both: replicas),
# ddm-router on the third; checks that samples come back, that cutting one
# expert host under load costs no request, and that the host is used again
# once its link is back.
#
#   tests/multihost/run.sh --models DIR [--bin DIR] [--out DIR] [--keep]
#
# Needs root (ip netns), iproute2 and curl; jq for the /v1/experts checks.
# Topology (all of it inside namespaces this script creates; the machine's own
# network is never touched):
#
#   ns ddm<tag>a (host-a 10.231.0.1) --veth--+
#   ns ddm<tag>b (host-b 10.231.0.2) --veth--+-- bridge in ns ddm<tag>sw
#   ns ddm<tag>c (host-c 10.231.0.3) --veth--+
#
# Host names resolve through /etc/netns/<ns>/hosts (ip netns exec bind-mounts
# it over /etc/hosts), so the cluster file names hosts, as it would on a LAN.
# Everything is removed by an EXIT trap, on success and on failure alike; the
# whole run is bounded by a watchdog (DDM_MULTIHOST_TIMEOUT, default 110 s).
# Exit 0 = all checks passed, 1 = a check failed, 2 = usage, 77 = cannot run
# here (not root, tool missing). With --out DIR the sample responses are kept
# for the caller to compare against in-process sampling (tests/test_deploy.c).
set -u

usage() { echo "usage: tests/multihost/run.sh --models DIR [--bin DIR] [--out DIR] [--keep]" >&2; exit 2; }
MODELS="" BIN="${DDM_BIN_DIR:-bin}" OUT="" KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --models) MODELS=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage ;;
        *) echo "run.sh: unknown argument $1" >&2; usage ;;
    esac
done
[ -n "$MODELS" ] || usage
skip() { echo "SKIP: $*" >&2; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "multi-host test needs root (network namespaces); run as root"
for t in ip curl jq timeout; do
    command -v $t >/dev/null || skip "multi-host test needs $t (apt-get install iproute2 curl jq coreutils)"
done
MODELS=$(cd "$MODELS" && pwd) || exit 2
BIN=$(cd "$BIN" && pwd) || exit 2
for b in ddm-router ddm-expert; do
    [ -x "$BIN/$b" ] || { echo "run.sh: $BIN/$b missing: run make first" >&2; exit 2; }
done
K=$(ls "$MODELS"/expert-*.safetensors 2>/dev/null | wc -l)
[ "$K" -ge 1 ] && [ -f "$MODELS/router.safetensors" ] ||
    { echo "run.sh: $MODELS has no router.safetensors + expert-N.safetensors" >&2; exit 2; }

TAG=$(printf '%04x' $(($$ % 65536)))
NS_SW=ddm${TAG}sw NS_A=ddm${TAG}a NS_B=ddm${TAG}b NS_C=ddm${TAG}c
NET=10.231.0
WORK=$(mktemp -d /tmp/ddm-multihost.XXXXXX)
[ -n "$OUT" ] && mkdir -p "$OUT"
PIDS=()          # every process started, killed in cleanup
MADE_ETC_NETNS=0
[ -d /etc/netns ] || MADE_ETC_NETNS=1
T0=$(date +%s.%N)
log() { printf '[%6.2fs] %s\n' "$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')" "$*"; }
fail() {
    echo "FAIL: $*" >&2
    for f in "$WORK"/*.log; do
        [ -f "$f" ] || continue
        echo "---- $(basename "$f") (last lines)" >&2
        tail -n 15 "$f" >&2
    done
    echo "FAIL: $*" >&2
    exit 1
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "${WATCHDOG:-}" ] && kill "$WATCHDOG" 2>/dev/null
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for _ in $(seq 30); do
        local alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive -eq 0 ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    for ns in $NS_A $NS_B $NS_C $NS_SW; do
        ip netns del "$ns" 2>/dev/null
        rm -rf "/etc/netns/$ns"
    done
    [ $MADE_ETC_NETNS -eq 1 ] && rmdir /etc/netns 2>/dev/null
    if [ $KEEP -eq 1 ]; then echo "logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# watchdog: the run never hangs, whatever a process does
( sleep "${DDM_MULTIHOST_TIMEOUT:-110}" >/dev/null 2>&1; echo "FAIL: multi-host test took longer than ${DDM_MULTIHOST_TIMEOUT:-110}s" >&2
  kill -TERM $$ ) 2>/dev/null &
WATCHDOG=$!

# ---- the three hosts ------------------------------------------------------------
log "network: namespaces $NS_A $NS_B $NS_C on a bridge in $NS_SW, subnet $NET.0/24"
ip netns add $NS_SW || fail "ip netns add failed (is this a container without CAP_SYS_ADMIN?)"
ip -n $NS_SW link add br0 type bridge || fail "cannot create a bridge"
ip -n $NS_SW link set br0 up
ip -n $NS_SW link set lo up
i=0
for h in a b c; do
    i=$((i + 1))
    ns=ddm${TAG}$h
    ip netns add "$ns" || fail "ip netns add $ns"
    mkdir -p "/etc/netns/$ns"
    { echo "127.0.0.1 localhost"; echo "$NET.1 host-a"; echo "$NET.2 host-b"; echo "$NET.3 host-c"; } \
        > "/etc/netns/$ns/hosts"
    ip -n "$ns" link add eth0 type veth peer name port-$h netns $NS_SW || fail "veth for host-$h"
    ip -n $NS_SW link set port-$h master br0
    ip -n $NS_SW link set port-$h up
    ip -n "$ns" addr add $NET.$i/24 dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
done
inns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# ---- workers on host-a and host-b, router on host-c ------------------------------
CONF=$WORK/cluster.conf
{
    echo "# $K experts, each on host-a and host-b (two replicas), router on host-c"
    echo "models $MODELS"
    echo "listen 127.0.0.1:8080"
    for k in $(seq 0 $((K - 1))); do
        echo "expert $k tcp://host-a:$((7100 + k))"
        echo "expert $k tcp://host-b:$((7100 + k))"
    done
} > "$CONF"
for h in a b; do
    for k in $(seq 0 $((K - 1))); do
        ip netns exec ddm${TAG}$h "$BIN/ddm-expert" --weights "$MODELS/expert-$k.safetensors" \
            --listen "tcp://$NET.$([ $h = a ] && echo 1 || echo 2):$((7100 + k))" --metrics "127.0.0.1:$((9100 + k))" \
            --max-delay-us 200 --log-level warn > "$WORK/expert-$k-$h.log" 2>&1 &
        PIDS+=("$!")
    done
done
ip netns exec $NS_C "$BIN/ddm-router" --cluster "$CONF" --listen 127.0.0.1:8080 --expert-timeout-ms 500 --attempts 8 \
    > "$WORK/router.log" 2>&1 &
ROUTER=$!
PIDS+=("$ROUTER")
log "started $((2 * K)) workers and the router"

API=http://127.0.0.1:8080
api() { inns $NS_C curl -s --max-time 30 "$@"; }
# replicas of host h in state s, from /v1/experts
replicas() { api $API/v1/experts | jq --arg h "host-$1" --arg s "$2" \
    '[.experts[].replicas[] | select((.url | contains($h)) and .state == $s)] | length'; }
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...: poll every 100 ms
    local end=$(( $(date +%s) + $1 )) what=$2; shift 2
    until "$@"; do
        [ "$(date +%s)" -lt $end ] || fail "$what"
        sleep 0.1
    done
}
all_up() { [ "$(replicas "$1" up)" = "$K" ]; }
none_up() { [ "$(replicas "$1" up)" = "0" ]; }
ready() { [ "$(api -o /dev/null -w '%{http_code}' $API/readyz)" = 200 ]; }
wait_for 20 "router never became ready (GET /readyz)" ready
wait_for 10 "not every replica on host-a came up" all_up a
wait_for 10 "not every replica on host-b came up" all_up b
log "router ready: $K experts x 2 replicas up"

# denoise requests answered by the workers of host h (sum over its experts)
served() {
    local sum=0 v
    for k in $(seq 0 $((K - 1))); do
        v=$(inns ddm${TAG}$1 curl -s --max-time 5 "http://127.0.0.1:$((9100 + k))/metrics" |
            sed -n 's/^ddm_expert_requests_total{kind="denoise"} \([0-9]*\).*/\1/p')
        sum=$((sum + ${v:-0}))
    done
    echo $sum
}

REQ='{"n": 4, "steps": 8, "seed": 42, "strategy": "top-2"}'
sample() { # sample FILE: POST $REQ, keep the body, check status, count and seed
    local code
    code=$(api -o "$1" -w '%{http_code}' -H 'Content-Type: application/json' -d "$REQ" $API/v1/samples)
    [ "$code" = 200 ] || fail "POST /v1/samples -> $code: $(head -c 300 "$1")"
    [ "$(jq '.images | length' "$1")" = 4 ] || fail "expected 4 images in $(head -c 200 "$1")"
    [ "$(jq '.seed' "$1")" = 42 ] || fail "seed not echoed back"
}
sample "$WORK/all-up.json"
log "sample with every host up: 200, 4 images"

# ---- load, then cut host-a -----------------------------------------------------------
# start_load SECONDS NAME: closed-loop load in the background (LOADER), results in NAME.json
start_load() {
    if [ -x "$BIN/ddm-client" ]; then
        inns $NS_C "$BIN/ddm-client" bench --url $API -c 6 -d "$1s" -n 2 -s 8 -q --json \
            > "$WORK/$2.json" 2> "$WORK/$2.log" &
    else # no client built: a curl loop, each request checked
        ( end=$(( $(date +%s) + $1 )); ok=0; bad=0
          while [ "$(date +%s)" -lt $end ]; do
              c=$(api -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
                  -d '{"n": 2, "steps": 8}' $API/v1/samples)
              if [ "$c" = 200 ]; then ok=$((ok + 1)); else bad=$((bad + 1)); echo "status $c" >&2; fi
          done; echo "{\"ok\": $ok, \"failed\": $bad}" ) > "$WORK/$2.json" 2> "$WORK/$2.log" &
    fi
    LOADER=$!
    PIDS+=("$LOADER")
}
# check_load NAME WHAT: waits for the load and requires answers and not one failure
check_load() {
    wait "$LOADER"
    local rc=$? ok failed
    ok=$(jq '.ok // 0' "$WORK/$1.json" 2>/dev/null)
    failed=$(jq '.failed // 0' "$WORK/$1.json" 2>/dev/null)
    [ -n "$ok" ] && [ "$ok" -gt 0 ] || fail "load generator answered nothing: $(cat "$WORK/$1.json" "$WORK/$1.log")"
    if [ "$rc" -ne 0 ] || [ "$failed" != 0 ]; then
        fail "$2: $failed of $((ok + failed)) requests failed (exit $rc): $(head -c 600 "$WORK/$1.json")"
    fi
    log "$2: $ok requests, 0 failed ($(jq -c '.latency_ms // empty' "$WORK/$1.json" 2>/dev/null))"
}

start_load 12 load-cut
sleep 2
a0=$(served a); b0=$(served b)
if [ "$a0" -eq 0 ] || [ "$b0" -eq 0 ]; then
    fail "under load both hosts should serve (host-a $a0, host-b $b0 requests)"
fi
log "load running: host-a served $a0, host-b $b0 denoise requests"

ip -n $NS_SW link set port-a down
t_cut=$(date +%s.%N)
log "host-a cut off (its bridge port is down)"
wait_for 10 "the router did not mark host-a's replicas down within 10 s" none_up a
log "host-a's replicas down in /v1/experts after $(awk -v a="$t_cut" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
wait_for 2 "readyz must stay 200 with host-b serving every expert" ready
b1=$(served b)
sleep 2
sample "$WORK/host-a-cut.json"
b2=$(served b)
[ "$b2" -gt "$b1" ] || fail "host-b served nothing while host-a was cut"
log "readyz 200, sample 200, host-b served $((b2 - b1)) requests meanwhile"
check_load load-cut "load across the cut"

# ---- host-a back ---------------------------------------------------------------------------
ip -n $NS_SW link set port-a up
t_up=$(date +%s.%N)
# the old TCP connections resume at their next retransmission: the wait grows with the outage
wait_for 30 "host-a's replicas did not come back up within 30 s" all_up a
log "host-a's link up: replicas up after $(awk -v a="$t_up" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
start_load 4 load-back
sleep 1
a1=$(served a)
sleep 2
a2=$(served a)
[ "$a2" -gt "$a1" ] || fail "host-a is up again but served no request under load ($a1 -> $a2)"
log "host-a used again: served $((a2 - a1)) denoise requests in 2 s"
sample "$WORK/host-a-back.json"
check_load load-back "load with host-a back"
kill -0 $ROUTER 2>/dev/null || fail "the router exited"

# ---- clean shutdown: SIGTERM, every process exits 0 (under ASan: no leak, no error) ----
stop_ok() { # stop_ok PID NAME
    kill -TERM "$1" 2>/dev/null
    local end=$(( $(date +%s) + 15 ))
    while kill -0 "$1" 2>/dev/null; do
        [ "$(date +%s)" -lt $end ] || fail "$2 still running 15 s after SIGTERM"
        sleep 0.1
    done
    wait "$1"
    local st=$?
    [ $st -eq 0 ] || fail "$2 exited with status $st after SIGTERM (see its log)"
}
stop_ok $ROUTER router
for p in "${PIDS[@]}"; do
    [ "$p" = "$ROUTER" ] || [ "$p" = "$LOADER" ] || stop_ok "$p" "worker pid $p"
done
PIDS=()
log "router and workers stopped on SIGTERM with exit status 0"
[ -n "$OUT" ] && cp "$WORK"/all-up.json "$WORK"/host-a-cut.json "$WORK"/host-a-back.json \
    "$WORK"/load-cut.json "$WORK"/load-back.json "$WORK/cluster.conf" "$OUT"/
echo "PASS: multi-host ($K experts x 2 hosts, router on a third): samples, host cut under load, host back"
exit 0
