"""The S3 store (boto3): the same key layout as the filesystem store, under an optional prefix.

Credentials come from `[store]` when set, else boto3's standard chain (AWS_* variables, files).
Every botocore failure is translated once, in `_mapped`, into StoreUnavailable or NotFound.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pifarm.errors import NotFound
from pifarm.signed.integrity import CHUNK, BlobRef, StreamVerifier
from pifarm.registry.settings import StoreSettings
from pifarm.registry.store import BLOB_PREFIX, StoreUnavailable, blob_key

_MISSING = ("404", "NoSuchKey", "NotFound", "NoSuchBucket")
_TRANSFER = TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=16 * 2**20, max_concurrency=4)


def parse_s3_url(url: str) -> tuple[str, str]:
    """("bucket", "prefix/" or "") from s3://bucket/prefix."""
    rest = url[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/") if prefix else ""


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


class S3Store:
    def __init__(self, client, bucket: str, prefix: str = "", *, create_bucket: bool = True,
                 verify_uploads: bool = True):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.create_bucket = create_bucket
        self.verify_uploads = verify_uploads
        self.location = f"s3://{bucket}/{prefix}"

    @classmethod
    def from_settings(cls, s: StoreSettings) -> "S3Store":
        bucket, prefix = parse_s3_url(s.url)
        kw = {}
        if s.access_key_id and s.secret_access_key:
            kw = {"aws_access_key_id": s.access_key_id, "aws_secret_access_key": s.secret_access_key}
        cfg = Config(connect_timeout=s.connect_timeout, read_timeout=max(30.0, s.connect_timeout),
                     retries={"max_attempts": 2, "mode": "standard"},
                     s3={"addressing_style": "path" if s.endpoint_url else "auto"})
        client = boto3.session.Session().client("s3", endpoint_url=s.endpoint_url, region_name=s.region or "us-east-1",
                                                config=cfg, **kw)
        return cls(client, bucket, prefix, create_bucket=s.create_bucket, verify_uploads=s.verify_uploads)

    @contextmanager
    def _mapped(self, what: str):
        try:
            yield
        except ClientError as e:
            if _code(e) in _MISSING:
                raise NotFound(f"{what}: not in {self.location}") from e
            raise StoreUnavailable(f"S3 {self.location}: {what}: {_code(e)} {e.response.get('Error', {}).get('Message', '')}".strip(),
                                   source="s3") from e
        except BotoCoreError as e:
            raise StoreUnavailable(f"S3 {self.location}: {what}: {e}", source="s3") from e

    def _k(self, key: str) -> str:
        return self.prefix + key

    def check(self) -> None:
        try:
            with self._mapped("bucket check"):
                self.client.head_bucket(Bucket=self.bucket)
        except NotFound as e:
            if not self.create_bucket:
                raise StoreUnavailable(f"bucket {self.bucket} does not exist ([store] create_bucket is off)",
                                       source="s3") from e
            with self._mapped("creating bucket"):
                self.client.create_bucket(Bucket=self.bucket)
                self.client.put_bucket_versioning(Bucket=self.bucket,
                                                  VersioningConfiguration={"Status": "Enabled"})

    def has_blob(self, ref: BlobRef) -> bool:
        try:
            return self.blob_size(ref.digest) == ref.size
        except NotFound:
            return False

    def put_blob(self, ref: BlobRef, path: Path, *, consume: bool = False) -> None:
        key = self._k(blob_key(ref.digest))
        with self._mapped(f"uploading blob {ref.digest}"):
            self.client.upload_file(str(path), self.bucket, key, Config=_TRANSFER)
        if self.verify_uploads:
            v = StreamVerifier(ref, source=self.location)
            for chunk in self.read_blob(ref.digest):
                v.update(chunk)
            v.finish()
        elif self.blob_size(ref.digest) != ref.size:
            raise StoreUnavailable(f"S3 {self.location}: blob {ref.digest} stored with the wrong size", source="s3")
        if consume:
            Path(path).unlink(missing_ok=True)

    def blob_size(self, digest: str) -> int:
        with self._mapped(f"blob {digest}"):
            return int(self.client.head_object(Bucket=self.bucket, Key=self._k(blob_key(digest)))["ContentLength"])

    def read_blob(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        kw = {}
        if start or end is not None:
            kw["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        with self._mapped(f"blob {digest}"):
            body = self.client.get_object(Bucket=self.bucket, Key=self._k(blob_key(digest)), **kw)["Body"]
        try:
            with self._mapped(f"reading blob {digest}"):
                yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def local_blob_path(self, digest: str) -> Path | None:
        return None

    def delete_blob(self, digest: str) -> None:
        with self._mapped(f"deleting blob {digest}"):
            self.client.delete_object(Bucket=self.bucket, Key=self._k(blob_key(digest)))

    def _list(self, prefix: str) -> list[str]:
        out = []
        with self._mapped(f"listing {prefix}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                              Prefix=self._k(prefix)):
                out += [o["Key"][len(self.prefix):] for o in page.get("Contents", [])]
        return sorted(out)

    def list_blobs(self) -> list[str]:
        return ["blake3:" + k[len(BLOB_PREFIX):] for k in self._list(BLOB_PREFIX)
                if len(k) == len(BLOB_PREFIX) + 64]

    def put_document(self, key: str, data: bytes) -> None:
        with self._mapped(f"writing {key}"):
            self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data, ContentType="application/json")

    def get_document(self, key: str) -> bytes | None:
        try:
            with self._mapped(f"reading {key}"):
                return self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()
        except NotFound:
            return None

    def delete_document(self, key: str) -> None:
        with self._mapped(f"deleting {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=self._k(key))

    def list_documents(self, prefix: str) -> list[str]:
        return self._list(prefix)

    def cleanup_temp(self) -> int:
        """Abort multipart uploads a crash left behind under our prefix (the writer holds the lock)."""
        n = 0
        with self._mapped("listing multipart uploads"):
            resp = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
            for u in resp.get("Uploads", []):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"])
                n += 1
        return n

    def close(self) -> None:
        self.client.close()
