"""Conditional writes and reads on a `Bucket`: the primitives several aggregators agree through.

    create(b, key, data)            PUT with If-None-Match: *   -> ETag, or None when the key exists
    replace(b, key, data, etag)     PUT with If-Match: <etag>   -> ETag, or None when it changed
    get_if_changed(b, key, etag)    GET with If-None-Match      -> (bytes, ETag), or None when unchanged
    probe(b, key)                   does the endpoint honour If-None-Match? is versioning on?

S3 answers a lost race with 412 PreconditionFailed, or 409 ConditionalRequestConflict when two
conditional writes to one key overlap; both mean "someone else won", never a failure. Every
other error goes through `Bucket.mapped` like any call.
"""

from __future__ import annotations

from typing import Any

from pifarm.s3.bucket import Bucket

LOST = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})


def _lost(e: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(e, ClientError):
        return False
    code = str(e.response.get("Error", {}).get("Code", ""))
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in LOST or status in (409, 412)


def _put(b: Bucket, key: str, data: bytes, what: str, **cond: str) -> str | None:
    from botocore.exceptions import ClientError

    with b.mapped(what or f"PUT {b.location}{key}"):
        try:
            r = b.client.put_object(Bucket=b.bucket, Key=b.key(key), Body=data, ContentType="application/json",
                                    **cond)
        except ClientError as e:
            if _lost(e):
                return None
            raise
    return str(r.get("ETag", ""))


def create(b: Bucket, key: str, data: bytes, what: str = "") -> str | None:
    """Create `key` only if absent: its ETag, or None when another writer created it first."""
    return _put(b, key, data, what, IfNoneMatch="*")


def replace(b: Bucket, key: str, data: bytes, etag: str, what: str = "") -> str | None:
    """Overwrite `key` only if it still has `etag`: the new ETag, or None when it changed."""
    return _put(b, key, data, what, IfMatch=etag)


def get_if_changed(b: Bucket, key: str, etag: str | None, what: str = "") -> tuple[bytes, str] | None:
    """(bytes, ETag) of `key`, or None when its ETag is still `etag` (304: nothing transferred).
    A missing key raises the bucket's `missing` class."""
    from botocore.exceptions import ClientError

    kw = {"IfNoneMatch": etag} if etag else {}
    with b.mapped(what or f"GET {b.location}{key}"):
        try:
            r = b.client.get_object(Bucket=b.bucket, Key=b.key(key), **kw)
        except ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 304 or \
                    str(e.response.get("Error", {}).get("Code")) in ("304", "NotModified"):
                return None
            raise
        return r["Body"].read(), str(r.get("ETag", ""))


def get_with_etag(b: Bucket, key: str, what: str = "") -> tuple[bytes, str]:
    out = get_if_changed(b, key, None, what)
    assert out is not None  # no condition given: never 304
    return out


def probe(b: Bucket, key: str) -> dict[str, Any]:
    """Write `key` twice with If-None-Match: * (the second must be refused), then If-Match with a
    wrong ETag (must be refused); delete it. Versioning read from the bucket (None: unknown)."""
    first = create(b, key, b"{}", f"probing conditional writes at {b.location}{key}")
    second = create(b, key, b"{\"again\":1}", f"probing conditional writes at {b.location}{key}")
    wrong = replace(b, key, b"{\"wrong\":1}", '"00000000000000000000000000000000"',
                    f"probing conditional writes at {b.location}{key}")
    b.delete(key, f"removing the probe {b.location}{key}")
    versioning = None
    try:
        with b.mapped(f"reading the versioning state of {b.bucket}"):
            versioning = b.client.get_bucket_versioning(Bucket=b.bucket).get("Status") == "Enabled"
    except Exception:  # an endpoint without the call: versioning unknown, not a failure
        versioning = None
    return {"if_none_match": first is not None and second is None, "if_match": wrong is None,
            "versioning": versioning}
