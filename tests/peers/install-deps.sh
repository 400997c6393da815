#!/usr/bin/env bash
# The rack tests (tests/peers) build network namespaces, veth pairs, a bridge and tc token buckets:
# iproute2 (`ip`, `tc`) and the sch_tbf/veth/bridge kernel modules. Installed when root and missing.
set -euo pipefail
if command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends iproute2
else
    echo "rack tests need iproute2 (as root: apt-get install iproute2)" >&2
fi
