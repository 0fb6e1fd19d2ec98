#!/usr/bin/env bash
# Run a command while N background processes keep N cores busy (default: every core), then
# stop them: `scripts/under-load.sh pytest -m latency` is `make test-under-load`.
# Latency figures move under load; the outcomes the tests assert must not.
set -uo pipefail
BUSY=${BUSY:-$(nproc)}
pids=()
stop_load() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done; wait 2>/dev/null; }
trap stop_load EXIT INT TERM
for _ in $(seq "$BUSY"); do
    sh -c 'while :; do :; done' &
    pids+=($!)
done
echo "under-load: $BUSY busy process(es) on $(nproc) core(s): ${pids[*]}" >&2
"$@"
