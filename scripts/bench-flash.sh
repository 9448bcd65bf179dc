#!/usr/bin/env bash
# Flashing the worker image (w1, 4 GiB) to a loop device three ways, on the same machine in the
# same run, and printing wall time and the bytes the device received (its write counter):
#   piimg     piimg flash out/w1.img DEV: the bmap's ranges + zeros over old signatures, synced,
#             then read back and verified
#   dd        dd if=out/w1.img of=DEV bs=4M conv=fsync: every byte, nothing checked
#   bmaptool  bmaptool copy out/w1.img DEV: the bmap's ranges, checked as read from the image
# Goals: piimg's bytes close to the mapped bytes; piimg's wall time at or below bmaptool's.
#
# Usage: scripts/bench-flash.sh   (as root: loop devices)
#   BENCH_DIR=DIR work folder (default: a new one under /var/tmp)   KEEP=1 keep it
#   ROUNDS=N      rounds (default 3); the median of each method is reported with its range
# The loop devices' backing files live in the work folder (on disk, not tmpfs).
set -euo pipefail

for tool in losetup bmaptool dd cargo; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "bench-flash.sh needs root (loop devices)" >&2; exit 1; }

source "$(dirname "$0")/lib.sh"
bench_setup bench-flash
dev=""
cleanup() {
    [ -n "$dev" ] && losetup -d "$dev" 2>/dev/null || true
    bench_cleanup
}
trap cleanup EXIT
rounds="${ROUNDS:-3}"
build_piimg

echo "== building w1 (stand-in kubelet/kubeadm) in $work"
mkdir -p "$work/project"
cp -r "$here/profiles" "$here/piimg.lock" "$work/project/"
(cd "$work/project" && "$piimg" -q build --profile w1 --out "$work/out" \
    --component "kubelet=$here/tests/standins/kubelet" \
    --component "kubeadm=$here/tests/standins/kubeadm" >/dev/null)
img="$work/out/w1.img"
size=$(stat -c %s "$img")
mapped=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["mapped_bytes"])' "$work/out/w1.manifest.json")
cat "$img" >/dev/null # warm: every method reads the image from the page cache

written() { # sectors written to the loop device so far, in bytes
    local f
    read -r -a f <"/sys/block/$(basename "$dev")/stat"
    echo $((f[6] * 512))
}
secs() { awk -v ns="$1" 'BEGIN { printf "%.2f", ns / 1e9 }'; }

declare -A times bytes
for r in $(seq 1 "$rounds"); do
    for m in piimg dd bmaptool; do
        rm -f "$work/card"
        truncate -s $((size + (1 << 30))) "$work/card"
        dev=$(losetup -f --show "$work/card")
        before=$(written)
        t0=$(date +%s%N)
        case $m in
            piimg) "$piimg" -q flash "$img" "$dev" --yes --allow-fixed >/dev/null ;;
            dd) dd if="$img" of="$dev" bs=4M conv=fsync status=none ;;
            bmaptool) bmaptool -q copy "$img" "$dev" ;;
        esac
        t1=$(date +%s%N)
        sync
        after=$(written)
        losetup -d "$dev"
        dev=""
        times[$m]+="$(secs $((t1 - t0))) "
        bytes[$m]=$((after - before))
        echo "round $r $m: $(secs $((t1 - t0))) s, $(((after - before) >> 20)) MiB written"
    done
done

echo
echo "w1.img: $((size >> 20)) MiB image, $((mapped >> 20)) MiB mapped; $rounds rounds"
printf '%-9s %-22s %12s\n' method "wall s median (range)" "MiB written"
for m in piimg dd bmaptool; do
    printf '%-9s %-22s %12s\n' "$m" "$(echo "${times[$m]}" | spread)" "$((bytes[$m] >> 20))"
done
pm=$(echo "${times[piimg]}" | median)
bm=$(echo "${times[bmaptool]}" | median)
dm=$(echo "${times[dd]}" | median)
awk -v p="$pm" -v b="$bm" -v d="$dm" -v w="${bytes[piimg]}" -v m="$mapped" 'BEGIN {
    printf "piimg / bmaptool wall: %.2f   piimg / dd wall: %.2f\n", p / b, p / d
    printf "piimg bytes / mapped: %.3f\n", w / m
}'
