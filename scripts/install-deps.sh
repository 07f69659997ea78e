#!/usr/bin/env bash
# Installs the Debian packages p11kms builds, runs and tests with (only those missing).
set -euo pipefail
packages=(libgrpc-dev libp11-kit-dev softhsm2 opensc p11-kit etcd-server etcd-client protobuf-compiler openssl libssl-dev prometheus rsync)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
