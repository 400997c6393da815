#!/usr/bin/env bash
# System tools the appliance tests use: systemd-analyze (unit verification and the security score).
# Installs them with apt-get when root and missing; otherwise says what is missing and how to get it.
set -euo pipefail
missing=()
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v systemctl >/dev/null 2>&1 || missing+=(systemd)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "appliance tests need: ${missing[*]} (as root: apt-get install ${missing[*]})" >&2
fi
