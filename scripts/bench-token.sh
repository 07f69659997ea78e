# Sourced by the benchmark scripts: builds the release products named in BENCH_PRODUCTS, sets `bin` (the release
# folder) and `work` (a temporary folder removed on exit, where "$work/pid" names a plugin to stop), and creates a
# fresh SoftHSM token labelled "bench" there with a root key (PIN in "$work/pin", state in "$work/state").
scripts/install-deps.sh
for product in p11kms P11KMSBench ${BENCH_PRODUCTS:-}; do swift build -c release --product "$product" >&2; done
bin=$(swift build -c release --show-bin-path)

work=$(mktemp -d /tmp/p11kms-bench-XXXXXX)
trap 'kill $(cat "$work/pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$work/tokens" > "$work/softhsm2.conf"
export SOFTHSM2_CONF="$work/softhsm2.conf"
export P11KMS_STATE_DIR="$work/state"
(umask 077; echo "bench-pin-$RANDOM" > "$work/pin")
softhsm2-util --init-token --free --label bench --so-pin so-pin-0 --pin "$(cat "$work/pin")" >/dev/null
"$bin/p11kms" init --token-label bench --pin-file "$work/pin" >/dev/null 2>&1
