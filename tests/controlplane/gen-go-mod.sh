#!/usr/bin/env bash
# Writes go.mod for k8s.io/kubernetes at $1 with every staging module pinned (kubernetes#79384).
set -euo pipefail
v=$1
mod="$(go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
staging=$(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$mod")
{
  echo "module dorado.invalid/controlplane"
  echo
  echo "go 1.26.0"
  echo
  echo "require k8s.io/kubernetes $v"
  echo
  echo "replace ("
  for m in $staging; do echo "	$m => $m v0.${v#v1.}"; done
  echo ")"
} > go.mod
