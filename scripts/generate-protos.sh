#!/usr/bin/env bash
# Regenerates the Swift code for the project's .proto files.
#
#   scripts/generate-protos.sh          regenerate Sources/*/Generated in place
#   scripts/generate-protos.sh --check  regenerate into a temp dir and diff
#                                       against the committed files; exit 1 if
#                                       they are stale
#
# protoc-gen-swift is built from the swift-protobuf version this package
# resolves (so generated code always matches the runtime library), into the
# git-ignored scratch folder .build-protoc. protoc itself is the system one
# (Debian: apt-get install protobuf-compiler), or $PROTOC if set.
set -euo pipefail

mode=generate
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

protoc="${PROTOC:-protoc}"
if ! command -v "$protoc" >/dev/null 2>&1; then
  echo "error: protoc not found (apt-get install protobuf-compiler, or set PROTOC)" >&2
  exit 2
fi

# 1. Build protoc-gen-swift from the resolved swift-protobuf checkout.
checkout="$root/.build/checkouts/swift-protobuf"
if [ ! -f "$checkout/Package.swift" ]; then
  swift package resolve >&2
fi
if [ ! -f "$checkout/Package.swift" ]; then
  echo "error: swift-protobuf checkout not found at $checkout" >&2
  exit 2
fi
scratch="$root/.build-protoc"
echo "building protoc-gen-swift (scratch: .build-protoc)" >&2
swift build -c release --package-path "$checkout" --product protoc-gen-swift \
  --scratch-path "$scratch" >&2
plugin="$scratch/release/protoc-gen-swift"
echo "using $("$plugin" --version) and $("$protoc" --version)" >&2

# 2. Generate into a temp dir: <tmp>/<Target>/*.pb.swift
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

gen() { # target, proto files...
  local target="$1"; shift
  mkdir -p "$tmp/$target"
  "$protoc" \
    --plugin=protoc-gen-swift="$plugin" \
    --proto_path=proto \
    --swift_out="$tmp/$target" \
    --swift_opt=Visibility=Public \
    --swift_opt=FileNaming=PathToUnderscores \
    "$@"
}

gen KMSProto \
  kms/v2/api.proto \
  kms/v2/encrypted_object.proto \
  kms/v1beta1/api.proto
gen EtcdProto \
  etcd/kv.proto \
  etcd/rpc.proto \
  k8s/runtime.proto \
  k8s/core.proto

# 3. Install or compare.
status=0
for target in KMSProto EtcdProto; do
  dest="Sources/$target/Generated"
  if [ "$mode" = check ]; then
    if [ ! -d "$dest" ] || ! diff -ru "$dest" "$tmp/$target"; then
      echo "stale: $dest does not match the .proto files; run scripts/generate-protos.sh" >&2
      status=1
    fi
  else
    mkdir -p "$dest"
    find "$dest" -maxdepth 1 -name '*.pb.swift' -delete
    cp "$tmp/$target"/*.pb.swift "$dest/"
    echo "wrote $(ls "$dest" | wc -l | tr -d ' ') files to $dest" >&2
  fi
done

if [ "$mode" = check ] && [ "$status" -eq 0 ]; then
  echo "generated code is up to date" >&2
fi
exit "$status"
