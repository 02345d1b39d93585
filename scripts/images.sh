#!/usr/bin/env bash
# Dorado's container images, built without a registry: static (musl) binaries, then
# OCI images FROM scratch for the runtime (`dorado`) and the webhook (`dorado-webhook`),
# an etcd image made from Debian's etcd binary, and image archives that
# `kind load image-archive`, `k3d image import` and `ctr images import` accept.
#
# Usage:
#   scripts/images.sh [--out DIR] [--engine podman|buildah|docker] [--no-archives]
#                     [--only runtime,webhook,etcd]
#       everything (or the images named by --only): binaries, images, archives in
#       DIR (default /var/cache/dorado/images, outside the clone)
#   scripts/images.sh binaries DIR [dorado|dorado-webhook ...]
#       only the static binaries, installed into DIR (what runtime/Dockerfile and
#       webhook/Dockerfile run, so both paths build the same binaries the same way)
#   scripts/images.sh context runtime|webhook DIR
#       build that image's binary and write its build context to DIR (DIR/rootfs is
#       the image's file system, DIR/Containerfile its FROM scratch recipe); the
#       multi-stage Dockerfiles copy DIR/rootfs into their scratch stage
#   scripts/images.sh names
#       print the image names this script builds, one per line (name=reference)
#
# Environment: CARGO_TARGET_DIR (default target/), CARGO (default cargo).
# Image names: localhost/dorado/{runtime,webhook}:<workspace version> and
# localhost/dorado/etcd:<etcd version> (our own build of Debian's etcd, under our name).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# The musl target of the build machine (x86_64 or aarch64).
MUSL_TARGET="$(uname -m)-unknown-linux-musl"
# The image profile: release without debug info, symbols stripped (Cargo.toml).
PROFILE=image
# Image labels and names.
VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' Cargo.toml)"
SOURCE="$(sed -n '/^\[workspace.package\]/,/^\[/ s/^repository *= *"\(.*\)"/\1/p' Cargo.toml)"
REVISION="${DORADO_REVISION:-$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)}"
PREFIX=localhost/dorado
# Debian's etcd binary (package etcd-server) and its version.
ETCD_BIN="${ETCD_BIN:-/usr/bin/etcd}"
ETCDCTL_BIN="${ETCDCTL_BIN:-/usr/bin/etcdctl}"
# The non-root user of every image (distroless' "nonroot"; the manifests and the
# webhook's rewrite use the same uid/gid).
USER_ID=65532

log() { printf '=== %s\n' "$*" >&2; }
die() { printf 'images.sh: %s\n' "$*" >&2; exit 1; }

# The one cargo invocation that builds the static binaries. ring's C code needs a musl C
# compiler (musl-gcc from musl-tools); nothing else is linked but libc.
build_binaries() {
  local bins=("$@") args=() b
  [ ${#bins[@]} -gt 0 ] || bins=(dorado dorado-webhook)
  for b in "${bins[@]}"; do
    case "$b" in
      dorado) args+=(-p dorado --bin dorado) ;;
      dorado-webhook) args+=(-p dorado-webhook --bin dorado-webhook) ;;
      *) die "unknown binary $b (expected dorado or dorado-webhook)" ;;
    esac
  done
  command -v musl-gcc >/dev/null || die "musl-gcc is missing (apt-get install musl-tools)"
  local cc_var="CC_${MUSL_TARGET//-/_}"
  export "$cc_var=${!cc_var:-musl-gcc}"
  "${CARGO:-cargo}" build --locked --profile "$PROFILE" --target "$MUSL_TARGET" "${args[@]}"
}

# Where build_binaries leaves binary $1.
binary_path() {
  local target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
  echo "$target_dir/$MUSL_TARGET/$PROFILE/$1"
}

# Fail unless $1 is a static executable.
check_static() {
  local f="$1" desc
  desc="$(file -L "$f")"
  case "$desc" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) die "$f is not static: $desc" ;;
  esac
  # ldd says "not a dynamic executable" (static) or "statically linked" (static-pie).
  local libs
  libs="$(ldd "$f" 2>&1 || true)"
  case "$libs" in
    *"not a dynamic executable"* | *"statically linked"*) ;;
    *) die "$f is not static: ldd lists $(tr '\n' ' ' <<<"$libs")" ;;
  esac
}

# binaries DIR [names]: build and install into DIR.
cmd_binaries() {
  [ $# -ge 1 ] || die "usage: images.sh binaries DIR [dorado|dorado-webhook ...]"
  local out="$1" b
  shift
  local bins=("$@")
  [ ${#bins[@]} -gt 0 ] || bins=(dorado dorado-webhook)
  build_binaries "${bins[@]}"
  mkdir -p "$out"
  for b in "${bins[@]}"; do
    check_static "$(binary_path "$b")"
    install -m 0755 "$(binary_path "$b")" "$out/$b"
  done
}

etcd_version() {
  local v
  v="$("$ETCD_BIN" --version | sed -n 's/^etcd Version: *//p')"
  [ -n "$v" ] || die "cannot read the version of $ETCD_BIN"
  echo "$v"
}

cmd_names() {
  echo "runtime=$PREFIX/runtime:$VERSION"
  echo "webhook=$PREFIX/webhook:$VERSION"
  echo "etcd=$PREFIX/etcd:$(etcd_version)"
}

pick_engine() {
  local e
  for e in podman buildah docker; do
    if command -v "$e" >/dev/null && { [ "$e" != docker ] || docker info >/dev/null 2>&1; }; then
      echo "$e"
      return
    fi
  done
  die "none of podman, buildah or docker (with a reachable daemon) is installed"
}

# build_image ENGINE CONTEXT NAME: build CONTEXT/Containerfile as NAME. The image
# NAME pointed at before is removed when nothing else uses it: every rebuild would
# otherwise leave a dangling image behind, and repeated runs fill the disk.
build_image() {
  local engine="$1" ctx="$2" name="$3" old new
  old="$(image_id "$engine" "$name")"
  build_image_as "$engine" "$ctx" "$name"
  new="$(image_id "$engine" "$name")"
  if [ -n "$old" ] && [ "$old" != "$new" ]; then
    "$engine" rmi "$old" >/dev/null 2>&1 || true
  fi
}

# image_id ENGINE NAME: the id NAME points at, empty when there is none.
image_id() {
  case "$1" in
    buildah) buildah inspect --type image --format '{{.FromImageID}}' "$2" 2>/dev/null || true ;;
    *) "$1" image inspect --format '{{.Id}}' "$2" 2>/dev/null || true ;;
  esac
}

build_image_as() {
  local engine="$1" ctx="$2" name="$3"
  case "$engine" in
    # FROM scratch with COPY only: no RUN step, no container is started.
    podman) podman build --quiet --no-cache --format oci -t "$name" -f "$ctx/Containerfile" "$ctx" >/dev/null ;;
    buildah) buildah bud --quiet --no-cache --format oci -t "$name" -f "$ctx/Containerfile" "$ctx" >/dev/null ;;
    docker) docker build --quiet --no-cache -t "$name" -f "$ctx/Containerfile" "$ctx" >/dev/null ;;
  esac
}

# save_archive ENGINE NAME FILE: a docker-archive tar (kind, k3d and ctr all import it).
save_archive() {
  local engine="$1" name="$2" file="$3"
  rm -f "$file"
  case "$engine" in
    podman) podman save --quiet --format docker-archive -o "$file" "$name" ;;
    buildah) buildah push --quiet "$name" "docker-archive:$file:$name" ;;
    docker) docker save -o "$file" "$name" ;;
  esac
}

labels() {
  local title="$1" version="$2" description="$3"
  cat <<EOF
LABEL org.opencontainers.image.title="$title" \\
      org.opencontainers.image.description="$description" \\
      org.opencontainers.image.version="$version" \\
      org.opencontainers.image.source="$SOURCE" \\
      org.opencontainers.image.revision="$REVISION" \\
      org.opencontainers.image.licenses="Apache-2.0"
EOF
}

# A minimal /etc/passwd and /etc/group naming the non-root user (for tools that look it up).
write_users() {
  local etc="$1"
  mkdir -p "$etc"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' \
    "$USER_ID" "$USER_ID" >"$etc/passwd"
  printf 'root:x:0:\nnonroot:x:%s:\n' "$USER_ID" >"$etc/group"
}

context_runtime() {
  local ctx="$1"
  install -D -m 0755 "$(binary_path dorado)" "$ctx/rootfs/usr/local/bin/dorado"
  write_users "$ctx/rootfs/etc"
  # /tmp and /etc/dorado/module are volumes in rewritten pods (emptyDir, ConfigMap);
  # the directories exist so that a plain `podman run` works as well.
  mkdir -p "$ctx/rootfs/tmp" "$ctx/rootfs/etc/dorado/module"
  chmod 1777 "$ctx/rootfs/tmp"
  cat >"$ctx/Containerfile" <<EOF
FROM scratch
COPY rootfs/ /
$(labels dorado "$VERSION" "Dorado runtime: a replica of a wasm state machine ordered through etcd")
ENV PATH=/usr/local/bin
USER $USER_ID:$USER_ID
EXPOSE 7070
ENTRYPOINT ["/usr/local/bin/dorado"]
CMD ["run"]
EOF
}

context_webhook() {
  local ctx="$1"
  install -D -m 0755 "$(binary_path dorado-webhook)" "$ctx/rootfs/usr/local/bin/dorado-webhook"
  write_users "$ctx/rootfs/etc"
  cat >"$ctx/Containerfile" <<EOF
FROM scratch
COPY rootfs/ /
$(labels dorado-webhook "$VERSION" "Dorado admission webhook: rewrites annotated pods into Dorado runtimes")
ENV PATH=/usr/local/bin
USER $USER_ID:$USER_ID
EXPOSE 8443 8080
ENTRYPOINT ["/usr/local/bin/dorado-webhook"]
CMD ["serve"]
EOF
}

# Copy executable $1 into rootfs $2 at the same path, with every shared object `ldd`
# names (at its path and at the path the loader looks for it), resolving symlinks.
copy_with_libs() {
  local bin="$1" rootfs="$2" lib
  install -D -m 0755 "$(readlink -f "$bin")" "$rootfs$bin"
  for lib in $(ldd "$bin" | awk '/=> \// {print $3} /^\t\// {print $1}'); do
    install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
  done
}

context_etcd() {
  local ctx="$1" version="$2" rootfs="$1/rootfs"
  [ -x "$ETCD_BIN" ] || die "$ETCD_BIN is missing (apt-get install etcd-server)"
  copy_with_libs "$ETCD_BIN" "$rootfs"
  # etcdctl for the maintenance commands of manifests/README.md (defrag, alarm list).
  if [ -x "$ETCDCTL_BIN" ]; then copy_with_libs "$ETCDCTL_BIN" "$rootfs"; fi
  write_users "$rootfs/etc"
  # Go's resolver reads these: files first, then DNS (cluster names of the peers).
  printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
  : >"$rootfs/etc/hosts"
  mkdir -p "$rootfs/tmp" "$ctx/data"
  chmod 1777 "$rootfs/tmp"
  # The data directory (a volume in the StatefulSet), owned by the non-root user: a
  # volume created from the image (podman/docker named volumes) inherits the owner.
  chmod 0700 "$ctx/data"
  cat >"$ctx/Containerfile" <<EOF
FROM scratch
COPY rootfs/ /
COPY --chown=$USER_ID:$USER_ID data/ /var/lib/etcd/
$(labels etcd "$version" "etcd $version, Debian's build (package etcd-server) with its libraries, run as non-root")
# No ETCD_* defaults here: etcd refuses an environment variable shadowed by its flag,
# and the manifests pass --data-dir=/var/lib/etcd/data.
ENV PATH=/usr/local/bin:/usr/bin:/bin
USER $USER_ID:$USER_ID
VOLUME /var/lib/etcd
EXPOSE 2379 2380 2381
ENTRYPOINT ["/usr/bin/etcd"]
EOF
}

cmd_all() {
  local out=/var/cache/dorado/images engine="" archives=1 only=runtime,webhook,etcd
  while [ $# -gt 0 ]; do
    case "$1" in
      --only) only="$2"; shift 2 ;;
      --out) out="$2"; shift 2 ;;
      --engine) engine="$2"; shift 2 ;;
      --no-archives) archives=0; shift ;;
      -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
      *) die "unknown argument $1 (see --help)" ;;
    esac
  done
  [ -n "$engine" ] || engine="$(pick_engine)"
  case "$out" in
    "$ROOT" | "$ROOT"/*) log "note: --out $out is inside the clone" ;;
  esac
  mkdir -p "$out"
  local i want=() bins=()
  IFS=, read -r -a want <<<"$only"
  for i in "${want[@]}"; do
    case "$i" in
      runtime) bins+=(dorado) ;;
      webhook) bins+=(dorado-webhook) ;;
      etcd) ;;
      *) die "--only: unknown image $i (expected runtime, webhook, etcd)" ;;
    esac
  done
  if [ ${#bins[@]} -gt 0 ]; then
    log "static binaries ($MUSL_TARGET, profile $PROFILE): ${bins[*]}"
    build_binaries "${bins[@]}"
    for i in "${bins[@]}"; do check_static "$(binary_path "$i")"; done
  fi

  local work etcd_v
  work="$(mktemp -d "${TMPDIR:-/tmp}/dorado-images.XXXXXX")"
  # shellcheck disable=SC2064 # expand now: $work is local
  trap "rm -rf '$work'" EXIT
  etcd_v="$(etcd_version)"
  local -A names=(
    [runtime]="$PREFIX/runtime:$VERSION"
    [webhook]="$PREFIX/webhook:$VERSION"
    [etcd]="$PREFIX/etcd:$etcd_v"
  )
  for i in "${want[@]}"; do
    case "$i" in
      etcd) context_etcd "$work/etcd" "$etcd_v" ;;
      *) "context_$i" "$work/$i" ;;
    esac
    log "image ${names[$i]} ($engine)"
    build_image "$engine" "$work/$i" "${names[$i]}"
    if [ "$archives" = 1 ]; then
      save_archive "$engine" "${names[$i]}" "$out/dorado-$i.tar"
      printf '%s\t%s\t%s bytes, %s bytes gzip\n' "${names[$i]}" "$out/dorado-$i.tar" \
        "$(stat -c %s "$out/dorado-$i.tar")" "$(gzip -c "$out/dorado-$i.tar" | wc -c)"
    fi
  done
  # Stamp for callers (the end-to-end tests) that rebuild when the inputs change.
  printf 'revision=%s\n' "$REVISION" >"$out/images.stamp"
  cmd_names >>"$out/images.stamp"
}

# context runtime|webhook DIR
cmd_context() {
  [ $# -eq 2 ] || die "usage: images.sh context runtime|webhook DIR"
  case "$1" in
    runtime) cmd_binaries "$2/bin" dorado ;;
    webhook) cmd_binaries "$2/bin" dorado-webhook ;;
    *) die "context: unknown image $1 (expected runtime or webhook)" ;;
  esac
  "context_$1" "$2"
  rm -rf "$2/bin"
}

case "${1:-}" in
  binaries) shift; cmd_binaries "$@" ;;
  context) shift; cmd_context "$@" ;;
  names) cmd_names ;;
  *) cmd_all "$@" ;;
esac
