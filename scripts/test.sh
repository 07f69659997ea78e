#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need (SoftHSM2, etcd, p11-kit, OpenSSL), builds once, tests.
# The tests start their own services (SoftHSM tokens in temporary folders, etcd on loopback, the plugin on unix
# sockets) and stop them when done.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build --build-tests
swift test --skip-build "$@"
