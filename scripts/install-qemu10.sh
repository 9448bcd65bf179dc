#!/usr/bin/env bash
# Installs a QEMU with the `raspi4b` machine (QEMU >= 9) when the installed one has none: Pi 4
# images boot only there. On Debian bookworm that is qemu-system-arm from bookworm-backports,
# which the host's apt sources usually do not list: a sources file for it is written with the
# mirror URI of the host's own bookworm source, read here at run time. Other releases install
# qemu-system-arm from their own suites (trixie's is 10.0).
#   ./scripts/install-qemu10.sh        does nothing when `qemu-system-aarch64 -M help` lists raspi4b
set -euo pipefail

has_raspi4b() {
    command -v qemu-system-aarch64 >/dev/null 2>&1 &&
        qemu-system-aarch64 -M help 2>/dev/null | grep -q '^raspi4b '
}
if has_raspi4b; then
    exit 0
fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_install() { DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null; }

codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
if [ "$codename" != bookworm ]; then
    echo "install-qemu10: installing qemu-system-arm from $codename"
    $SUDO apt-get update -qq
    apt_install qemu-system-arm
elif apt-cache policy 2>/dev/null | grep -q ' bookworm-backports/main '; then
    # The host already lists backports (as Debian's cloud images do): use it as it is.
    echo "install-qemu10: installing qemu-system-arm from the host's bookworm-backports"
    $SUDO apt-get update -qq
    apt_install -t bookworm-backports qemu-system-arm
else
    # The first enabled http(s) `deb` source that lists the suite `bookworm`: its URI and keyring.
    uri="" signed_by=""
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # deb822: paragraphs separated by blank lines; fields "Name: value". An inline
        # armoured Signed-By (a key block, not a path) is left to apt's default keyrings.
        read -r uri signed_by < <(awk -v RS='' -F '\n' '{
            types = ""; suites = ""; uris = ""; key = ""; enabled = "yes"
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^Types:/) types = " " substr($i, 7) " "
                if ($i ~ /^Suites:/) suites = " " substr($i, 8) " "
                if ($i ~ /^URIs:/) { split(substr($i, 6), u, " "); uris = u[1] }
                if ($i ~ /^Signed-By:[ \t]*\//) { split(substr($i, 11), k, " "); key = k[1] }
                if ($i ~ /^Enabled:[ \t]*[Nn]o/) enabled = "no"
            }
            if (enabled == "yes" && types ~ / deb / && suites ~ /[ \t]bookworm[ \t]/ &&
                uris ~ /^https?:\/\//) {
                print uris, key; exit
            }
        }' "$f") || true
        [ -n "$uri" ] && break
    done
    if [ -z "$uri" ]; then
        # One-line style: deb [options] URI SUITE COMPONENTS...; signed-by= from the options.
        read -r uri signed_by < <(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk '$1 == "deb" {
                opts = ""
                if ($2 ~ /^\[/) {
                    while ($2 !~ /\]$/ && NF > 2) { opts = opts " " $2; $2 = ""; $0 = $0 }
                    opts = opts " " $2; $2 = ""; $0 = $0
                }
                if ($3 == "bookworm" && $2 ~ /^https?:\/\//) {
                    key = ""
                    if (match(opts, /signed-by=[^] ]+/)) key = substr(opts, RSTART + 10, RLENGTH - 10)
                    print $2, key; exit
                }
            }') || true
    fi
    if [ -z "$uri" ]; then
        echo "install-qemu10: no http(s) bookworm source in /etc/apt; add bookworm-backports by" \
             "hand and run: apt-get install -t bookworm-backports qemu-system-arm" >&2
        exit 1
    fi
    list=/etc/apt/sources.list.d/piimg-bookworm-backports.sources
    echo "install-qemu10: adding bookworm-backports ($uri) as $list"
    {
        echo "Types: deb"
        echo "URIs: $uri"
        echo "Suites: bookworm-backports"
        echo "Components: main"
        if [ -n "$signed_by" ]; then echo "Signed-By: $signed_by"; fi
    } | $SUDO tee "$list" >/dev/null
    $SUDO apt-get update -qq
    # Backports are pinned below the release (priority 100), so the QEMU packages that must share
    # its version (qemu-system-common, qemu-system-data, ...) are named with -t: apt then takes
    # them, and the firmware qemu-system-data asks for (ipxe-qemu, seabios), from backports too.
    apt_install -t bookworm-backports qemu-system-arm
fi
if ! has_raspi4b; then
    echo "install-qemu10: $(qemu-system-aarch64 --version | head -1) has no raspi4b machine" >&2
    exit 1
fi
echo "install-qemu10: $(qemu-system-aarch64 --version | head -1)"
