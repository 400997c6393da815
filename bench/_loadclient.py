"""Load generator for b_inference, run as its own process: raw HTTP/1.1 keep-alive over asyncio
streams (stdlib only, so it starts fast and costs little next to the server it measures).

    python bench/_loadclient.py URL PATH BODY_FILE HEADER_LEN CONCURRENCY SECONDS  -> JSON stats
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.parse


async def _client(host: str, port: int, path: str, body: bytes, header_len: int | None, conc: int,
                  seconds: float) -> dict:
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}",
            "Content-Type: application/octet-stream" if header_len else "Content-Type: application/json"]
    if header_len:
        head.append(f"Inference-Header-Content-Length: {header_len}")
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    lat: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def one_conn() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                writer.write(request)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    k, _, v = line.decode().partition(":")
                    if k.lower() == "content-length":
                        length = int(v)
                await reader.readexactly(length)
                if b" 200 " not in status_line:
                    errors += 1
                lat.append(time.perf_counter() - t)
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one_conn() for _ in range(conc)))
    return {"n": len(lat), "seconds": time.perf_counter() - t0, "errors": errors, "lat": lat}


def main(argv: list[str]) -> None:
    url, path, body_file, header_len, conc, seconds = argv
    u = urllib.parse.urlsplit(url)
    with open(body_file, "rb") as f:
        body = f.read()
    res = asyncio.run(_client(u.hostname, u.port, path, body, int(header_len) or None, int(conc), float(seconds)))
    print(json.dumps(res))


if __name__ == "__main__":
    main(sys.argv[1:])
