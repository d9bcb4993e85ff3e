#!/usr/bin/env bash
# Starts a one-node skiff cluster on this machine: installs dependencies, builds skiff (release),
# starts `skiff server` in the background and writes an admin kubeconfig.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${SKIFF_DATA_DIR:-/var/lib/skiff}
KUBECONFIG_OUT=${SKIFF_KUBECONFIG:-/etc/skiff/kubeconfig.yaml}
LOG=${SKIFF_LOG_FILE:-/var/log/skiff.log}

scripts/install-deps.sh
cargo build --release --bin skiff
install -m 0755 target/release/skiff /usr/local/bin/skiff

if [ -f "$DATA_DIR/skiff.pid" ] && kill -0 "$(cat "$DATA_DIR/skiff.pid")" 2>/dev/null; then
  echo "skiff is already running (pid $(cat "$DATA_DIR/skiff.pid"))"
else
  mkdir -p "$DATA_DIR" "$(dirname "$KUBECONFIG_OUT")"
  rm -f "$KUBECONFIG_OUT"
  nohup /usr/local/bin/skiff server --data-dir "$DATA_DIR" --write-kubeconfig "$KUBECONFIG_OUT" >>"$LOG" 2>&1 &
  echo $! > "$DATA_DIR/skiff.pid"
  for _ in $(seq 1 100); do
    [ -s "$KUBECONFIG_OUT" ] && break
    sleep 0.1
  done
fi
[ -s "$KUBECONFIG_OUT" ] || { echo "skiff did not start; see $LOG" >&2; exit 1; }
kubectl --kubeconfig "$KUBECONFIG_OUT" get namespaces
echo
echo "skiff is running (log: $LOG). Use it with:"
echo "  export KUBECONFIG=$KUBECONFIG_OUT"
