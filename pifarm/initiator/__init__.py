"""The node's way to its models: kernel nvme-tcp attach, the userspace NVMe/TCP host, HTTP and
S3 sources, the ordered source chain and the snapshot watcher.

Node side: imports leaf packages and the cache; never the target or the registry service.
"""
