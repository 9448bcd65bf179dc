#!/usr/bin/env bash
# Times the ext4 writer against `mke2fs -t ext4 -d` on the same folder.
# Usage: scripts/bench-ext4.sh [SRC_DIR] [SIZE_BYTES] [ROUNDS]
# Without SRC_DIR a ~300 MB mixed tree is assembled from /usr (headers, docs, some binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
src="${1:-}"
size="${2:-536870912}"
rounds="${3:-3}"
if [[ -z "$src" ]]; then
    src="$work/src"
    mkdir -p "$src/bin"
    cp -a /usr/include "$src/include"
    cp -a /usr/share/doc "$src/doc"
    # Medium-sized binaries: skip the largest dozen, take the next 28.
    ls -S /usr/bin | sed -n '13,40p' | while read -r f; do cp -a "/usr/bin/$f" "$src/bin/" 2>/dev/null || true; done
fi
echo "source: $(du -sh "$src" | cut -f1), $(find "$src" | wc -l) entries; filesystem: $size bytes"
bin="$(cargo test --release -p piimg --test ext4 --no-run --message-format=json 2>/dev/null |
    grep '"name":"ext4","src_path"' | grep '"kind":\["test"\]' |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)"
find "$src" -type f -exec cat {} + >/dev/null 2>&1 || true   # warm the page cache for both
for i in $(seq "$rounds"); do
    rm -f "$work/ours.img" "$work/ref.img"
    sync
    s=$(date +%s.%N)
    PIIMG_BENCH_SRC="$src" PIIMG_BENCH_OUT="$work/ours.img" PIIMG_BENCH_SIZE="$size" \
        "$bin" --ignored --exact bench_write_host_dir -q >/dev/null
    o=$(date +%s.%N)
    sync
    t=$(date +%s.%N)
    truncate -s "$size" "$work/ref.img"
    mke2fs -q -t ext4 -d "$src" "$work/ref.img"
    r=$(date +%s.%N)
    printf 'round %d: piimg %.2f s, mke2fs -d %.2f s\n' "$i" "$(echo "$o - $s" | bc)" "$(echo "$r - $t" | bc)"
done
e2fsck -fn "$work/ours.img" >/dev/null && echo "e2fsck -fn: clean"
echo "allocated: piimg $(du -h "$work/ours.img" | cut -f1), mke2fs $(du -h "$work/ref.img" | cut -f1)"
