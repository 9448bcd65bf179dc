#!/usr/bin/env bash
# Boot time of piimg's QEMU images (raspi3b under TCG), power-on to `piimg-agent: ready`, for the
# load balancer (`qemu` profile) and a worker (`qemu-worker`, kubelet/kubeadm test stand-ins via
# --component, no preloaded images), each booted RUNS times (default 3).
# Baseline measured in the same run, so figures compare across machines:
#   stage1  the same image booted until `piimg-agent: stage1 start`: QEMU and the kernel reaching
#           our /init, which piimg does not control (beyond the initramfs it packs).
# Prints wall and guest seconds, min and median, and ready / stage1 ratios. The guest figure of a
# ready boot is the uptime the agent prints with `ready`; of a stage1 boot, the last kernel
# timestamp before it (a lower bound).
# Usage: scripts/bench-boot.sh     (RUNS=N, BENCH_DIR=... work folder, KEEP=1 keeps it)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

command -v qemu-system-aarch64 >/dev/null || {
    echo "missing qemu-system-aarch64: apt-get install qemu-system-arm" >&2; exit 1; }
runs="${RUNS:-3}"
bench_setup bench-boot
export SOURCE_DATE_EPOCH=1767225600
build_piimg

echo "== images in $work"
proj="$work/project"
copy_project "$proj"
# The worker starts kubeadm and kubelet only on a synced clock: an SNTP server on host loopback,
# which the guest reaches as 10.0.2.2, answering with the host's clock.
python3 -u -c '
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
while True:
    d, a = s.recvfrom(512)
    if len(d) < 48:
        continue
    t = time.time() + 2208988800
    r = bytearray(48)
    r[0], r[1] = 0x24, 2
    r[24:32] = d[40:48]
    struct.pack_into(">II", r, 32, int(t), int((t % 1) * 2**32))
    r[40:48] = r[32:40]
    s.sendto(r, a)
' >"$work/sntp.port" &
sntp=$!
trap 'kill $sntp 2>/dev/null; bench_cleanup' EXIT
for _ in $(seq 50); do [ -s "$work/sntp.port" ] && break; sleep 0.1; done
sed -i "s/^ntp = \[\"10.0.2.2\"\]/ntp = [\"10.0.2.2:$(cat "$work/sntp.port")\"]/" "$proj/profiles/qemu-worker.toml"
grep -q "10.0.2.2:[0-9]" "$proj/profiles/qemu-worker.toml" || { echo "qemu-worker.toml: no ntp line to point at the bench's SNTP server" >&2; exit 1; }
standins="$here/tests/standins"
(cd "$proj" && "$piimg" -q build --profile qemu --out "$work/out" &&
    "$piimg" -q build --profile qemu-worker --out "$work/out" \
        --component "kubelet=$standins/kubelet" --component "kubeadm=$standins/kubeadm") \
    >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }

: >"$work/results"
boot() { # name image regex: one boot; appends "name wall guest"
    local log="$work/$1.log"
    "$piimg" qemu "$2" --until "$3" --timeout 300 --json </dev/null >"$log.json" 2>"$log" || {
        tail -20 "$log" >&2; echo "boot $1 failed" >&2; exit 1; }
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(sys.argv[2], r["wall_seconds"], r["guest_seconds"])' \
        "$log.json" "$1" >>"$work/results"
}

echo "== load average before measuring: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
for i in $(seq 1 "$runs"); do
    echo "== round $i of $runs"
    for img in qemu qemu-worker; do
        boot "${img}_stage1" "$work/out/$img.img" 'piimg-agent: stage1 start'
        boot "${img}_ready" "$work/out/$img.img" 'piimg-agent: ready'
    done
done

echo
awk '
    { w[$1] = w[$1] " " $2; g[$1] = g[$1] " " $3 }
    function sorted(s, a,   n, i, j, t) {
        n = split(s, a, " ")
        for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
        return n
    }
    function med(s,   a, n) { n = sorted(s, a); return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }
    function lo(s,   a) { sorted(s, a); return a[1] }
    END {
        printf "%-20s %10s %10s %10s %10s\n", "boot", "wall min", "wall med", "guest min", "guest med"
        split("qemu_stage1 qemu_ready qemu-worker_stage1 qemu-worker_ready", k, " ")
        for (i = 1; i <= 4; i++)
            printf "%-20s %10.1f %10.1f %10.2f %10.2f\n", k[i], lo(w[k[i]]), med(w[k[i]]), lo(g[k[i]]), med(g[k[i]])
        print ""
        print "ratios (median wall, ready / stage1 baseline):"
        printf "  load balancer %6.2f\n", med(w["qemu_ready"]) / med(w["qemu_stage1"])
        printf "  worker        %6.2f\n", med(w["qemu-worker_ready"]) / med(w["qemu-worker_stage1"])
        print "target: ready under 15 s wall"
    }' "$work/results"
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
