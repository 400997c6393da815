#!/usr/bin/env bash
# HAProxy for the traffic tests (issue 15): Debian's haproxy package (2.4 or newer: dynamic servers).
# Installs it with apt-get when root and missing; otherwise says what is missing and how to get it.
set -euo pipefail
if command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends haproxy
    # the package starts its own haproxy.service on :80 stats; the tests run their own instances
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now haproxy.service >/dev/null 2>&1 || true
    fi
else
    echo "haproxy tests need: haproxy (as root: apt-get install haproxy)" >&2
    if [ "${CI:-}" = true ]; then
        exit 1
    fi
fi
