#!/usr/bin/env bash
# The main job on a fresh machine: installs what the build needs (protoc for
# etcd-client, etcd for a real shared store, the wasm32 target for the guest
# modules), builds, and runs `dorado-bench demo`: three replicas of the kv state
# machine, a leader killed with SIGKILL, a replica recreated with empty state.
# Usage: bash scripts/demo.sh [demo flags, see `dorado-bench demo --help`]
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
command -v etcd >/dev/null || need_apt+=(etcd-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} (apt)"
  sudo_if_needed apt-get update -q
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}"
fi
targets="$(rustup target list --installed)"
grep -qx wasm32-unknown-unknown <<<"$targets" || rustup target add wasm32-unknown-unknown

cargo build --release -p dorado-bench
bin="${CARGO_TARGET_DIR:-target}/release/dorado-bench"
exec "$bin" demo "$@"
