#!/usr/bin/env bash
# The Debian packages `make test` needs, in one table: which command each test tier looks for and
# the package that brings it. As root with apt-get, whatever is missing is installed in one apt run
# (a second apt user, e.g. unattended-upgrades, may hold the lock: wait for it, bounded). Otherwise
# it says what is missing and how to get it and exits 0, so the tiers that have their tools still
# run; the others skip with the same reason, which CI=true turns into failures.
set -euo pipefail

# tier | command (alternatives separated by /) | package
TABLE='
vm        | qemu-system-x86_64        | qemu-system-x86
vm        | depmod                    | kmod
vm        | modprobe                  | kmod
vm        | cpio                      | cpio
vm        | zstd                      | zstd
vm        | xz                        | xz-utils
vm        | dpkg-deb                  | dpkg
vm        | mkfs.ext4                 | e2fsprogs
appliance | systemd-analyze           | systemd
appliance | systemctl                 | systemd
fleetview | prometheus                | prometheus
fleetview | promtool                  | prometheus
fleetview | chromium/chromium-browser | chromium
haproxy   | haproxy                   | haproxy
peers     | ip                        | iproute2
peers     | tc                        | iproute2
'

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/sbin/$1" ] || [ -x "/usr/sbin/$1" ]; }

need=() tiers=()
while IFS='|' read -r tier cmds pkg; do
    tier=$(echo "$tier" | xargs) cmds=$(echo "$cmds" | xargs) pkg=$(echo "$pkg" | xargs)
    [ -n "$tier" ] || continue
    found=
    IFS=/ read -ra alts <<< "$cmds"
    for c in "${alts[@]}"; do have "$c" && found=1 && break; done
    [ -n "$found" ] || { need+=("$pkg"); tiers+=("$tier"); }
done <<< "$TABLE"
# the vm tier's private trixie apt config (tests/vm/harness.py) verifies with Debian's archive key
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || { need+=(debian-archive-keyring); tiers+=(vm); }

if [ ${#need[@]} -eq 0 ]; then
    echo "system deps: all present"
    exit 0
fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
mapfile -t tiers < <(printf '%s\n' "${tiers[@]}" | sort -u)
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system deps: the ${tiers[*]} tests need ${need[*]} (as root: apt-get install ${need[*]})" >&2
    exit 0
fi
echo "system deps: installing ${need[*]} (for ${tiers[*]})"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=300 update -qq
apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}"
# the haproxy package starts its own haproxy.service; the tests run their own instances
if printf '%s\n' "${need[@]}" | grep -qx haproxy && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now haproxy.service >/dev/null 2>&1 || true
fi
