#!/usr/bin/env bash
# `piimg build` wall time and peak RSS (release build) on a temp copy of the example project:
#   cold  = the .debs are cached but nothing is extracted ($XDG_CACHE_HOME/piimg/tar cleared)
#   warm  = the same build again (extracted data.tar files reused)
# for lb1 alone and for all six nodes of the example cluster (the four Kubernetes nodes get the
# test stand-ins for kubelet/kubeadm through --component, as the tests do).
# Baselines measured in the same run, so figures compare across machines:
#   dpkg_x   dpkg-deb -x of every package lb1's image uses (the unpacking a cold build must do)
#   cp_a     cp -a of that unpacked tree (moving the same bytes through the file system)
#   cp_debs  plain copy of those .deb files
# Usage: scripts/bench-build.sh     (BENCH_DIR=... work folder, KEEP=1 keeps it; XDG_CACHE_HOME as
# for piimg: the .debs are fetched there once, only its piimg/tar folder is cleared.)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

if ! command -v /usr/bin/time >/dev/null; then
    apt-get install -y time
fi
for tool in cargo dpkg-deb cp python3; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done

bench_setup bench-build
export SOURCE_DATE_EPOCH=1767225600
cache_home="${XDG_CACHE_HOME:-$HOME/.cache}"
export XDG_CACHE_HOME="$cache_home"

build_piimg

echo "== project in $work/project (profiles + piimg.lock copied), cache $cache_home/piimg"
proj="$work/project"
copy_project "$proj"
mkdir -p "$work/out"
# Debs into the cache (a no-op when they are there); Kubernetes binaries may be unreachable.
(cd "$proj" && "$piimg" -q fetch --all) >"$work/fetch.log" 2>&1 || {
    cat "$work/fetch.log" >&2; exit 1; }

standins="$here/tests/standins"
nodes=(lb1 cp1 cp2 cp3 w1 w2)
build_args() { # node -> piimg arguments
    local a=(-q --profiles "$proj/profiles" build --offline --profile "$1" --out "$work/out")
    case "$1" in
        lb*) ;;
        *) a+=(--component "kubelet=$standins/kubelet" --component "kubeadm=$standins/kubeadm"
               --component "kubectl=$standins/kubectl") ;;
    esac
    printf '%s\n' "${a[@]}"
}

: >"$work/results"
measure() { # name cmd...: runs under GNU time, appends "name wall_s maxrss_kib cpu_s"
    local name=$1; shift
    /usr/bin/time -v -o "$work/$name.time" "$@" >"$work/$name.log" 2>&1 || {
        cat "$work/$name.log" >&2; exit 1; }
    local wall rss cpu
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/$name.time" |
        awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/$name.time")
    cpu=$(awk -F': ' '/(User|System) time \(seconds\)/ {s += $2} END {print s}' "$work/$name.time")
    echo "$name $wall $rss $cpu" >>"$work/results"
}
build() { # label node
    local args; mapfile -t args < <(build_args "$2")
    (cd "$proj" && measure "$1" "$piimg" "${args[@]}")
}
clear_extracted() { rm -rf "$cache_home/piimg/tar"; }

echo "== load average before measuring: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
echo "== lb1: cold, warm"
clear_extracted
build lb1_cold lb1
build lb1_warm lb1

echo "== all six nodes: cold, warm"
clear_extracted
for n in "${nodes[@]}"; do build "all_cold_$n" "$n"; done
for n in "${nodes[@]}"; do build "all_warm_$n" "$n"; done

rounds="${ROUNDS:-3}"
echo "== one worker and the whole cluster (build --cluster home), warm, $rounds rounds each"
for i in $(seq "$rounds"); do
    build "w1_warm_$i" w1
    (cd "$proj" && measure "cluster_warm_$i" "$piimg" -q --profiles "$proj/profiles" build \
        --offline --cluster home --out "$work/out" \
        --component "kubelet=$standins/kubelet" --component "kubeadm=$standins/kubeadm" \
        --component "kubectl=$standins/kubectl")
done

echo "== baselines (the packages in lb1's image)"
python3 - "$work/out/lb1.manifest.json" "$cache_home/piimg/sha256" >"$work/debs" <<'EOF'
import json, os, sys
m = json.load(open(sys.argv[1]))
for c in m["components"]:
    if c["source"].startswith("debian:"):
        print(os.path.join(sys.argv[2], c["sha256"]))
EOF
mapfile -t debs <"$work/debs"
deb_bytes=$(du -cbL "${debs[@]}" | tail -1 | cut -f1)
cat >"$work/dpkg_x.sh" <<EOF
set -e
rm -rf "$work/tree" && mkdir -p "$work/tree"
while read -r d; do dpkg-deb -x "\$d" "$work/tree"; done <"$work/debs"
EOF
measure dpkg_x bash "$work/dpkg_x.sh"
tree_bytes=$(du -sb "$work/tree" | cut -f1)
rm -rf "$work/tree-copy"
measure cp_a cp -a "$work/tree" "$work/tree-copy"
rm -rf "$work/debs-copy" && mkdir "$work/debs-copy"
measure cp_debs cp "${debs[@]}" "$work/debs-copy/"

echo
echo "lb1 packages: ${#debs[@]} debs, $deb_bytes bytes; unpacked tree $tree_bytes bytes"
for n in "${nodes[@]}"; do
    printf '%-4s image %s, allocated %s\n' "$n" \
        "$(stat -c %s "$work/out/$n.img")" "$(du -B1 "$work/out/$n.img" | cut -f1)"
done
echo
awk -v nodes="${nodes[*]}" '
    { t[$1] = $2; r[$1] = $3; c[$1] = $4 }
    END {
        n = split(nodes, ns, " ")
        for (p = 1; p <= 2; p++) {
            ph = p == 1 ? "cold" : "warm"; s = 0; m = 0; u = 0
            for (i = 1; i <= n; i++) {
                k = "all_" ph "_" ns[i]; s += t[k]; u += c[k]; if (r[k] > m) m = r[k]
            }
            t["all_" ph] = s; r["all_" ph] = m; c["all_" ph] = u
        }
        fmt = "%-22s %10.2f %10.2f %14.1f\n"
        printf "%-22s %10s %10s %14s\n", "measure", "wall s", "cpu s", "peak RSS MiB"
        split("lb1_cold lb1_warm all_cold all_warm", order, " ")
        for (i = 1; i <= 4; i++) { k = order[i]; printf fmt, k, t[k], c[k], r[k] / 1024 }
        for (p = 1; p <= 2; p++) {
            ph = p == 1 ? "cold" : "warm"
            for (i = 1; i <= n; i++) { k = "all_" ph "_" ns[i]; printf fmt, "  " k, t[k], c[k], r[k] / 1024 }
        }
        split("dpkg_x cp_a cp_debs", base, " ")
        for (i = 1; i <= 3; i++) { k = base[i]; printf fmt, "baseline " k, t[k], c[k], r[k] / 1024 }
        print ""
        print "ratios (wall):"
        if (t["dpkg_x"] > 0) printf "  lb1 cold / dpkg-deb -x      %7.2f\n", t["lb1_cold"] / t["dpkg_x"]
        if (t["cp_a"] > 0)   printf "  lb1 warm / cp -a tree       %7.2f\n", t["lb1_warm"] / t["cp_a"]
        if (t["cp_debs"] > 0) printf "  lb1 warm / cp debs          %7.2f\n", t["lb1_warm"] / t["cp_debs"]
        if (t["dpkg_x"] > 0) printf "  all cold / dpkg-deb -x      %7.2f\n", t["all_cold"] / t["dpkg_x"]
        if (t["cp_a"] > 0)   printf "  all warm / cp -a tree       %7.2f\n", t["all_warm"] / t["cp_a"]
        print "ratios (cpu; less sensitive to other load on the machine):"
        if (c["dpkg_x"] > 0) printf "  lb1 cold / dpkg-deb -x      %7.2f\n", c["lb1_cold"] / c["dpkg_x"]
        if (c["dpkg_x"] > 0) printf "  lb1 warm / dpkg-deb -x      %7.2f\n", c["lb1_warm"] / c["dpkg_x"]
        if (c["dpkg_x"] > 0) printf "  all cold / dpkg-deb -x      %7.2f\n", c["all_cold"] / c["dpkg_x"]
        if (c["dpkg_x"] > 0) printf "  all warm / dpkg-deb -x      %7.2f\n", c["all_warm"] / c["dpkg_x"]
    }' "$work/results"
w1_med=$(awk '/^w1_warm_/ { print $2 }' "$work/results" | median)
cl_med=$(awk '/^cluster_warm_/ { print $2 }' "$work/results" | median)
echo "one worker (w1), warm:           $(awk '/^w1_warm_/ { print $2 }' "$work/results" | spread) s"
echo "cluster home (6 nodes), warm:    $(awk '/^cluster_warm_/ { print $2 }' "$work/results" | spread) s, $(nproc) at a time"
awk -v c="$cl_med" -v w="$w1_med" 'BEGIN { printf "cluster / one worker (medians):  %.2f   (goal: at most 3)\n", c / w }'
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
