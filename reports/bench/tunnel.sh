#!/usr/bin/env bash
# beam's tunnel side by side with raw TCP and bore on loopback: throughput (1 GiB, 1 and 8
# streams), small-request latency and max requests/s, connect-to-first-byte, memory, CPU/GiB.
# One command on a fresh machine (Rust, gcc, python3): bash reports/bench/tunnel.sh
# It installs what it needs (bore-cli and oha, with cargo), builds beam in release, runs every
# case, prints the table (markdown) and writes it to reports/bench/tunnel.csv. Last line:
# `beam/bore throughput ratio: X.XX`. Sizes: BENCH_BYTES, BENCH_RATE, BENCH_SECONDS.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
command -v bore >/dev/null || { echo "== installing bore-cli" >&2; cargo install bore-cli --locked -q; }
command -v oha >/dev/null || { echo "== installing oha" >&2; cargo install oha --locked -q; }
echo "== building beam and beam-bench (release)" >&2
cargo build --release --locked -q -p beam -p beam-bench
echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(bore --version), $(oha --version | head -1)" >&2
BEAM="$PWD/target/release/beam" BEAM_BENCH="$PWD/target/release/beam-bench" \
BORE="$(command -v bore)" OHA="$(command -v oha)" BENCH_CSV="${BENCH_CSV:-reports/bench/tunnel.csv}" \
    exec python3 reports/bench/tunnel.py
