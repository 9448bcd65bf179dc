#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine (Debian's checkers and QEMU,
# the aarch64 musl target), then runs formatting, lint and every test of the workspace.
#   ./scripts/test.sh            everything (what CI runs)
#   ./scripts/test.sh --fast     unit, writer, parser and agent tests: no Debian mirror, no QEMU
# Arguments after that go to cargo test (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
if [ "${1:-}" = --fast ]; then
  fast=1
  shift
fi

need_pkgs=()
for pair in e2fsck:e2fsprogs fsck.vfat:dosfstools mdir:mtools sfdisk:fdisk sgdisk:gdisk \
            cpio:cpio qemu-system-aarch64:qemu-system-arm openssl:openssl file:file \
            bmaptool:bmap-tools zstd:zstd depmod:kmod readelf:binutils xz:xz-utils \
            faketime:faketime cmp:diffutils \
            dpkg-deb:dpkg partx:util-linux wipefs:util-linux setpriv:util-linux \
            losetup:mount script:bsdutils sha256sum:coreutils \
            gpg:gnupg gpgv:gpgv dpkg-scanpackages:dpkg-dev /usr/lib/apt/apt-helper:apt \
            haproxy:haproxy man:man-db tftp:tftp-hpa atftp:atftp curl:curl \
            busybox:busybox tcpdump:tcpdump ip:iproute2 unsquashfs:squashfs-tools \
            fdtget:device-tree-compiler wpa_supplicant:wpasupplicant; do
  command -v "${pair%:*}" >/dev/null 2>&1 || need_pkgs+=("${pair##*:}")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "test.sh: installing ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
if [ $fast = 0 ]; then
  # Pi 4 images boot in QEMU's raspi4b machine (QEMU >= 9; bookworm has it in backports).
  ./scripts/install-qemu10.sh
fi
# rust-toolchain.toml names the target; older rustups only install it on request.
rustup target add aarch64-unknown-linux-musl >/dev/null 2>&1 || true

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
if [ $fast = 1 ]; then
  # The tests that need neither the Debian archive nor QEMU; the others build real images.
  cargo test -p piimg --lib --bins --test cpio --test disk --test ext4 --test fat --test fs_cli \
    --test fuzz --test profiles "$@"
  cargo test -p piimg-agent "$@"
else
  cargo test --workspace "$@"
fi
