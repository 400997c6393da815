"""The registry's key layout, the same in the filesystem store, the S3 store and the S3 mirror a
node reads while the aggregator is down:

    blobs/blake3/<hex>              content, immutable once written
    models/<name>/<version>.json    signed manifest document
    snapshot.json                   signed registry snapshot
"""

from __future__ import annotations

from pifarm.signed.integrity import digest_hex
from pifarm.signed.manifest import check_name

SNAPSHOT_KEY = "snapshot.json"
BLOB_PREFIX = "blobs/blake3/"
MODEL_PREFIX = "models/"


def blob_key(digest: str) -> str:
    return BLOB_PREFIX + digest_hex(digest)


def manifest_key(name: str, version: int) -> str:
    return f"{MODEL_PREFIX}{check_name(name)}/{int(version)}.json"
