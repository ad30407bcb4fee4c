#!/bin/sh
# `make bench` (issue 5): release build of assistantd and the bench examples, then the driver
# (examples/bench.rs), which starts everything on 127.0.0.1, stops it all at the end and prints
# one table on stdout (progress on stderr).
#
# Environment: BENCH_SECS (10) per load run, BENCH_RUNS (3), BENCH_CONNS (32),
# BENCH_WORKERS (server default), BENCH_SENDS (5), BENCH_STARTS (20), BENCH_WRK (1: also run
# wrk when installed, for comparison), BENCH_DIR (target/bench-tmp), BENCH_KEEP (1: keep the
# work dir with the server log). Needs only cargo; `apt-get install -y wrk` adds the wrk lines.
set -eu
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
# Two invocations on purpose: examples enable dev-dependency features, and the server binary
# must be exactly what `make build` ships.
$CARGO build --release --bin assistantd
$CARGO build --release --examples
# The driver stops its children itself; `timeout` bounds the whole run in case it hangs.
secs=${BENCH_SECS:-10}
runs=${BENCH_RUNS:-3}
limit=$(awk -v s="$secs" -v r="$runs" 'BEGIN { printf "%d", s * (r * 6 + 2) + 600 }')
exec timeout --foreground --kill-after=10 "$limit" "${CARGO_TARGET_DIR:-target}/release/examples/bench"
