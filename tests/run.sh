#!/bin/sh
# run.sh -- run every cmocka test binary in DIR (or only the names given), each
# under a timeout, and print one closing line "N passed, N failed, N skipped".
# A binary that crashes or times out counts its unreported tests as failed.
set -u
dir=$1; shift
only="$*"
timeout_s=${DDM_TEST_TIMEOUT:-600}
pass=0; fail=0; skip=0; failed_names=""
export CMOCKA_MESSAGE_OUTPUT=TAP
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$(pwd)/tests/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# ddm binaries measure their BLAS kernels once per CPU and cache the choice
# (common/blas.h): do it now, so that no test's startup deadline includes it
bin_dir=${DDM_BIN_DIR:-bin}
if [ -x "$bin_dir/ddm-expert" ]; then
    timeout 300 "$bin_dir/ddm-expert" --blas-table 2>/dev/null | tail -1 ||
        echo "warning: $bin_dir/ddm-expert --blas-table failed" >&2
fi
for t in "$dir"/test_*; do
    name=$(basename "$t")
    if [ -n "$only" ] && ! echo " $only " | grep -q " ${name#test_} \| $name "; then continue; fi
    out=$(mktemp)
    start=$(date +%s)
    timeout -k 5 "$timeout_s" "$t" >"$out" 2>&1
    rc=$?
    end=$(date +%s)
    # cmocka 1.1 reports a skip as "not ok N ... # SKIP"
    s=$(grep -c '^\(not \)\?ok [0-9].*# SKIP' "$out" | tr -d ' ')
    p=$(grep '^ok [0-9]' "$out" | grep -vc '# SKIP' | tr -d ' ')
    f=$(grep '^not ok [0-9]' "$out" | grep -vc '# SKIP' | tr -d ' ')
    planned=$(sed -n 's/^1\.\.\([0-9]*\).*/\1/p' "$out" | head -1)
    reported=$((p + s + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        # crashed or timed out: whatever did not report is a failure (at least one)
        missing=$(( ${planned:-0} - reported ))
        [ "$missing" -lt 1 ] && missing=1
        f=$((f + missing))
    fi
    pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s))
    status="ok"
    [ "$f" -gt 0 ] && status="FAIL (exit $rc)" && failed_names="$failed_names $name"
    printf '%-28s %3d passed %3d failed %3d skipped  %4ss  %s\n' "$name" "$p" "$f" "$s" $((end - start)) "$status"
    if [ "$f" -gt 0 ] || [ -n "${VERBOSE:-}" ]; then sed 's/^/    | /' "$out"; fi
    rm -f "$out"
done
[ -n "$failed_names" ] && echo "failed:$failed_names"
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
