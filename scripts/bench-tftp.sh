#!/usr/bin/env bash
# TFTP throughput on loopback: `piimg serve` (release build) against tftp-hpa's in.tftpd, each
# serving the same 64 MiB file to the same client at blksize 512, 1468 and 65464, lock-step
# (no windowsize: in.tftpd 5.2 has none). MB/s per server, the median of the rounds with their
# range, and the ratio piimg / tftp-hpa. Goal: a ratio at or above 1.
#
# The client is curl (--tftp-blksize): tftp-hpa's own client (5.2) cannot ask for a blksize.
# With --window, a last row has piimg at blksize 1468 and windowsize 8 (atftp), for what
# RFC 7440 adds; tftp-hpa has no row there.
#
# Usage: scripts/bench-tftp.sh [--window]   (as root: installs tftpd-hpa when in.tftpd is missing)
#   ROUNDS=N      rounds (default 5)   BENCH_DIR=DIR work folder   KEEP=1 keep it
# Only 127.0.0.1 is used. On a machine that starts services, installing tftpd-hpa also starts
# its own daemon on port 69: `systemctl disable --now tftpd-hpa` stops it.
set -euo pipefail

window=0
[ "${1:-}" = --window ] && window=1
if ! command -v in.tftpd >/dev/null; then
    [ "$(id -u)" -eq 0 ] || { echo "in.tftpd missing: apt-get install tftpd-hpa" >&2; exit 1; }
    echo "== installing tftpd-hpa"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tftpd-hpa >/dev/null
fi
for tool in curl python3 cargo; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done
[ "$window" = 0 ] || command -v atftp >/dev/null || { echo "missing tool: atftp" >&2; exit 1; }

source "$(dirname "$0")/lib.sh"
bench_setup bench-tftp
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    bench_cleanup
}
trap cleanup EXIT
rounds="${ROUNDS:-5}"
build_piimg

size=$((64 << 20))
root="$work/root"
mkdir -p "$root"
head -c "$size" /dev/urandom >"$root/root.img"
# in.tftpd serves only world-readable files, as user nobody, chrooted into $root.
chmod 755 "$root" && chmod 644 "$root/root.img"
want=$(sha256sum <"$root/root.img")

free_udp_port() {
    python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# piimg serve, quiet (no log line per transfer), HTTP on a port of its choice.
piimg_port=$(free_udp_port)
"$piimg" -q serve --bind 127.0.0.1 --tftp-port "$piimg_port" --http-port 0 --dir "$root" &
pids+=($!)
hpa_port=$(free_udp_port)
in.tftpd -L -s -a "127.0.0.1:$hpa_port" "$root" &
pids+=($!)
sleep 0.5
for p in "${pids[@]}"; do kill -0 "$p" || { echo "a server did not start" >&2; exit 1; }; done

# One fetch: prints MB/s; fails unless the file arrived whole.
fetch() { # PORT BLKSIZE
    local out="$work/got" s e
    rm -f "$out"
    s=$(date +%s.%N)
    curl -sS --tftp-blksize "$2" -o "$out" "tftp://127.0.0.1:$1/root.img"
    e=$(date +%s.%N)
    [ "$(sha256sum <"$out")" = "$want" ] || { echo "port $1 blksize $2: wrong bytes" >&2; exit 1; }
    echo "$size $s $e" | awk '{ printf "%.1f\n", $1 / 1e6 / ($3 - $2) }'
}

fetch_window() { # PORT BLKSIZE WINDOW
    local out="$work/got" s e
    rm -f "$out"
    s=$(date +%s.%N)
    atftp --option "blksize $2" --option "windowsize $3" -g -r root.img -l "$out" 127.0.0.1 "$1" >/dev/null 2>&1
    e=$(date +%s.%N)
    [ "$(sha256sum <"$out")" = "$want" ] || { echo "windowsize $3: wrong bytes" >&2; exit 1; }
    echo "$size $s $e" | awk '{ printf "%.1f\n", $1 / 1e6 / ($3 - $2) }'
}

echo "== 64 MiB over TFTP on 127.0.0.1, curl, $rounds rounds alternating; MB/s median (min-max)"
printf '%-8s %-22s %-22s %s\n' blksize piimg tftp-hpa piimg/tftp-hpa
for blksize in 512 1468 65464; do
    ours="" theirs=""
    for _ in $(seq "$rounds"); do
        ours+=" $(fetch "$piimg_port" "$blksize")"
        theirs+=" $(fetch "$hpa_port" "$blksize")"
    done
    o=$(echo "$ours" | median) t=$(echo "$theirs" | median)
    printf '%-8s %-22s %-22s %.2f\n' "$blksize" "$(echo "$ours" | spread)" \
        "$(echo "$theirs" | spread)" "$(echo "$o $t" | awk '{ print $1 / $2 }')"
done
if [ "$window" = 1 ]; then
    ours=""
    for _ in $(seq "$rounds"); do ours+=" $(fetch_window "$piimg_port" 1468 8)"; done
    printf '%-8s %-22s %-22s\n' "1468 w8" "$(echo "$ours" | spread)" "-"
fi
