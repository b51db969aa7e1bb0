#!/usr/bin/env bash
# Builds the loopmix container image with no container registry: the release
# binaries and exactly the shared libraries they load (as `ldd` lists them,
# dynamic loader included) go into a root filesystem assembled here, which
# `docker import` turns into an image. Nothing is pulled.
#
#   deploy/docker/build.sh            # cargo build --release, then the image
#   LOOPMIX_IMAGE=name:tag deploy/docker/build.sh
#   LOOPMIX_SKIP_CARGO=1 deploy/docker/build.sh   # reuse target/release as is
#
# The image holds /usr/local/bin/{loopmix-node,loopmix-directory,
# loopmix-client,loopmix-fileserver,loopmix-testnet-gen} and nothing else: no shell,
# no package manager. Containers run one binary each (see docker-compose.yml).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# cargo honours CARGO_TARGET_DIR; so must we.
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
# LOOPMIX_PROFILE=dev reuses what `cargo test` built (CI); default release.
PROFILE=${LOOPMIX_PROFILE:-release}
case "$PROFILE" in
    release) PROFILE_DIR=release ;;
    dev) PROFILE_DIR=debug ;;
    *) echo "build.sh: LOOPMIX_PROFILE must be release or dev" >&2; exit 2 ;;
esac
IMAGE=${LOOPMIX_IMAGE:-loopmix-testnet:latest}
STAGE="$ROOT/target/loopmix-image"
BINS=(loopmix-node loopmix-directory loopmix-client loopmix-fileserver loopmix-testnet-gen)

cd "$ROOT"
t0=$(date +%s)
if [ -z "${LOOPMIX_SKIP_CARGO:-}" ]; then
    echo "build.sh: cargo build --profile $PROFILE" >&2
    cargo build --profile "$PROFILE"
fi
t1=$(date +%s)

rm -rf "$STAGE"
rootfs="$STAGE/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/loopmix"
chmod 1777 "$rootfs/tmp"

# Copies a host file to the same path under the rootfs, following symlinks
# (so /lib64/ld-linux-x86-64.so.2 lands as a real file where PT_INTERP
# points, whatever the host's /usr merge looks like).
copy_lib() {
    local src=$1
    [ -e "$rootfs$src" ] && return 0
    mkdir -p "$rootfs$(dirname "$src")"
    cp -L "$src" "$rootfs$src"
}

for b in "${BINS[@]}"; do
    src="$TARGET/$PROFILE_DIR/$b"
    if [ ! -x "$src" ]; then
        echo "build.sh: $src is missing (cargo build --profile $PROFILE failed?)" >&2
        exit 1
    fi
    # Debug line tables are for local profiling; the image does not need them.
    if command -v strip >/dev/null 2>&1; then
        strip --strip-debug -o "$rootfs/usr/local/bin/$b" "$src"
    else
        cp "$src" "$rootfs/usr/local/bin/$b"
    fi
    chmod 0755 "$rootfs/usr/local/bin/$b"
    # ldd lines: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and
    # "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
    while read -r lib; do
        copy_lib "$lib"
    done < <(ldd "$src" | awk '
        $2 == "=>" && $3 ~ /^\// { print $3; next }
        $1 ~ /^\// { print $1 }')
done

# Name resolution: glibc >= 2.34 has the files and dns NSS modules built in;
# Docker bind-mounts /etc/hosts and /etc/resolv.conf (its embedded DNS,
# which resolves service names such as auth0 or fileserver).
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
printf 'root:x:0:0:root:/:/nonexistent\nloopmix:x:1789:1789:loopmix:/loopmix:/nonexistent\nnobody:x:65534:65534:nobody:/:/nonexistent\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nloopmix:x:1789:\nnogroup:x:65534:\n' >"$rootfs/etc/group"

# Smoke test outside Docker: the assembled root really runs the binaries
# with only its own libraries (the loader is told to use the rootfs's).
libdirs=$(find "$rootfs" -name 'lib*.so*' -printf '%h\n' | sort -u | paste -sd:)
for b in "${BINS[@]}"; do
    "$rootfs/lib64/ld-linux-x86-64.so.2" --library-path "$libdirs" \
        "$rootfs/usr/local/bin/$b" --version >/dev/null
done

old=$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
echo "build.sh: importing $IMAGE ($(du -sh "$rootfs" | cut -f1) root filesystem)" >&2
tar -C "$rootfs" --numeric-owner --owner=0 --group=0 -cf - . |
    docker import \
        -c 'ENV PATH=/usr/local/bin' \
        -c 'WORKDIR /loopmix' \
        -c 'LABEL org.opencontainers.image.title=loopmix' \
        -c "LABEL org.opencontainers.image.source=$ROOT" \
        -m "loopmix binaries and their shared libraries (deploy/docker/build.sh)" \
        - "$IMAGE" >/dev/null
new=$(docker image inspect --format '{{.Id}}' "$IMAGE")
# The image this replaced (now untagged), unless a container still uses it.
if [ -n "$old" ] && [ "$old" != "$new" ]; then
    docker image rm "$old" >/dev/null 2>&1 || true
fi
t2=$(date +%s)
docker run --rm "$IMAGE" loopmix-node --version >/dev/null
echo "build.sh: $IMAGE ready (cargo $((t1 - t0)) s, image $((t2 - t1)) s)" >&2
