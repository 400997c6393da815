"""`AggregatorClient`: the aggregator's HTTP API for the node and the CLI, one httpx client each.

Error responses come back as the PifarmError class the server raised (`error_for`, over the one
status table in `pifarm.errors`), carrying the server's one-line message; transport failures
become SourceError / SourceTimeout naming what was asked (`http_errors`). The node's calls
(`poll`, `manifest`, `blob`) turn every other answer into SourceError too, so its watcher and
source chain move on to the next path instead of stopping.
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import httpx

from pifarm import errors
from pifarm.signed.files import collect_files
from pifarm.signed.integrity import CHUNK, digest_file
from pifarm.signed.manifest import check_name

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Poll:
    document: Any | None  # None: no change within `wait` (HTTP 304)
    revision: int | None
    reset: bool = False  # the registry is behind what we asked for (X-Pifarm-Reset)


@contextlib.contextmanager
def http_errors(what: str, source: str = "http", where: str = "") -> Iterator[None]:
    """Translate httpx failures at the edge: timeouts, no connection (`where` names the peer),
    and everything else the transport does."""
    try:
        yield
    except httpx.TimeoutException as e:
        raise errors.SourceTimeout(f"{what}: timed out ({type(e).__name__})", source) from e
    except httpx.ConnectError as e:
        raise errors.SourceError(f"{what}: {where + ' ' if where else ''}unreachable: {e}", source) from e
    except httpx.HTTPError as e:
        raise errors.SourceError(f"{what}: {type(e).__name__}: {e}", source) from e


def error_for(resp: httpx.Response, what: str) -> errors.PifarmError:
    """The error an error response stands for: its JSON body's `kind`, else its status."""
    try:
        body = resp.json()
        msg, kind = body.get("error") or body.get("detail") or resp.text, body.get("kind", "")
    except (ValueError, AttributeError):
        msg, kind = resp.text.strip()[:300] or resp.reason_phrase, ""
    if resp.status_code in (404, 405) and not kind and resp.request.method != "HEAD":
        # every pifarm aggregator error names its kind; a bare 404 is another server (issue 20)
        return errors.NotFound(f"{what}: {resp.request.url.scheme}://{resp.request.url.netloc.decode()} answered "
                               f"{resp.status_code} for {resp.request.url.path}: not a pifarm aggregator API (a "
                               f"node's inference port?); point --registry at the aggregator (default port 8470)")
    cls = errors.for_response(resp.status_code, kind)
    if issubclass(cls, errors.SourceError) or cls is errors.ConfigfsError:
        return cls(f"{what}: {msg}")
    return cls(f"{what}: {msg} (HTTP {resp.status_code})" if resp.status_code in (401, 403, 413) else f"{what}: {msg}")


@contextlib.contextmanager
def as_source_error(source: str = "http", keep: tuple[type[errors.PifarmError], ...] = ()) -> Iterator[None]:
    """For the node: whatever the aggregator answered instead becomes a SourceError (the next
    path or source is tried), except the classes in `keep`."""
    try:
        yield
    except (errors.SourceError, *keep):
        raise
    except errors.PifarmError as e:
        raise errors.SourceError(str(e), source) from e


def _json(resp: httpx.Response, what: str, source: str) -> Any:
    try:
        return resp.json()
    except ValueError as e:
        raise errors.SourceError(f"{what}: response is not JSON", source) from e


class AggregatorClient:
    """One httpx client on the aggregator at `url`. `tls` is what httpx takes as `verify=` (an
    SSLContext from `pifarm.client.tls.tls_context`, a CA bundle path, or a bool); `token` is the
    bearer token for writes. A URL that is not http(s) raises `bad_url` (the CLI: UsageError; a
    node's configured source: SourceError, so its chain skips it)."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0,
                 connect_timeout: float | None = None, tls: ssl.SSLContext | str | bool | None = None,
                 transport: httpx.BaseTransport | None = None, source: str = "http",
                 bad_url: type[errors.PifarmError] = errors.UsageError):
        if not url.startswith(("http://", "https://")):
            msg = f"aggregator URL {url!r} must start with http:// or https://"
            raise bad_url(msg, source) if issubclass(bad_url, errors.SourceError) else bad_url(msg)
        self.url = url.rstrip("/")
        self.token = token
        self.source = source
        self._http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=connect_timeout or timeout),
                                  verify=True if tls is None else tls, transport=transport, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "AggregatorClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, method: str, path: str, what: str, *, write: bool = False, ok=(200, 201),
                 **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if write and self.token else {}
        with http_errors(what, self.source, f"aggregator {self.url}"):
            resp = self._http.request(method, path, headers={**headers, **kw.pop("headers", {})}, **kw)
        if resp.status_code not in ok:
            raise error_for(resp, what)
        return resp

    # -- the node: long-poll, manifests, blobs ----------------------------------------------------
    def poll(self, since: int, wait: int) -> Poll:
        """`GET /v1/metadata?since=N&wait=S`: the snapshot when it changed, else `document` None."""
        what = f"GET {self.url}/v1/metadata"
        # the server may hold the request `wait` seconds plus jitter up to wait/16
        timeout = httpx.Timeout(wait + wait / 16 + 10.0, connect=self._http.timeout.connect)
        with as_source_error(self.source):
            r = self._request("GET", "/v1/metadata", what, ok=(200, 304), params={"since": since, "wait": wait},
                              timeout=timeout)
        rev = r.headers.get("X-Pifarm-Revision")
        revision = int(rev) if rev and rev.lstrip("-").isdigit() else None
        if r.status_code == 304:
            return Poll(None, revision)
        return Poll(_json(r, what, self.source), revision, r.headers.get("X-Pifarm-Reset") == "1")

    def manifest(self, name: str, version: int) -> Any:
        """The signed manifest document of name v`version`; NotFound when the aggregator lacks it."""
        try:
            with as_source_error(self.source, keep=(errors.NotFound,)):
                doc = self.manifest_document(check_name(name), int(version))
        except errors.NotFound as e:
            raise errors.NotFound(f"the aggregator has no {name} v{version}") from e
        # accept the bare signed document or one wrapped as {"manifest": {...}}
        if isinstance(doc, dict) and "signed" not in doc and isinstance(doc.get("manifest"), dict):
            doc = doc["manifest"]
        return doc

    @contextlib.contextmanager
    def blob(self, digest: str, start: int = 0) -> Iterator[httpx.Response]:
        """The streaming response for the blob's bytes from `start` on (200 when the server
        ignored the Range, 206 otherwise); every failure, 404 included, is a SourceError."""
        what = f"GET {self.url}/v1/blobs/{digest}"
        headers = {"Range": f"bytes={start}-"} if start else {}
        with (http_errors(what, self.source, f"aggregator {self.url}"),
              self._http.stream("GET", f"/v1/blobs/{digest}", headers=headers) as r):
            if r.status_code == 404:
                raise errors.SourceError(f"{what}: 404, the aggregator does not have this blob", self.source)
            if r.status_code not in (200, 206):
                r.read()
                with as_source_error(self.source):
                    raise error_for(r, what)
            yield r

    # -- reads for the CLI ----------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health", "health").json()

    def models(self) -> dict[str, Any]:
        return self._request("GET", "/v1/models", "list models").json()["models"]

    def model(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/models/{name}", f"model {name}").json()

    def manifest_document(self, name: str, version: int) -> Any:
        what = f"manifest {name} v{version}"
        return _json(self._request("GET", f"/v1/models/{name}/versions/{version}", what, ok=(200,)), what, self.source)

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        try:
            resp = self._request("HEAD", f"/v1/blobs/{digest}", f"blob {digest}", ok=(200,))
        except errors.NotFound:
            return False
        except errors.ReadOnlyError:
            # a HEAD answer has no body to carry the reason ("Service Unavailable"): say "absent" and
            # let the upload that follows bring back the registry's read-only reason (issue 20)
            return False
        return size is None or int(resp.headers.get("content-length", -1)) == size

    # -- writes ----------------------------------------------------------------------------------
    def upload_blob(self, digest: str, path: Path, size: int, progress: Progress | None = None,
                    total: int = 0) -> None:
        def body() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    if progress:
                        progress("upload", len(chunk), total)
                    yield chunk

        self._request("PUT", f"/v1/blobs/{digest}", f"upload {path}", write=True, params={"size": size},
                      content=body(), headers={"Content-Length": str(size)}, timeout=httpx.Timeout(30.0, write=300.0))

    def publish(self, path: str | Path, name: str, channel: str | None = None,
                labels: Mapping[str, str] | None = None, *, format: str | None = None,
                progress: Progress | None = None) -> dict[str, Any]:
        """Hash locally, upload the blobs the registry lacks, then publish the version."""
        files = collect_files(path)
        total = sum(f.size for f in files)
        entries, done = [], set()
        for f in files:
            digest, size = digest_file(f.source)
            entries.append({"path": f.relpath, "size": size, "digest": digest})
            if progress:
                progress("hash", size, total)
        for f, e in zip(files, entries):
            if e["digest"] in done or self.has_blob(e["digest"], e["size"]):
                if progress:
                    progress("upload", e["size"], total)
            else:
                self.upload_blob(e["digest"], f.source, e["size"], progress, total)
            done.add(e["digest"])
        body = {"files": entries, "channel": channel, "labels": dict(labels or {}), "format": format}
        return self._request("POST", f"/v1/models/{name}/versions", f"publish {name}", write=True, json=body,
                             timeout=httpx.Timeout(30.0, read=300.0)).json()

    def promote(self, name: str, version: int, channel: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/models/{name}/channels/{channel}", f"promote {name} v{version}",
                             write=True, json={"version": int(version)}).json()

    def rollback(self, name: str, channel: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/models/{name}/channels/{channel}/rollback", f"rollback {name} {channel}",
                             write=True).json()

    def retire(self, name: str, version: int) -> dict[str, Any]:
        return self._request("POST", f"/v1/models/{name}/versions/{version}/retire", f"retire {name} v{version}",
                             write=True).json()
