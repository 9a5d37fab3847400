#!/bin/sh
# run.sh -- `make load`: starts the demo cluster (deploy/local/ddm-cluster up
# deploy/local/digits.conf), sends POST /v1/samples for 60 s at 64 connections
# with wrk (tests/load/samples.lua), and prints images/s, latency percentiles,
# the error count (must be 0) and the router's and workers' RSS over the run
# (first/last/max; must stay flat). Stops the cluster it started.
#
#   tests/load/run.sh [--conf FILE] [--bin DIR] [--duration SEC] [--connections N]
#                     [--tool wrk|ddm-client] [--body JSON]
#
# Exit 0 when there was no error and memory stayed flat, 1 otherwise, 2 usage.
# "Flat": the largest RSS of each process in the last third of the run is at
# most 10% + 4 MiB above its largest in the first third (warm-up included).
set -u

CONF=deploy/local/digits.conf
BIN=bin
DURATION=60
CONNS=64
TOOL=wrk
BODY='{"n": 1, "steps": 50, "strategy": "top-2"}'
while [ $# -gt 0 ]; do
    case "$1" in
        --conf) CONF=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --tool) TOOL=$2; shift 2 ;;
        --body) BODY=$2; shift 2 ;;
        -h|--help) sed -n 2,13p "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "load: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
die() { echo "load: $*" >&2; exit 1; }

[ -f "$CONF" ] || die "$CONF not found"
CLUSTER=deploy/local/ddm-cluster
[ -x "$CLUSTER" ] || die "$CLUSTER missing: the local launcher is needed to start the demo cluster"
models=$(sed -n 's/^models[[:space:]]\{1,\}\([^[:space:]#]*\).*/\1/p' "$CONF" | tail -n 1)
[ -f "$models/router.safetensors" ] ||
    die "$models/router.safetensors missing: run make models (or pass --conf with another set)"
listen=$(sed -n 's/^listen[[:space:]]\{1,\}\([^[:space:]#]*\).*/\1/p' "$CONF" | tail -n 1)
URL=http://${listen:-127.0.0.1:8080}

if [ "$TOOL" = wrk ] && ! command -v wrk >/dev/null; then
    [ "$(id -u)" -eq 0 ] || die "wrk not found: apt-get install wrk (Debian package)"
    echo "load: installing wrk (Debian package)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null 2>&1; } ||
        die "could not install wrk: apt-get install wrk"
fi
[ "$TOOL" = wrk ] || [ -x "$BIN/ddm-client" ] || die "$BIN/ddm-client missing: run make"

RUN=$(mktemp -d /tmp/ddm-load.XXXXXX)
STARTED=0
cleanup() {
    [ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null
    if [ $STARTED -eq 1 ] &&
        ! "$CLUSTER" down "$CONF" --run-dir "$RUN/cluster" >"$RUN/down.log" 2>&1; then
        echo "load: ddm-cluster down failed:" >&2
        cat "$RUN/down.log" >&2
    fi
    rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

echo "load: starting the cluster of $CONF (models $models)"
"$CLUSTER" up "$CONF" --bin "$BIN" --run-dir "$RUN/cluster" >"$RUN/up.log" 2>&1 ||
    { cat "$RUN/up.log" >&2; die "ddm-cluster up failed"; }
STARTED=1
code=$(curl -s -o "$RUN/warm.json" -w '%{http_code}' --max-time 120 -H 'Content-Type: application/json' \
       -d "$BODY" "$URL/v1/samples")
[ "$code" = 200 ] || die "warm-up request -> $code: $(head -c 300 "$RUN/warm.json")"

# RSS of every process the launcher started (NAME.pid in its run dir), every second
sample_rss() {
    t=0
    while :; do
        for f in "$RUN"/cluster/*.pid; do
            [ -f "$f" ] || continue
            n=$(basename "$f" .pid); p=$(head -n 1 "$f")
            kb=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$p/status" 2>/dev/null)
            [ -n "$kb" ] && echo "$t $n $p $kb"
        done
        t=$((t + 1))
        sleep 1
    done
}
sample_rss >"$RUN/rss.txt" &
SAMPLER=$!

echo "load: $TOOL, $CONNS connections, ${DURATION}s, body $BODY, against $URL"
if [ "$TOOL" = wrk ]; then
    threads=$(nproc 2>/dev/null || echo 2)
    [ "$threads" -gt 4 ] && threads=4
    DDM_LOAD_BODY=$BODY wrk -t "$threads" -c "$CONNS" -d "${DURATION}s" --timeout 60s --latency \
        -s tests/load/samples.lua "$URL" >"$RUN/wrk.txt" 2>&1
    rc=$?
    cat "$RUN/wrk.txt"
    line=$(grep '^DDM_LOAD requests=' "$RUN/wrk.txt")
    [ $rc -eq 0 ] && [ -n "$line" ] || die "wrk failed (exit $rc)"
    get() { echo "$line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
    errors=$(get errors)
    printf '\nimages/s     %s\nlatency ms   p50 %s  p90 %s  p99 %s  max %s\nerrors       %s\n' \
        "$(get images_per_s)" "$(get p50_ms)" "$(get p90_ms)" "$(get p99_ms)" "$(get max_ms)" "$errors"
else
    n=$(echo "$BODY" | sed -n 's/.*"n"[[:space:]]*:[[:space:]]*\([0-9]*\).*/\1/p')
    steps=$(echo "$BODY" | sed -n 's/.*"steps"[[:space:]]*:[[:space:]]*\([0-9]*\).*/\1/p')
    strat=$(echo "$BODY" | sed -n 's/.*"strategy"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')
    "$BIN/ddm-client" bench --url "$URL" -c "$CONNS" -d "${DURATION}s" -n "${n:-1}" \
        ${steps:+-s $steps} ${strat:+-S $strat} -q >"$RUN/bench.txt" 2>&1
    cat "$RUN/bench.txt"
    errors=$(sed -n 's/.* \([0-9]*\) failed.*/\1/p' "$RUN/bench.txt" | head -n 1)
    [ -n "$errors" ] || die "ddm-client bench printed no summary"
    printf '\nerrors       %s\n' "$errors"
fi
kill "$SAMPLER" 2>/dev/null
SAMPLER=""

# first / last / max RSS per process, and the flatness verdict
echo
awk -v dur="$DURATION" '
    { n = $2; t = $1; kb = $4
      if (!(n in first)) { first[n] = kb; names[++cnt] = n }
      last[n] = kb; if (kb > max[n]) max[n] = kb
      if (t <= dur / 3 + 2) { if (kb > early[n]) early[n] = kb }
      else if (t >= 2 * dur / 3) { if (kb > late[n]) late[n] = kb }
      if (pid[n] != "" && pid[n] != $3) restarted[n] = 1
      pid[n] = $3 }
    END {
      printf "%-12s %10s %10s %10s  %s\n", "RSS (MiB)", "first", "last", "max", "verdict"
      bad = 0
      for (i = 1; i <= cnt; i++) {
        n = names[i]; v = "flat"
        if (late[n] > early[n] * 1.10 + 4096) { v = "GROWING"; bad = 1 }
        if (restarted[n]) { v = v ", RESTARTED"; bad = 1 }
        printf "%-12s %10.1f %10.1f %10.1f  %s\n", n, first[n] / 1024, last[n] / 1024, max[n] / 1024, v
      }
      exit bad
    }' "$RUN/rss.txt"
flat=$?
[ "$errors" = 0 ] || die "$errors requests failed (must be 0)"
[ $flat -eq 0 ] || die "memory did not stay flat (see the table above)"
echo "load: ok -- 0 errors, memory flat"
