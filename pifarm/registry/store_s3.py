"""The S3 store (boto3): the same key layout as the filesystem store, under an optional prefix.

Credentials come from `[store]` when set, else boto3's standard chain (AWS_* variables, files).
Client, URL and failure mapping are `pifarm.s3`'s; here a missing object is NotFound and every
other failure StoreUnavailable (the registry goes read-only on it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from boto3.s3.transfer import TransferConfig

from pifarm.errors import NotFound
from pifarm.registry.settings import StoreSettings
from pifarm.registry.store import BLOB_PREFIX, StoreUnavailable, blob_key
from pifarm.s3.bucket import Bucket, make_client
from pifarm.signed.integrity import CHUNK, BlobRef, StreamVerifier

_TRANSFER = TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=16 * 2**20, max_concurrency=4)


class S3Store:
    def __init__(self, client, url: str, *, create_bucket: bool = True, verify_uploads: bool = True):
        self.b = Bucket(client, url, missing=NotFound, failure=StoreUnavailable, timeout=StoreUnavailable)
        self.client, self.bucket, self.prefix, self.location = client, self.b.bucket, self.b.prefix, self.b.location
        self.create_bucket = create_bucket
        self.verify_uploads = verify_uploads

    @classmethod
    def from_settings(cls, s: StoreSettings) -> "S3Store":
        client = make_client(endpoint_url=s.endpoint_url, region=s.region or "us-east-1",
                             connect_timeout=s.connect_timeout, read_timeout=max(30.0, s.connect_timeout),
                             access_key_id=s.access_key_id, secret_access_key=s.secret_access_key)
        return cls(client, s.url, create_bucket=s.create_bucket, verify_uploads=s.verify_uploads)

    def _what(self, what: str) -> str:
        return f"S3 {self.location}: {what}"

    def check(self) -> None:
        try:
            with self.b.mapped(self._what("bucket check")):
                self.client.head_bucket(Bucket=self.bucket)
        except NotFound as e:
            if not self.create_bucket:
                raise StoreUnavailable(f"bucket {self.bucket} does not exist ([store] create_bucket is off)",
                                       source="s3") from e
            with self.b.mapped(self._what("creating bucket")):
                self.client.create_bucket(Bucket=self.bucket)
                self.client.put_bucket_versioning(Bucket=self.bucket,
                                                  VersioningConfiguration={"Status": "Enabled"})

    def has_blob(self, ref: BlobRef) -> bool:
        try:
            return self.blob_size(ref.digest) == ref.size
        except NotFound:
            return False

    def put_blob(self, ref: BlobRef, path: Path, *, consume: bool = False) -> None:
        with self.b.mapped(self._what(f"uploading blob {ref.digest}")):
            self.client.upload_file(str(path), self.bucket, self.b.key(blob_key(ref.digest)), Config=_TRANSFER)
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
        return self.b.size(blob_key(digest), self._what(f"blob {digest}"))

    def read_blob(self, digest: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        body = self.b.open(blob_key(digest), start, end, self._what(f"blob {digest}"))
        try:
            with self.b.mapped(self._what(f"reading blob {digest}")):
                yield from body.iter_chunks(CHUNK)
        finally:
            body.close()

    def local_blob_path(self, digest: str) -> Path | None:
        return None

    def delete_blob(self, digest: str) -> None:
        self.b.delete(blob_key(digest), self._what(f"deleting blob {digest}"))

    def list_blobs(self) -> list[str]:
        return ["blake3:" + k[len(BLOB_PREFIX):] for k in self.b.list(BLOB_PREFIX, self._what(f"listing {BLOB_PREFIX}"))
                if len(k) == len(BLOB_PREFIX) + 64]

    def blob_age(self, digest: str) -> float:
        """Seconds since the blob was written, by the store's clock."""
        return self.b.age(blob_key(digest), self._what(f"blob {digest}"))

    def blob_ages(self) -> dict[str, float]:
        """{digest: seconds since the blob was written}, by the store's clock."""
        return {"blake3:" + k[len(BLOB_PREFIX):]: age
                for k, (_etag, age) in self.b.list_meta(BLOB_PREFIX, self._what(f"listing {BLOB_PREFIX}")).items()
                if len(k) == len(BLOB_PREFIX) + 64}

    def put_document(self, key: str, data: bytes) -> None:
        self.b.put(key, data, self._what(f"writing {key}"))

    def get_document(self, key: str) -> bytes | None:
        try:
            return self.b.get(key, self._what(f"reading {key}"))
        except NotFound:
            return None

    def delete_document(self, key: str) -> None:
        self.b.delete(key, self._what(f"deleting {key}"))

    def list_documents(self, prefix: str) -> list[str]:
        return self.b.list(prefix, self._what(f"listing {prefix}"))

    def cleanup_temp(self, older_than: float | None = None) -> int:
        """Abort multipart uploads a crash left behind under our prefix (the writer holds the lock);
        with `older_than` (seconds) only those started that long ago (a shared bucket: the others
        may be another aggregator's uploads in progress)."""
        import datetime

        n = 0
        now = datetime.datetime.now(datetime.timezone.utc)
        with self.b.mapped(self._what("listing multipart uploads")):
            resp = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
            for u in resp.get("Uploads", []):
                started = u.get("Initiated")
                if older_than is not None and started is not None and (now - started).total_seconds() < older_than:
                    continue
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"])
                n += 1
        return n

    def close(self) -> None:
        self.b.close()
