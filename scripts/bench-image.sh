#!/usr/bin/env bash
# Builds the same MBR disk image (FAT32 boot + ext4 root, ~300 MB of files) two ways and prints
# wall time, the ratio and peak RSS of each, plus `cp -a` of the same tree as a copy baseline:
#   1. piimg fs image
#   2. the usual pipeline: mke2fs -t ext4 -d, mkfs.vfat + mcopy -s, sfdisk, glued with dd conv=notrunc
# Usage: scripts/bench-image.sh            (BENCH_DIR=... to choose the work folder, KEEP=1 to keep it)
# Timing is wall clock on a warm page cache (the tree is generated first); run it on an idle machine.
set -euo pipefail

# GNU time for peak RSS (-v); the shell builtin cannot report it.
if ! command -v /usr/bin/time >/dev/null; then
    apt-get install -y time
fi
for tool in mke2fs mkfs.vfat mcopy sfdisk dd cargo; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done

here="$(cd "$(dirname "$0")/.." && pwd)"
work="${BENCH_DIR:-$(mktemp -d /var/tmp/piimg-bench.XXXXXX)}"
mkdir -p "$work"
if [ "${KEEP:-0}" != 1 ]; then trap 'rm -rf "$work"' EXIT; fi
export SOURCE_DATE_EPOCH=1700000000

echo "== building piimg (release)"
(cd "$here" && cargo build --release -p piimg --bin piimg --quiet)
piimg="${CARGO_TARGET_DIR:-$here/target}/release/piimg"

echo "== generating the tree in $work"
boot="$work/boot" root="$work/root"
rm -rf "$boot" "$root"
mkdir -p "$boot/overlays" "$root/usr/lib/big" "$root/etc"
head -c $((30 << 20)) /dev/urandom >"$boot/vmlinuz"
for i in $(seq -w 1 300); do head -c 2048 /dev/urandom >"$boot/overlays/overlay-$i.dtbo"; done
printf 'arm_64bit=1\nkernel=vmlinuz\n' >"$boot/config.txt"
head -c $((60 << 20)) /dev/urandom >"$root/usr/lib/big/one-60MB-file"
# 8000 small files in 80 folders, 1-48 KiB each (~200 MB): one urandom stream cut into pieces
python3 - "$root" <<'EOF'
import os, sys
root = sys.argv[1]
src = open('/dev/urandom', 'rb')
for d in range(80):
    p = os.path.join(root, 'usr/share/pkg%02d' % d)
    os.makedirs(p, exist_ok=True)
    for f in range(100):
        n = 1024 * (1 + (d * 100 + f) * 7919 % 48)
        with open(os.path.join(p, 'file%03d.dat' % f), 'wb') as o:
            o.write(src.read(n))
EOF
echo node1 >"$root/etc/hostname"
tree_bytes=$(du -sb "$boot" "$root" | awk '{s+=$1} END {print s}')
tree_files=$(find "$boot" "$root" -type f | wc -l)
echo "   $tree_files files, $tree_bytes bytes"

disk=$((640 << 20)) bootsz=$((64 << 20))
rootstart=$(((1 << 20) + bootsz))
rootsz=$((disk - rootstart))

measure() { # name cmd...: runs under GNU time, prints "name seconds maxrss_kib"
    local name=$1; shift
    /usr/bin/time -v -o "$work/$name.time" "$@" >"$work/$name.log" 2>&1 || {
        cat "$work/$name.log" >&2; exit 1; }
    local wall rss
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/$name.time" |
        awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/$name.time")
    echo "$name $wall $rss" >>"$work/results"
}
: >"$work/results"

echo "== piimg fs image"
rm -f "$work/piimg.img"
measure piimg "$piimg" fs image --boot "$boot" --root "$root" --out "$work/piimg.img" \
    --table mbr --size $disk --boot-size $bootsz --owner 0:0

echo "== pipeline: sfdisk + mkfs.vfat/mcopy + mke2fs -d + dd"
cat >"$work/pipeline.sh" <<EOF
set -euo pipefail
cd "$work"
rm -f pipe.img boot.vfat root.ext4
truncate -s $disk pipe.img
printf 'label: dos\nstart=2048, size=$((bootsz / 512)), type=c\nstart=$((rootstart / 512)), type=83\n' |
    sfdisk -q pipe.img
truncate -s $bootsz boot.vfat
mkfs.vfat -F 32 -n BOOTFS -h 2048 boot.vfat >/dev/null
mcopy -s -i boot.vfat "$boot"/* ::/
mke2fs -q -t ext4 -L rootfs -E root_owner=0:0 -d "$root" root.ext4 $((rootsz / 1024))k
dd if=boot.vfat of=pipe.img bs=1M seek=1 conv=notrunc,sparse status=none
dd if=root.ext4 of=pipe.img bs=1M seek=$((rootstart >> 20)) conv=notrunc,sparse status=none
rm -f boot.vfat root.ext4
EOF
measure pipeline bash "$work/pipeline.sh"

echo "== cp -a baseline"
rm -rf "$work/copy" && mkdir -p "$work/copy"
measure cp_a cp -a "$boot" "$root" "$work/copy/"

echo "== checks"
dd if="$work/piimg.img" of="$work/p1.vfat" bs=1M skip=1 count=$((bootsz >> 20)) status=none
fsck.vfat -n "$work/p1.vfat" >/dev/null && echo "   piimg boot partition: fsck.vfat clean"
dd if="$work/piimg.img" of="$work/p2.ext4" bs=1M skip=$((rootstart >> 20)) status=none
e2fsck -fn "$work/p2.ext4" >/dev/null 2>&1 && echo "   piimg root partition: e2fsck clean"
rm -f "$work/p1.vfat" "$work/p2.ext4"
sfdisk --verify "$work/piimg.img" >/dev/null && echo "   piimg table: sfdisk --verify clean"

echo
awk '
    { t[$1] = $2; r[$1] = $3 }
    END {
        printf "%-10s %10s %14s\n", "method", "seconds", "peak RSS MiB"
        split("piimg pipeline cp_a", order, " ")
        for (i = 1; i <= 3; i++) { k = order[i]; printf "%-10s %10.2f %14.1f\n", k, t[k], r[k] / 1024 }
        if (t["pipeline"] > 0) printf "\npiimg / pipeline time ratio: %.2f\n", t["piimg"] / t["pipeline"]
        if (t["cp_a"] > 0) printf "piimg / cp -a time ratio:    %.2f\n", t["piimg"] / t["cp_a"]
    }' "$work/results"
