#!/usr/bin/env bash
# Sets up and runs p11kms on this machine with the embedded default token (SoftHSM2):
#   installs the Debian packages, builds a release binary, creates a SoftHSM token under ./run/softhsm with a
#   random PIN in ./run/pin (mode 0600), generates the root key inside the token (p11kms init), and serves
#   KMS v2 (and v1) on unix://$PWD/run/p11kms.sock until Ctrl-C. Running it again reuses the token and key.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
scripts/install-deps.sh
swift build -c release --product p11kms
bin=$(swift build -c release --show-bin-path)/p11kms

run="$top/run"
mkdir -p "$run/softhsm/tokens"
chmod 700 "$run"
export SOFTHSM2_CONF="$run/softhsm/softhsm2.conf"
if [ ! -f "$SOFTHSM2_CONF" ]; then
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' \
    "$run/softhsm/tokens" > "$SOFTHSM2_CONF"
fi
# p11kms's own state (rotation lock, PIN-rejection record, key history, token backups) stays under ./run too.
export P11KMS_STATE_DIR=${P11KMS_STATE_DIR:-$run/state}
label=${P11KMS_TOKEN_LABEL:-p11kms}
if [ ! -s "$run/pin" ]; then
  (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$run/pin")
fi
# softhsm2-util pads labels with spaces: match the label as a whole word, padding allowed.
if ! softhsm2-util --show-slots 2>/dev/null | grep -Eq "Label:[[:space:]]*$label[[:space:]]*\$"; then
  so_pin=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  softhsm2-util --init-token --free --label "$label" --so-pin "$so_pin" --pin "$(cat "$run/pin")" >/dev/null
  echo "created SoftHSM token '$label' in $run/softhsm/tokens" >&2
fi
"$bin" init --token-label "$label" --pin-file "$run/pin" >/dev/null
echo "p11kms: serving on unix://$run/p11kms.sock (check it with: $bin status --listen unix://$run/p11kms.sock)" >&2
exec "$bin" serve --listen "unix://$run/p11kms.sock" --token-label "$label" --pin-file "$run/pin" "$@"
