#!/usr/bin/env bash
# System tools the fleet-view tests use: prometheus (with promtool) and chromium (headless, driven
# by Playwright with the system browser: Playwright cannot download its own here).
# Installs them with apt-get when root and missing; otherwise says what is missing and how to get it.
set -euo pipefail
missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "fleet-view tests need: ${missing[*]} (as root: apt-get install ${missing[*]})" >&2
fi
