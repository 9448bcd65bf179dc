#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine (Debian's checkers and QEMU,
# the aarch64 musl target), then runs formatting, lint and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
for pair in e2fsck:e2fsprogs fsck.vfat:dosfstools mdir:mtools sfdisk:fdisk sgdisk:gdisk \
            cpio:cpio qemu-system-aarch64:qemu-system-arm openssl:openssl file:file \
            bmaptool:bmap-tools zstd:zstd depmod:kmod readelf:binutils xz:xz-utils \
            faketime:faketime cmp:diffutils \
            dpkg-deb:dpkg partx:util-linux wipefs:util-linux setpriv:util-linux \
            losetup:mount script:bsdutils sha256sum:coreutils \
            gpg:gnupg gpgv:gpgv dpkg-scanpackages:dpkg-dev /usr/lib/apt/apt-helper:apt \
            haproxy:haproxy man:man-db; do
  command -v "${pair%:*}" >/dev/null 2>&1 || need_pkgs+=("${pair##*:}")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "test.sh: installing ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
# rust-toolchain.toml names the target; older rustups only install it on request.
rustup target add aarch64-unknown-linux-musl >/dev/null 2>&1 || true

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace "$@"
