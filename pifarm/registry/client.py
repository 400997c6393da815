"""HTTP client of the aggregator API (CLI, tests, and any component that talks to a registry).

Server errors come back as the same PifarmError classes the server raised, carrying the server's
one-line message; transport failures become SourceError naming the URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import httpx

from pifarm import errors
from pifarm.signed.files import collect_files
from pifarm.signed.integrity import CHUNK, digest_file

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class MetadataReply:
    status: int  # 200 or 304
    revision: int
    document: dict[str, Any] | None
    reset: bool


def _error_for(resp: httpx.Response, what: str) -> errors.PifarmError:
    try:
        body = resp.json()
        msg, kind = body.get("error") or resp.text, body.get("kind", "")
    except ValueError:
        msg, kind = resp.text.strip()[:300] or resp.reason_phrase, ""
    cls = errors.for_response(resp.status_code, kind)
    if issubclass(cls, errors.SourceError) or cls is errors.ConfigfsError:
        return cls(f"{what}: {msg}")
    return cls(f"{what}: {msg} (HTTP {resp.status_code})" if resp.status_code in (401, 403, 413) else f"{what}: {msg}")


class RegistryClient:
    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0,
                 verify: bool | str = True, cert: str | tuple[str, str] | None = None,
                 transport: httpx.BaseTransport | None = None):
        if not url.startswith(("http://", "https://")):
            raise errors.UsageError(f"registry URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self.token = token
        self._http = httpx.Client(base_url=self.url, timeout=timeout, verify=verify, cert=cert, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _headers(self, write: bool) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if write and self.token else {}

    def _request(self, method: str, path: str, what: str, *, write: bool = False, ok=(200, 201),
                 **kw) -> httpx.Response:
        try:
            resp = self._http.request(method, path, headers={**self._headers(write), **kw.pop("headers", {})}, **kw)
        except httpx.TimeoutException as e:
            raise errors.SourceTimeout(f"{what}: registry {self.url} did not answer in time", source="http") from e
        except httpx.HTTPError as e:
            raise errors.SourceError(f"{what}: registry {self.url} unreachable: {e}", source="http") from e
        if resp.status_code not in ok:
            raise _error_for(resp, what)
        return resp

    # -- reads -----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health", "health").json()

    def metadata(self, since: int | None = None, wait: float | None = None) -> MetadataReply:
        params: dict[str, Any] = {}
        if since is not None:
            params["since"] = since
        if wait is not None:
            params["wait"] = wait
        timeout = httpx.Timeout(30.0, read=(wait or 0) * 1.1 + 30.0)
        resp = self._request("GET", "/v1/metadata", "metadata", ok=(200, 304), params=params, timeout=timeout)
        rev = int(resp.headers.get("x-pifarm-revision", "-1"))
        doc = resp.json() if resp.status_code == 200 else None
        return MetadataReply(resp.status_code, rev, doc, resp.headers.get("x-pifarm-reset") == "1")

    def models(self) -> dict[str, Any]:
        return self._request("GET", "/v1/models", "list models").json()["models"]

    def model(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/models/{name}", f"model {name}").json()

    def manifest_document(self, name: str, version: int) -> dict[str, Any]:
        return self._request("GET", f"/v1/models/{name}/versions/{version}", f"manifest {name} v{version}").json()

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        try:
            resp = self._request("HEAD", f"/v1/blobs/{digest}", f"blob {digest}", ok=(200,))
        except errors.NotFound:
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
