#!/usr/bin/env bash
# Runs every fuzz target under libFuzzer for SECONDS each (default 60) on its corpus
# (fuzz/corpus/<target>/, which grows with what it finds), then prints a table: executions,
# corpus size, crashes. A crash leaves its input in fuzz/artifacts/<target>/ and fails the run.
#   bash fuzz/run.sh 30
# Needs a nightly toolchain (libFuzzer's instrumentation) and cargo-fuzz; installs cargo-fuzz
# when missing.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
case "$secs" in '' | *[!0-9]*) echo "usage: fuzz/run.sh [SECONDS per target]" >&2; exit 2 ;; esac
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cargo +nightly fuzz build -O
mkdir -p logs
failed=0
printf '%-14s %12s %10s %8s\n' target executions corpus crashes >logs/summary.txt
for t in $(cargo +nightly fuzz list); do
    mkdir -p "corpus/$t"
    rc=0
    cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=65536 \
        -print_final_stats=1 >"logs/$t.log" 2>&1 || rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
    crashes=$(find "artifacts/$t" -type f 2>/dev/null | wc -l)
    printf '%-14s %12s %10s %8s\n' "$t" "${runs:-?}" "$(ls "corpus/$t" | wc -l)" "$crashes" \
        | tee -a logs/summary.txt
    if [ "$rc" != 0 ]; then
        echo "$t: libFuzzer exited with $rc; see fuzz/logs/$t.log and fuzz/artifacts/$t/" >&2
        failed=1
    fi
done
echo "(fuzz/logs/summary.txt)"
exit "$failed"
