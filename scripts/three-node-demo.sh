#!/usr/bin/env bash
# The multi-node procedure of deploy/kubeadm/README.md ("Several control-plane nodes", "Day 2"), step by step, on
# one machine: three (or more) "nodes" are folders DIR/nodeN holding what a control-plane node holds at
#   /etc/p11kms                     -> DIR/nodeN/etc/p11kms          (pin, so-pin, softhsm2.conf, config.yaml)
#   /var/lib/p11kms/softhsm/tokens  -> DIR/nodeN/var/lib/p11kms/softhsm/tokens
#   /var/run/kms/p11kms.sock        -> DIR/nodeN/run/kms/p11kms.sock
# Everything else is what the README says, with these differences only:
#   - the static pod is played by its two parts, run as the kubelet would: the init container (init-token.sh with the
#     manifest's P11KMS_CREATE_TOKEN) and, if it succeeded, `p11kms serve` with the manifest's own flags (read from
#     deploy/kubeadm/p11kms-static-pod.yaml; paths moved into the node folder, the HTTP listener on an ephemeral port
#     since the three plugins share one loopback);
#   - the copies between nodes are `rsync -a --checksum` between folders instead of over ssh;
#   - deploy/config.yaml is installed with the node folder's paths.
# No kubelet, kube-apiserver or kubeadm is involved: what is simulated is everything p11kms does.
#
# Usage: scripts/three-node-demo.sh DIR STEP...      (P11KMS_BIN: the p11kms binary; default .build/debug/p11kms)
# Steps, in the README's order:
#   first-node          node1: create the token and the first root key (P11KMS_CREATE_TOKEN=yes init-token.sh)
#   copy:N              copy pin, so-pin and the token directory from node1 to nodeN
#   join:N              nodeN: install config.yaml, run the static pod (init container, then serve in the background)
#   verify              `p11kms keys --config ...` on every started node lists the same key_ids in the same states
#   stage               node1: `p11kms rotate --stage`; prints the staged key_id
#   copy-tokens:N       copy node1's token directory to nodeN again (its plugin keeps running)
#   promote:N           nodeN: `p11kms rotate`; waits until nodeN's plugin reports the promoted key in Status
#   retire:N=KEY_ID     nodeN: `p11kms retire KEY_ID` (each node's token copy is retired on that node)
#   stop                SIGTERM to every plugin, wait for them
#   all                 first-node, copy:2, copy:3, join:1..3, verify, stage, copy-tokens:2..3, promote:1..3,
#                       verify, retire:1..3 of the old key, verify, then join:4 without a copy (must fail with the
#                       copy instruction), stop
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:?usage: three-node-demo.sh DIR STEP...}
shift
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
bin=${P11KMS_BIN:-$here/.build/debug/p11kms}
manifest=$here/deploy/kubeadm/p11kms-static-pod.yaml
[ -x "$bin" ] || { echo "no p11kms binary at $bin (build it, or set P11KMS_BIN)" >&2; exit 2; }
# An admin's shell: SoftHSM's config comes from p11kms's own settings, never from the caller.
unset SOFTHSM2_CONF P11KMS_SOFTHSM_CONF P11KMS_PIN P11KMS_CONFIG

say() { echo "== $*" >&2; }
root() { echo "$dir/node$1"; }

# The node's p11kms settings for admin commands: deploy/config.yaml with the node folder's paths.
install_config() { # N
  local r; r=$(root "$1")
  install -d -m 0700 "$r/etc/p11kms"
  sed -e "s#/etc/p11kms/#$r/etc/p11kms/#g" -e "s#unix:///var/run/kms/#unix://$r/run/kms/#" \
      -e "s#^http-listen: .*#http-listen: \"off\"#" "$here/deploy/config.yaml" > "$r/etc/p11kms/config.yaml"
  # Each node has its own state directory (key history, token backups), as on separate machines.
  echo "state-dir: $r/var/lib/p11kms/state" >> "$r/etc/p11kms/config.yaml"
  chmod 0600 "$r/etc/p11kms/config.yaml"
}

node_env() { # N: what the init container's image and hostPath mounts give init-token.sh
  local r; r=$(root "$1")
  echo "P11KMS_ETC=$r/etc/p11kms P11KMS_STATE=$r/var/lib/p11kms P11KMS_BIN=$bin"
}

# The manifest's P11KMS_CREATE_TOKEN and the plugin container's flags.
manifest_create_token() {
  awk '/name: P11KMS_CREATE_TOKEN/ { getline; gsub(/.*value: *"?|"?[[:space:]]*(#.*)?$/, ""); print; exit }' "$manifest"
}
manifest_serve_flags() { # N
  local r; r=$(root "$1")
  grep -E '^[[:space:]]+- --[a-z0-9-]+=' "$manifest" | sed -E 's/^[[:space:]]+- //' | sed \
    -e "s#=/etc/p11kms/#=$r/etc/p11kms/#" -e "s#=unix:///var/run/kms/#=unix://$r/run/kms/#" \
    -e "s#^--http-listen=.*#--http-listen=127.0.0.1:0#"
}

keys() { "$bin" keys --config "$(root "$1")/etc/p11kms/config.yaml" "${@:2}"; }
status_key() { "$bin" status --listen "unix://$(root "$1")/run/kms/p11kms.sock" --format json 2>/dev/null \
  | sed -n 's/.*"key_id":"\([^"]*\)".*/\1/p'; }
wait_status() { # N KEY_ID|any: until the plugin answers healthy with that key_id (30 s)
  local deadline=$((SECONDS + 30))
  while [ $SECONDS -lt $deadline ]; do
    if "$bin" status --listen "unix://$(root "$1")/run/kms/p11kms.sock" >/dev/null 2>&1; then
      [ "$2" = any ] || [ "$(status_key "$1")" = "$2" ] && return 0
    fi
    sleep 0.2
  done
  echo "node$1: the plugin did not report ${2} in time; log: $(root "$1")/serve.log" >&2
  tail -5 "$(root "$1")/serve.log" >&2 || true
  return 1
}
started_nodes() { for f in "$dir"/node*/serve.pid; do [ -e "$f" ] && basename "$(dirname "$f")" | sed 's/node//'; done; }

step_first_node() {
  say "node1: create the token and the first root key (once, on the first node only)"
  env $(node_env 1) P11KMS_CREATE_TOKEN=yes "$here/deploy/bootstrap/init-token.sh"
}

step_copy() { # N
  local from to; from=$(root 1); to=$(root "$1")
  say "copy node1 -> node$1: /etc/p11kms/pin, /etc/p11kms/so-pin, /var/lib/p11kms/softhsm/tokens/"
  install -d -m 0700 "$to/etc/p11kms" "$to/var/lib/p11kms/softhsm/tokens"
  rsync -a --checksum "$from/etc/p11kms/pin" "$from/etc/p11kms/so-pin" "$to/etc/p11kms/"
  rsync -a --checksum "$from/var/lib/p11kms/softhsm/tokens/" "$to/var/lib/p11kms/softhsm/tokens/"
}

step_join() { # N
  local r create; r=$(root "$1"); create=$(manifest_create_token)
  say "node$1: install config.yaml; static pod: init container (P11KMS_CREATE_TOKEN=$create), then p11kms serve"
  install_config "$1"
  install -d -m 0755 "$r/run/kms"
  env $(node_env "$1") P11KMS_CREATE_TOKEN="$create" "$here/deploy/bootstrap/init-token.sh" >/dev/null \
    || { echo "node$1: the init container failed; the plugin is not started" >&2; return 1; }
  local flags; mapfile -t flags < <(manifest_serve_flags "$1")
  # In the background, with no descriptor of this script's caller (an open pipe would keep the caller waiting).
  (
    for fd in /proc/$BASHPID/fd/*; do fd=${fd##*/}; [ "$fd" -le 2 ] || eval "exec $fd>&-" 2>/dev/null || true; done
    P11KMS_STATE_DIR="$r/var/lib/p11kms/state" exec "$bin" serve "${flags[@]}" </dev/null >>"$r/serve.log" 2>&1
  ) &
  echo $! > "$r/serve.pid"
  wait_status "$1" any
  say "node$1: serving on unix://$r/run/kms/p11kms.sock, key $(status_key "$1")"
}

step_verify() {
  local first="" n listing
  for n in $(started_nodes); do
    listing=$(keys "$n" | awk 'NR > 1 { print $1, $2 }')
    echo "node$n:"; echo "$listing" | sed 's/^/  /'
    if [ -z "$first" ]; then first=$listing
    elif [ "$listing" != "$first" ]; then echo "node$n lists other keys than the first node" >&2; return 1; fi
  done
  say "every node lists the same key_ids"
}

step_stage() {
  say "node1: p11kms rotate --stage"
  "$bin" rotate --stage --config "$(root 1)/etc/p11kms/config.yaml"
}

step_copy_tokens() { # N
  say "copy node1's token directory -> node$1 (plugin running)"
  rsync -a --checksum "$(root 1)/var/lib/p11kms/softhsm/tokens/" "$(root "$1")/var/lib/p11kms/softhsm/tokens/"
}

step_promote() { # N
  say "node$1: p11kms rotate"
  local key; key=$("$bin" rotate --config "$(root "$1")/etc/p11kms/config.yaml")
  echo "$key"
  wait_status "$1" "$key"
}

step_retire() { # N KEY_ID
  say "node$1: p11kms retire $2"
  "$bin" retire "$2" --config "$(root "$1")/etc/p11kms/config.yaml"
}

step_stop() {
  local n pid
  for n in $(started_nodes); do
    pid=$(cat "$(root "$n")/serve.pid")
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$(root "$n")/serve.pid"
    say "node$n: stopped"
  done
}

step_all() {
  local started=$SECONDS
  step_first_node >/dev/null
  step_copy 2; step_copy 3
  step_join 1; step_join 2; step_join 3
  step_verify
  local old; old=$(status_key 1)
  local staged; staged=$(step_stage)
  step_copy_tokens 2; step_copy_tokens 3
  for n in 1 2 3; do [ "$(status_key "$n")" = "$old" ] || { echo "node$n switched before promotion" >&2; return 1; }; done
  step_promote 1 >/dev/null; step_promote 2 >/dev/null; step_promote 3 >/dev/null
  for n in 1 2 3; do [ "$(status_key "$n")" = "$staged" ] || { echo "node$n is not on $staged" >&2; return 1; }; done
  step_verify
  for n in 1 2 3; do step_retire "$n" "$old"; done
  step_verify
  if step_join 4 2>"$dir/node4.err"; then echo "node4 started without the copy" >&2; return 1; fi
  grep -q "copy .*pin" "$dir/node4.err" || { echo "node4 failed without the copy instruction" >&2; cat "$dir/node4.err" >&2; return 1; }
  say "node4 (no copy) refused: $(grep -o 'so no token.*' "$dir/node4.err" | head -c 200)..."
  step_stop
  say "all steps passed in $((SECONDS - started)) s"
}

trap 'echo "three-node-demo: step failed" >&2; [ "$*" != all ] || step_stop' ERR
for step in "$@"; do
  case "$step" in
    first-node) step_first_node ;;
    copy:*) step_copy "${step#copy:}" ;;
    join:*) step_join "${step#join:}" ;;
    verify) step_verify ;;
    stage) step_stage ;;
    copy-tokens:*) step_copy_tokens "${step#copy-tokens:}" ;;
    promote:*) step_promote "${step#promote:}" ;;
    retire:*=*) spec=${step#retire:}; step_retire "${spec%%=*}" "${spec#*=}" ;;
    stop) step_stop ;;
    all) step_all ;;
    *) echo "unknown step: $step" >&2; exit 2 ;;
  esac
done
