#!/bin/sh
# run.sh -- run fuzz targets (make fuzz): each for --seconds S, one after the
# other, growing its corpus in build/fuzz/corpus/<target> from the seeds in
# tests/fuzz/corpus/<target> and the inputs in tests/fuzz/regressions/<target>.
# Prints one line per target (runs, runs/s, coverage, result) and exits 1 if
# any target crashed, leaked, timed out or hit a sanitizer; the reproducer is
# written to build/fuzz/artifacts/<target>/ and named.
#
#   sh tests/fuzz/run.sh --seconds 60 [target ...] [-- fuzzer args ...]
# Targets default to every build/fuzz/bin/fuzz_*. Fuzzer args go to each
# fuzzer (e.g. -- -jobs=1 -workers=1 -max_len=8192). Logs: build/fuzz/logs/.
set -u
seconds=60
targets=""
while [ $# -gt 0 ]; do
    case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) targets="$targets $1"; shift ;;
    esac
done
extra="$*" # fuzzer args (plain flags: split on spaces)
bindir=build/fuzz/bin
if [ -z "$targets" ]; then
    for b in "$bindir"/fuzz_*; do
        [ -x "$b" ] && targets="$targets ${b##*/fuzz_}"
    done
fi
[ -z "$targets" ] && { echo "run.sh: no fuzz targets in $bindir: make fuzz-build" >&2; exit 2; }
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:malloc_context_size=20}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
mkdir -p build/fuzz/logs
failed=""
printf '%-8s %12s %8s %6s %6s  %s\n' target runs runs/s cov ft result
for t in $targets; do
    bin=$bindir/fuzz_$t
    [ -x "$bin" ] || { echo "run.sh: $bin is missing: make fuzz-build" >&2; exit 2; }
    corpus=build/fuzz/corpus/$t
    art=build/fuzz/artifacts/$t/
    log=build/fuzz/logs/$t.log
    mkdir -p "$corpus" "$art"
    set -- "$corpus" "tests/fuzz/corpus/$t"
    [ -d "tests/fuzz/regressions/$t" ] && set -- "$@" "tests/fuzz/regressions/$t"
    [ -f "tests/fuzz/$t.dict" ] && set -- "$@" "-dict=tests/fuzz/$t.dict"
    "$bin" "$@" -max_total_time="$seconds" -timeout=20 -print_final_stats=1 \
        -artifact_prefix="$art" $extra >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    result=ok
    if [ $rc -ne 0 ]; then
        a=$(ls -t "$art" 2>/dev/null | head -1)
        result="FAILED (exit $rc): reproducer $art$a, log $log; replay: $bin $art$a"
        failed="$failed $t"
    fi
    printf '%-8s %12s %8s %6s %6s  %s\n' "$t" "${runs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "$result"
done
[ -n "$failed" ] && { echo "failed:$failed"; exit 1; }
exit 0
