#!/usr/bin/env bash
# Benchmarks `p11kms audit` against a local etcd holding 100,000 Secrets (release build).
# Usage: scripts/bench-audit.sh [--secrets N] [--runs R] [--page-size P]
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product p11kms
swift build -c release --product AuditBench
exec .build/release/AuditBench "$@"
