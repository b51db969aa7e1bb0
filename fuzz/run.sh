#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and prints executions per
# target. Usage: fuzz/run.sh [SECONDS_PER_TARGET] (default 60).
# Two cargo-fuzz packages: fuzz/ (the protocol's parsers, built on
# loopmix-core alone) and fuzz/apps/ (the SOCKS5 handshake and the config
# files, which need the client and node crates).
# Needs cargo-fuzz (`cargo install cargo-fuzz`); works on the stable
# toolchain through RUSTC_BOOTSTRAP=1 and without a sanitizer (these are
# panics-and-logic fuzzers; the code has no `unsafe`).
set -euo pipefail
cd "$(dirname "$0")"
SECS=${1:-60}
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz missing: cargo install cargo-fuzz" >&2
    exit 1
fi
status=0
for dir in . apps; do
    for t in $(cargo fuzz list --fuzz-dir "$dir"); do
        corpus="$dir/corpus/$t"
        mkdir -p "$corpus"
        log=$(mktemp)
        if cargo fuzz run --fuzz-dir "$dir" -s none "$t" "$corpus" \
            -- -max_total_time="$SECS" -rss_limit_mb=2048 >"$log" 2>&1; then
            runs=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1)
            printf '%-28s ok   %s\n' "$t" "${runs:-?}"
        else
            printf '%-28s FAIL (see below)\n' "$t"
            tail -40 "$log"
            status=1
        fi
        rm -f "$log"
    done
done
exit $status
