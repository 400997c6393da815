"""s3:// URLs, boto3 clients, and every botocore failure turned into a pifarm error once.

The registry and the node want different classes for the same failure (the registry goes
read-only on `StoreUnavailable`, a node tries its next source on `SourceError`), so `mapped` and
`Bucket` take the classes; the decision of what a failure *is* (missing, denied, timed out,
unreachable) is made here only.
"""

from __future__ import annotations

import contextlib
import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Iterator

from pifarm.errors import PifarmError, SourceError, SourceTimeout

MISSING = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})
DENIED = frozenset({"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"})


class Missing(SourceError):
    """The bucket answered but does not hold the object (or the bucket does not exist)."""


def parse_url(url: str) -> tuple[str, str]:
    """("bucket", "prefix/" or "") from s3://bucket/prefix."""
    bucket, _, prefix = url[len("s3://"):].partition("/")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/") if prefix else ""


def make_client(*, endpoint_url: str | None = None, region: str | None = None, connect_timeout: float = 5.0,
                read_timeout: float = 30.0, max_pool_connections: int = 10, access_key_id: str | None = None,
                secret_access_key: str | None = None) -> Any:
    """A boto3 S3 client: two attempts, path-style addressing for a custom endpoint (SeaweedFS,
    MinIO), credentials from the arguments when both are given, else boto3's standard chain."""
    import boto3
    from botocore.config import Config

    cfg = Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                 retries={"max_attempts": 2, "mode": "standard"}, max_pool_connections=max_pool_connections,
                 s3={"addressing_style": "path" if endpoint_url else "auto"})
    kw = {}
    if access_key_id and secret_access_key:
        kw = {"aws_access_key_id": access_key_id, "aws_secret_access_key": secret_access_key}
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, region_name=region or None,
                                          config=cfg, **kw)


def _error(cls: type[PifarmError], message: str, source: str) -> PifarmError:
    return cls(message, source) if issubclass(cls, SourceError) else cls(message)


@contextlib.contextmanager
def mapped(what: str, source: str = "s3", *, missing: type[PifarmError] = Missing,
           failure: type[PifarmError] = SourceError, timeout: type[PifarmError] = SourceTimeout) -> Iterator[None]:
    """Every botocore/urllib3 failure in the block becomes `missing`, `timeout` or `failure`,
    with a one-line message naming `what` and what to do."""
    from botocore.exceptions import (BotoCoreError, ClientError, ConnectTimeoutError, NoCredentialsError,
                                     ReadTimeoutError)

    try:
        yield
    except ClientError as e:
        err = e.response.get("Error", {})
        code = str(err.get("Code", "?"))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":  # a configuration fault, not one object missing: say so (issue 20)
            name = err.get("BucketName") or "named in the s3:// URL"
            raise _error(failure, f"{what}: bucket {name} does not exist (NoSuchBucket); check the s3:// URL "
                         "and the endpoint, or create the bucket", source) from e
        if code in MISSING or status == 404:
            raise _error(missing, f"{what}: not in the bucket (404)", source) from e
        if code in DENIED or status == 403:
            raise _error(failure, f"{what}: access denied ({code}); check the S3 credentials (AWS_* or [store])",
                         source) from e
        detail = f": {err['Message']}" if err.get("Message") else ""
        raise _error(failure, f"{what}: S3 error {code}{detail}", source) from e
    except (ConnectTimeoutError, ReadTimeoutError) as e:
        raise _error(timeout, f"{what}: timed out ({e})", source) from e
    except NoCredentialsError as e:
        raise _error(failure, f"{what}: no S3 credentials; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY", source) from e
    except BotoCoreError as e:
        raise _error(failure, f"{what}: {type(e).__name__}: {e}", source) from e
    except OSError as e:  # urllib3 read errors surface as OSError subclasses mid-body
        raise _error(failure, f"{what}: connection failed: {e}", source) from e
    except Exception as e:
        if type(e).__module__.startswith("urllib3"):
            raise _error(failure, f"{what}: {type(e).__name__}: {e}", source) from e
        raise


class Bucket:
    """s3://bucket/prefix/ through one client: keys are relative to the prefix, and every call
    maps its failures to the classes given here."""

    def __init__(self, client: Any, url: str, *, source: str = "s3", missing: type[PifarmError] = Missing,
                 failure: type[PifarmError] = SourceError, timeout: type[PifarmError] = SourceTimeout):
        self.client = client
        self.bucket, self.prefix = parse_url(url)
        self.location = f"s3://{self.bucket}/{self.prefix}"
        self.source = source
        self._classes = {"missing": missing, "failure": failure, "timeout": timeout}

    def key(self, key: str) -> str:
        return self.prefix + key

    def mapped(self, what: str):
        return mapped(what, self.source, **self._classes)

    def get(self, key: str, what: str = "", limit: int | None = None) -> bytes:
        """The whole object; with `limit`, refuse one larger than that instead of reading it."""
        what = what or f"GET {self.location}{key}"
        with self.mapped(what):
            r = self.client.get_object(Bucket=self.bucket, Key=self.key(key))
            if limit is None:
                return r["Body"].read()
            if int(r.get("ContentLength") or 0) > limit:
                r["Body"].close()
                raise _error(self._classes["failure"], f"{what}: larger than {limit} bytes", self.source)
            return r["Body"].read(limit + 1)

    def open(self, key: str, start: int = 0, end: int | None = None, what: str = "") -> Any:
        """The body of bytes [start, end) (end None: to the end); read it inside `mapped` too."""
        kw = {}
        if start or end is not None:
            kw["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        with self.mapped(what or f"GET {self.location}{key}"):
            return self.client.get_object(Bucket=self.bucket, Key=self.key(key), **kw)["Body"]

    def size(self, key: str, what: str = "") -> int:
        with self.mapped(what or f"HEAD {self.location}{key}"):
            return int(self.client.head_object(Bucket=self.bucket, Key=self.key(key))["ContentLength"])

    def put(self, key: str, data: bytes, what: str = "", content_type: str = "application/json") -> None:
        with self.mapped(what or f"PUT {self.location}{key}"):
            self.client.put_object(Bucket=self.bucket, Key=self.key(key), Body=data, ContentType=content_type)

    def delete(self, key: str, what: str = "") -> None:
        with self.mapped(what or f"DELETE {self.location}{key}"):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(key))

    def list(self, prefix: str = "", what: str = "") -> list[str]:
        """Every key under `prefix`, relative to the bucket's prefix, sorted."""
        out = []
        with self.mapped(what or f"LIST {self.location}{prefix}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                              Prefix=self.key(prefix)):
                out += [o["Key"][len(self.prefix):] for o in page.get("Contents", [])]
        return sorted(out)

    def age(self, key: str, what: str = "") -> float:
        """Seconds since `key` was last written, by the store's clock (see _store_now)."""
        with self.mapped(what or f"HEAD {self.location}{key}"):
            r = self.client.head_object(Bucket=self.bucket, Key=self.key(key))
        return max(0.0, (_store_now(r) - r["LastModified"]).total_seconds())

    def list_meta(self, prefix: str = "", what: str = "") -> dict[str, tuple[str, float]]:
        """{key: (ETag, seconds since it was last written)} under `prefix`, keys relative to the
        bucket's prefix; the age by the store's clock."""
        out: dict[str, tuple[str, float]] = {}
        with self.mapped(what or f"LIST {self.location}{prefix}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                              Prefix=self.key(prefix)):
                now = _store_now(page)
                for o in page.get("Contents", []):
                    out[o["Key"][len(self.prefix):]] = (str(o.get("ETag", "")).strip('"'),
                                                        max(0.0, (now - o["LastModified"]).total_seconds()))
        return out

    def close(self) -> None:
        self.client.close()


def _store_now(response: dict) -> datetime.datetime:
    """The time by the store's clock: the response's Date header (LastModified is the store's
    clock too, so a skewed local clock cannot make a fresh object look old); ours if absent."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date) if date else datetime.datetime.now(datetime.timezone.utc)
    except (TypeError, ValueError):
        return datetime.datetime.now(datetime.timezone.utc)
