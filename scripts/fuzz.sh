#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer) of every parser of outside bytes. Not part of `swift build`/`swift test`:
# the targets are a separate package, Fuzz/, built here with -sanitize=fuzzer (coverage instrumentation of the
# targets and of everything they link: p11kms's parsers, SwiftProtobuf, Yams and its libyaml).
#
#   scripts/fuzz.sh                 every target, 200000 executions each (FUZZ_RUNS to change)
#   scripts/fuzz.sh --smoke         every target, 2000 executions each (CI)
#   scripts/fuzz.sh envelope kms    only those targets
#
# Targets (seed corpus in Fuzz/corpus/<name>/, committed; new inputs go to Fuzz/.build/corpus/<name>/):
#   envelope  KeyService Envelope(parsing:)            the ciphertext of every Decrypt
#   storage   EtcdAudit StorageClassifier.format(of:)  every value `p11kms audit` reads from etcd
#   kms       KMS v2/v1 request messages + the handlers' checks (key_id, annotations, envelope)
#   config    ConfigFile.parse                         the --config file
#   audit     EtcdAudit AuditProof.parse + refusals    the audit JSON `destroy --audit-json` reads (when present)
# A crash leaves its input in Fuzz/.build/artifacts/ and makes the script exit 1; keep it as a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${FUZZ_RUNS:-200000}
if [ "${1:-}" = --smoke ]; then runs=2000; shift; fi
declare -A binary=([envelope]=FuzzEnvelope [storage]=FuzzStorageClassifier [kms]=FuzzKMSRequests
                   [config]=FuzzConfigFile [audit]=FuzzAuditProof)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(envelope storage kms config audit)

echo "building the fuzz targets (release, -sanitize=fuzzer)" >&2
swift build --package-path Fuzz -c release -Xswiftc -sanitize=fuzzer -Xcc -fsanitize=fuzzer-no-link 2>&1 \
  | grep -E "error|warning: .*Fuzz/Sources" >&2 || true
bin=$(swift build --package-path Fuzz -c release --show-bin-path)

mkdir -p Fuzz/.build/artifacts
status=0
printf '%-9s %10s %7s %7s %6s %8s  %s\n' target executions cov ft corpus seconds result
for name in "${targets[@]}"; do
  exe="$bin/${binary[$name]:-?}"
  if [ ! -x "$exe" ]; then
    printf '%-9s %s\n' "$name" "not built (its parser is not in this tree)"; continue
  fi
  work=Fuzz/.build/corpus/$name
  mkdir -p "$work"
  log=Fuzz/.build/$name.log
  start=$(date +%s)
  result=ok
  if ! "$exe" -runs="$runs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
       -artifact_prefix="Fuzz/.build/artifacts/$name-" "$work" "Fuzz/corpus/$name" >"$log" 2>&1; then
    result="CRASH (see $log, input in Fuzz/.build/artifacts/)"; status=1
  fi
  seconds=$(( $(date +%s) - start ))
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  executions=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
  corpus=$(sed -nE 's/.* corp: ([0-9]+)\/.*/\1/p' <<<"$last")
  printf '%-9s %10s %7s %7s %6s %8s  %s\n' "$name" "${executions:-?}" "${cov:-?}" "${ft:-?}" "${corpus:-?}" "$seconds" "$result"
done
exit $status
