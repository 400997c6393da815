"""The model volume format (`format`): one immutable, self-describing file per served version.

The aggregator's target side writes volumes; nodes read them from a block device, over
userspace NVMe/TCP or from a plain file. A leaf package: it imports only `pifarm.errors` and
other leaf packages (`signed`, `durable`), and anyone may import it.
"""
