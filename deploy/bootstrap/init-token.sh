#!/usr/bin/env bash
# Bootstraps the embedded SoftHSM2 token for p11kms and its first root key. Idempotent: every step is skipped when
# its result already exists, so it runs safely on every start (the static pod's init container) or by hand:
#
#   1. /etc/p11kms/softhsm2.conf          SoftHSM's config, token directory /var/lib/p11kms/softhsm/tokens
#   2. the token labelled "p11kms"        looked up by label
#   3. /etc/p11kms/pin                    with a new token: a random user PIN, mode 0400, owner root
#      /etc/p11kms/so-pin                 and a random security-officer PIN, mode 0400 (re-sets a lost user PIN);
#                                         the token is created in the token directory with those PINs
#   4. p11kms init                        generates the first root key inside the token if it has none
#
# It prints the current key_id on stdout and what it did on stderr. It never prints a PIN and never passes one as
# an argument: the PINs reach pkcs11-tool through its environment (readable only by this user) and p11kms through
# --pin-file.
#
# Overrides (environment):
#   P11KMS_ETC          /etc/p11kms                  softhsm2.conf, pin, so-pin
#   P11KMS_STATE        /var/lib/p11kms              the token directory is $P11KMS_STATE/softhsm/tokens
#   P11KMS_BIN          /usr/local/bin/p11kms
#   P11KMS_TOKEN_LABEL  p11kms
#   P11KMS_MODULE       /usr/lib/softhsm/libsofthsm2.so
#   P11KMS_CREATE_TOKEN yes                          "no": fail instead of creating a missing token. The static pod
#                                                    sets "no": every control-plane node runs with a copy of the
#                                                    first node's token (the same root keys), never a token of its
#                                                    own; the token is created once, on the first node, by running
#                                                    this script with "yes" (deploy/kubeadm/README.md).
#   PKCS11_TOOL         pkcs11-tool                  (Debian package opensc)
#
# Tokens are created only in SoftHSM (a module whose file name is libsofthsm2.so). With any other module (a vendor
# HSM: its partition, crypto user and PIN are set up with the vendor's tools, deploy/hsm/README.md) the script
# writes nothing: it checks that the token and $P11KMS_ETC/pin exist and runs `p11kms init` against that token.
set -euo pipefail

etc=${P11KMS_ETC:-/etc/p11kms}
state=${P11KMS_STATE:-/var/lib/p11kms}
bin=${P11KMS_BIN:-/usr/local/bin/p11kms}
label=${P11KMS_TOKEN_LABEL:-p11kms}
module=${P11KMS_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
create=${P11KMS_CREATE_TOKEN:-yes}
tool=${PKCS11_TOOL:-pkcs11-tool}

conf=$etc/softhsm2.conf
tokens=$state/softhsm/tokens
# p11kms's own state (the key history init checks, token backups): the plugin's state-dir under the same hostPath.
export P11KMS_STATE_DIR=${P11KMS_STATE_DIR:-$state/state}
pin_file=$etc/pin
so_pin_file=$etc/so-pin

say() { echo "init-token: $*" >&2; }
die() { say "$*"; exit 1; }

umask 077
unset P11KMS_PIN

[ -x "$bin" ] || die "no p11kms binary at $bin (set P11KMS_BIN)"
[ -r "$module" ] || die "no PKCS#11 module at $module (install softhsm2, or set P11KMS_MODULE)"
command -v "$tool" >/dev/null || die "pkcs11-tool not found (install opensc, or set PKCS11_TOOL)"

# The token, found by its label (slot numbers change).
has_token() {
  "$tool" --module "$module" --list-token-slots 2>/dev/null | awk -v want="$label" '
    /^[[:space:]]*token label[[:space:]]*:/ {
      value = substr($0, index($0, ":") + 1); sub(/^[[:space:]]+/, "", value); sub(/[[:space:]]+$/, "", value)
      if (value == want) found = 1
    }
    END { exit found ? 0 : 1 }'
}

# Any module but SoftHSM: never initialise a slot (a vendor's free slot or partition is not ours to format), never
# write a PIN or a SoftHSM config; only the first root key, in a token that exists.
case "$(basename "$module")" in
  libsofthsm2.so*) ;;
  *)
    say "$module is not SoftHSM: creating no token, writing no PIN (deploy/hsm/README.md)"
    has_token || die "no token labelled '$label' in $module: create the partition and its crypto user with the vendor's tools first (deploy/hsm/README.md); this script creates tokens only in SoftHSM"
    [ -s "$pin_file" ] || die "the token '$label' exists but the PIN file $pin_file is missing: write the crypto user's PIN there (mode 0400)"
    key_id=$("$bin" init --module "$module" --token-label "$label" --pin-file "$pin_file") || die "p11kms init failed"
    say "current root key: $key_id"
    echo "$key_id"
    exit 0
    ;;
esac

# This script's own SoftHSM config always wins over one inherited from the caller.
export SOFTHSM2_CONF=$conf
unset P11KMS_SOFTHSM_CONF

mkdir -p "$etc" "$tokens"
chmod 0700 "$etc" "$tokens"

# 1. SoftHSM config: written once; an admin's edits are kept.
if [ ! -f "$conf" ]; then
  printf '%s\n' \
    "# SoftHSM2 config for p11kms (written by init-token.sh)" \
    "directories.tokendir = $tokens" \
    "objectstore.backend = file" \
    "log.level = ERROR" \
    "slots.removable = false" > "$conf.tmp"
  chmod 0600 "$conf.tmp"
  mv "$conf.tmp" "$conf"
  say "wrote $conf"
fi

# 2. The token: has_token above.

# 3. PINs: 32 random characters each, written through a temporary file so a crash never leaves half a PIN. A PIN
#    file is only ever created together with its token: a token whose PIN file is gone needs the backup, not a new
#    random PIN (which would only count failed logins against it).
random_pin() { head -c 24 /dev/urandom | base64 | tr '+/' '-_'; }
write_pin() { # $1 = file
  random_pin > "$1.tmp"
  chmod 0400 "$1.tmp"
  mv -f "$1.tmp" "$1"
  say "wrote a random PIN to $1 (mode 0400)"
}

if has_token; then
  [ -s "$pin_file" ] || die "the token '$label' exists but its PIN file $pin_file is missing: restore it from the backup"
  chmod 0400 "$pin_file"
  say "token '$label' exists"
else
  [ "$create" = yes ] || die "the token '$label' is not in $tokens and P11KMS_CREATE_TOKEN=$create, so no token (and no root key) of this node's own is created: copy $pin_file, $so_pin_file and the token directory $tokens from the control-plane node that holds the token (deploy/kubeadm/README.md, \"Several control-plane nodes\"); on the first node only, create it once with P11KMS_CREATE_TOKEN=yes"
  [ -s "$pin_file" ] || write_pin "$pin_file"
  [ -s "$so_pin_file" ] || write_pin "$so_pin_file"
  chmod 0400 "$pin_file" "$so_pin_file"
  # SoftHSM always offers one uninitialised slot; pkcs11-tool lists it with "token state: uninitialized".
  free_slot=$("$tool" --module "$module" --list-slots 2>/dev/null | awk '
    /^Slot [0-9]+ \(0x[0-9a-fA-F]+\)/ { id = $3; gsub(/[():]/, "", id) }
    /token state:[[:space:]]*uninitialized/ { if (id != "") { print id; exit } }')
  [ -n "$free_slot" ] || die "SoftHSM offers no free slot in $tokens"
  so_pin=$(cat "$so_pin_file")
  user_pin=$(cat "$pin_file")
  P11KMS_BOOTSTRAP_SO_PIN=$so_pin \
    "$tool" --module "$module" --slot "$free_slot" --init-token --label "$label" \
      --so-pin env:P11KMS_BOOTSTRAP_SO_PIN >/dev/null 2>&1 || die "initialising the token '$label' failed"
  P11KMS_BOOTSTRAP_SO_PIN=$so_pin P11KMS_BOOTSTRAP_PIN=$user_pin \
    "$tool" --module "$module" --token-label "$label" --init-pin \
      --so-pin env:P11KMS_BOOTSTRAP_SO_PIN --pin env:P11KMS_BOOTSTRAP_PIN >/dev/null 2>&1 || die "setting the user PIN of '$label' failed"
  unset so_pin user_pin
  has_token || die "the token '$label' is not visible after creating it"
  say "created token '$label' in $tokens"
fi

# 4. The first root key (p11kms init changes nothing when the token already has a current key).
key_id=$("$bin" init --module "$module" --token-label "$label" --pin-file "$pin_file" --softhsm-conf "$conf") || die "p11kms init failed"
say "current root key: $key_id"
echo "$key_id"
