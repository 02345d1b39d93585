#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kube-scheduler from the
# k8s.io/kubernetes Go module pinned in go.mod (staging modules pinned with
# `replace`, kubernetes#79384) into a cache outside the clone, keyed by version.
# A warm cache (binaries present, built from this go.sum) is a no-op.
#
#   bash tests/controlplane/build.sh            # prints the directory holding the binaries
#   DORADO_CONTROLPLANE_CACHE=DIR bash ...      # cache root (default /var/cache/dorado)
#
# Only go.mod and go.sum are committed; Go fetches the sources from the module
# proxy into the module cache under the same root.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="${DORADO_CONTROLPLANE_CACHE:-/var/cache/dorado}"
version="$(sed -n 's/^require k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' "$here/go.mod")"
[ -n "$version" ] || { echo "build.sh: no 'require k8s.io/kubernetes vX.Y.Z' line in $here/go.mod" >&2; exit 1; }
out="$root/controlplane/$version"
stamp="$out/go.sum.sha256"
want="$(sha256sum "$here/go.sum" | cut -d' ' -f1)"
bins=(kube-apiserver kube-controller-manager kube-scheduler)
ok=1
for b in "${bins[@]}"; do [ -x "$out/$b" ] || ok=0; done
if [ "$ok" = 1 ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "$out"
  exit 0
fi
command -v go >/dev/null || { echo "build.sh: go is required to build the Kubernetes control plane (https://go.dev/dl/)" >&2; exit 1; }
export GOPATH="$root/go" GOMODCACHE="$root/go/mod" GOCACHE="$root/go/build" GOFLAGS=-mod=readonly
mkdir -p "$out"
cd "$here"
start=$(date +%s)
echo "build.sh: building ${bins[*]} $version into $out (cold: several minutes)" >&2
pkgs=()
for b in "${bins[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
# The version the binaries report (what `hack/lib/version.sh` stamps in a release build;
# without it they say v0.0.0-master, and kubectl and the node see a skewed version).
minor="${version#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
go build -trimpath -ldflags="$ldflags" -o "$out/" "${pkgs[@]}" >&2
echo "$want" > "$stamp"
echo "build.sh: done in $(( $(date +%s) - start )) s" >&2
echo "$out"
