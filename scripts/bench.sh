#!/usr/bin/env bash
# Benchmarks a release build of p11kms on a fresh SoftHSM token:
#   - raw in-process PKCS#11 AES-GCM wrap+unwrap pairs on the token (the ceiling),
#   - Status, Encrypt, Decrypt and Encrypt+Decrypt round trips over the plugin's unix socket,
# with THREADS callers in flight for SECONDS each, reporting ops/s, p50/p99 latency, the plugin's CPU per call and
# its resident memory. The raw pairs are measured with the token object and with its session-object copy; the socket
# phases run twice, against a plugin with --session-key-copies=true and then =false (BENCH_COPIES="true false" by
# default; e.g. BENCH_COPIES=true for one). BENCH_PERF=DIR records the plugin with `perf record -g` while the load
# client runs, into DIR/plugin-copies-{true,false}.data (read with `perf report -i FILE --no-children --sort dso,sym`).
# Usage: scripts/bench.sh [THREADS=16] [SECONDS=5] [extra serve flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-16}
seconds=${2:-5}
shift $(( $# > 2 ? 2 : $# )) || true
. scripts/bench-token.sh
first=1
for copies in ${BENCH_COPIES:-true false}; do
  echo "== plugin with --session-key-copies=$copies"
  "$bin/p11kms" serve --listen "unix://$work/kms.sock" --token-label bench --pin-file "$work/pin" \
    --log-level warning --http-listen off --session-key-copies="$copies" "$@" 2>"$work/serve.log" &
  echo $! > "$work/pid"
  for _ in $(seq 1 100); do [ -S "$work/kms.sock" ] && break; sleep 0.1; done
  phases=${BENCH_PHASES:-raw,envelope,status,encrypt,decrypt,roundtrip}
  # The raw in-process rates do not depend on the plugin: measured once.
  [ "$first" = 1 ] || phases=$(echo "$phases" | tr ',' '\n' | grep -v -x -e raw -e envelope | paste -sd, -)
  if [ -n "${BENCH_PERF:-}" ]; then
    mkdir -p "$BENCH_PERF"
    perf record -q -g -o "$BENCH_PERF/plugin-copies-$copies.data" -p "$(cat "$work/pid")" 2>/dev/null &
    echo $! > "$work/perf.pid"
  fi
  "$bin/P11KMSBench" --listen "unix://$work/kms.sock" --token-label bench --pin-file "$work/pin" \
    --threads "$threads" --seconds "$seconds" --plugin-pid "$(cat "$work/pid")" --phases "$phases"
  if [ -n "${BENCH_PERF:-}" ]; then kill -INT "$(cat "$work/perf.pid")"; wait "$(cat "$work/perf.pid")" || true; fi
  kill "$(cat "$work/pid")"; wait "$(cat "$work/pid")" 2>/dev/null || true
  rm -f "$work/kms.sock"
  first=0
done
