#!/usr/bin/env bash
# Benchmarks p11kms against a slow token, as a network HSM is: the fault-injecting PKCS#11 module (built from
# Sources/CFaultPKCS11) forwards to SoftHSM and sleeps DELAY_MS before every C_Encrypt and C_Decrypt. For each
# --max-sessions value (worker threads set to match), it reports Encrypt+Decrypt round trips/s and p50/p99 at each
# number of callers in flight. With a slow token, throughput scales with sessions until the bound.
# Usage: scripts/bench-slow-token.sh [SECONDS=5] [DELAY_MS=2] [SESSIONS="8 32"] [IN_FLIGHT="16 64"]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
delay=${2:-2}
sessions_list=${3:-"8 32"}
inflight_list=${4:-"16 64"}
BENCH_PRODUCTS=FaultPKCS11 . scripts/bench-token.sh
printf 'delay C_Encrypt %s\ndelay C_Decrypt %s\n' "$delay" "$delay" > "$work/plan"
export FAULTPKCS11_MODULE=/usr/lib/softhsm/libsofthsm2.so FAULTPKCS11_CONTROL="$work/plan" FAULTPKCS11_LOG=/dev/null

echo "slow token: +${delay} ms per C_Encrypt and C_Decrypt, ${seconds} s per run"
printf '%-14s %-10s %12s %9s %9s %7s\n' "max-sessions" "in-flight" "round trips/s" "p50 ms" "p99 ms" "errors"
for sessions in $sessions_list; do
  rm -f "$work/kms.sock"
  "$bin/p11kms" serve --listen "unix://$work/kms.sock" --module "$bin/libFaultPKCS11.so" --token-label bench \
    --pin-file "$work/pin" --max-sessions "$sessions" --worker-threads "$sessions" --max-queued-calls 4096 \
    --log-level warning --http-listen off 2>"$work/serve.log" &
  echo $! > "$work/pid"
  for _ in $(seq 1 100); do [ -S "$work/kms.sock" ] && break; sleep 0.1; done
  for inflight in $inflight_list; do
    line=$("$bin/P11KMSBench" --listen "unix://$work/kms.sock" --token-label bench --pin-file "$work/pin" \
      --threads "$inflight" --seconds "$seconds" --phases roundtrip | grep '^socket Encrypt+Decrypt' | tail -1)
    # columns of P11KMSBench: name... ops/s p50µs p99µs cpu rss errors
    echo "$line" | awk -v s="$sessions" -v n="$inflight" \
      '{printf "%-14s %-10s %12s %9.2f %9.2f %7s\n", s, n, $(NF-5), $(NF-4)/1000, $(NF-3)/1000, $NF}'
  done
  kill "$(cat "$work/pid")"; wait "$(cat "$work/pid")" 2>/dev/null || true
done
