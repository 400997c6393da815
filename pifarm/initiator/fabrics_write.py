"""`python -m pifarm.initiator.fabrics_write`: one connect through /dev/nvme-fabrics, options read
from stdin. This is what `nvme connect` does inside; pifarm uses it when a DH-HMAC-CHAP secret is
involved, because nvme-cli takes secrets only as arguments (readable in /proc/<pid>/cmdline by
every local user). Run as a child so a write stuck in the kernel can be abandoned (see
`kernel_attach.run_bounded`). Prints the kernel's answer (`instance=N,cntlid=M`) and exits 0,
or prints `Failed to write to /dev/nvme-fabrics: <reason>` (nvme-cli's wording) and exits 1."""

from __future__ import annotations

import errno
import os
import sys

FABRICS = "/dev/nvme-fabrics"


def options(fields: dict[str, str | int]) -> str:
    """The kernel's connect string. Refuses separators inside values (an injected option)."""
    for k, v in fields.items():
        if any(c in str(v) for c in ",\n\0") or any(c in k for c in ",=\n\0"):
            raise ValueError(f"connect option {k} holds a separator")
    return ",".join(f"{k}={v}" for k, v in fields.items())


def main() -> int:
    opts = sys.stdin.read().strip()
    try:
        fd = os.open(FABRICS, os.O_RDWR)
    except OSError as e:
        print(f"Failed to open {FABRICS}: {e.strerror}")
        return 1
    try:
        os.write(fd, opts.encode())
        print(os.read(fd, 4096).decode(errors="replace").strip())
        return 0
    except OSError as e:
        if e.errno == errno.EALREADY:  # the kernel's answer to a duplicate connect
            print("already connected")
            return 1
        print(f"Failed to write to {FABRICS}: {e.strerror}")
        return 1
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
