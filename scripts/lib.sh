# Shared by the benchmark scripts (source it after `set -euo pipefail`).
#   bench_setup NAME   $here (the repository) and $work (BENCH_DIR, else a new folder
#                      /var/tmp/piimg-NAME.XXXXXX, removed at exit unless KEEP=1; a script with
#                      its own exit trap calls bench_cleanup from it)
#   build_piimg        a release piimg; sets $piimg
#   copy_project DIR   the example profiles, overlays and piimg.lock into DIR
#   median             the median of the numbers on stdin (whitespace separated)
#   spread             "median (min-max)" of the numbers on stdin

bench_setup() {
    here="$(cd "$(dirname "${BASH_SOURCE[1]}")/.." && pwd)"
    work="${BENCH_DIR:-$(mktemp -d "/var/tmp/piimg-$1.XXXXXX")}"
    mkdir -p "$work"
    trap bench_cleanup EXIT
}

bench_cleanup() {
    if [ "${KEEP:-0}" != 1 ]; then rm -rf "$work"; fi
}

build_piimg() {
    echo "== building piimg (release)"
    (cd "$here" && cargo build --release -p piimg --bin piimg --quiet)
    piimg="${CARGO_TARGET_DIR:-$here/target}/release/piimg"
}

copy_project() {
    rm -rf "$1" && mkdir -p "$1/profiles"
    cp "$here"/profiles/*.toml "$1/profiles/"
    cp -r "$here/overlays" "$1/"
    if [ -f "$here/piimg.lock" ]; then cp "$here/piimg.lock" "$1/"; fi
}

median() {
    tr -s ' \t' '\n\n' | grep . | sort -g |
        awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

spread() {
    tr -s ' \t' '\n\n' | grep . | sort -g |
        awk '{ a[NR] = $1 } END { m = NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; print m " (" a[1] "-" a[NR] ")" }'
}
