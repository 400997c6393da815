#!/usr/bin/env bash
# Host tools the vm tier needs (qemu with 9p, kmod's depmod/modprobe, cpio, zstd, xz, dpkg-deb).
# As root: apt-get installs whatever is missing (apt-get update first). Otherwise: prints what is
# missing and exits 0, so `make test` still runs; the vm tests then skip with the same reason
# (and fail under CI=true, where this runs as root and installs them).
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/sbin/$1" ] || [ -x "/usr/sbin/$1" ]; }
have qemu-system-x86_64 || need+=(qemu-system-x86)
have depmod || need+=(kmod)
have modprobe || need+=(kmod)
have cpio || need+=(cpio)
have zstd || need+=(zstd)
have xz || need+=(xz-utils)
have dpkg-deb || need+=(dpkg)
have mkfs.ext4 || need+=(e2fsprogs)
# Debian's archive key: the private trixie apt config (harness.py) verifies with it.
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)

if [ ${#need[@]} -eq 0 ]; then
  echo "vm tier: host tools present"
  exit 0
fi
# de-duplicate (kmod may be listed twice)
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)

if [ "$(id -u)" != 0 ]; then
  echo "vm tier: missing host packages: ${need[*]} (run as root: apt-get install ${need[*]})" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "vm tier: missing host packages: ${need[*]} and no apt-get to install them" >&2
  exit 0
fi
echo "vm tier: installing ${need[*]}"
# another apt run (a second engineer, unattended-upgrades) may hold the lock: wait, bounded
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=300 update -qq
apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}"
