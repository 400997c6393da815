"""The registry's logical state as one JSON document, and back into SQLite.

With an S3 store the bucket is the source of truth: every revision document
(`revisions/<n>.json`, see `bucketlog`) carries the whole state after that revision, so an
aggregator catches up (or rebuilds its database) from the newest revision alone. Manifest
documents are not repeated in it: a version names the revision that added it, whose document
carries the manifest (and `models/<name>/<version>.json` mirrors it).
"""

from __future__ import annotations

import sqlite3
from typing import Any

META_KEYS = ("rollouts", "nsid_next")  # meta rows that are registry state (not cache bookkeeping)


def export_state(conn: sqlite3.Connection) -> dict[str, Any]:
    versions = []
    for r in conn.execute("SELECT name, version, manifest_digest, retired, created, total_size, content_key "
                          "FROM versions ORDER BY name, version").fetchall():
        files = conn.execute("SELECT path, digest, size FROM version_files WHERE name=? AND version=? ORDER BY path",
                             (r[0], r[1])).fetchall()
        versions.append({"name": r[0], "version": r[1], "manifest_digest": r[2], "retired": bool(r[3]),
                         "created": r[4], "size": r[5], "content_key": r[6], "files": [list(f) for f in files],
                         "added_in": _added_in(conn, r[0], r[1]), "nsid": _nsid(conn, r[0], r[1])})
    channels = [list(r) for r in conn.execute("SELECT name, channel, version FROM channels ORDER BY name, channel")]
    history = [list(r) for r in conn.execute("SELECT seq, name, channel, version FROM channel_history ORDER BY seq")]
    meta = {k: v for k, v in conn.execute(
        f"SELECT key, value FROM meta WHERE key IN ({','.join('?' * len(META_KEYS))})", META_KEYS)}
    return {"versions": versions, "channels": channels, "history": history, "meta": meta}


def ensure_schema(conn: sqlite3.Connection) -> None:
    """The bucket-mode columns: which revision added a version, and its namespace id."""
    conn.execute("CREATE TABLE IF NOT EXISTS version_extra (name TEXT NOT NULL, version INTEGER NOT NULL, "
                 "added_in INTEGER, nsid INTEGER, PRIMARY KEY (name, version))")


def set_extra(conn: sqlite3.Connection, name: str, version: int, added_in: int | None, nsid: int | None) -> None:
    conn.execute("INSERT INTO version_extra(name, version, added_in, nsid) VALUES (?, ?, ?, ?) "
                 "ON CONFLICT(name, version) DO UPDATE SET added_in=excluded.added_in, nsid=excluded.nsid",
                 (name, version, added_in, nsid))


def _added_in(conn, name: str, version: int) -> int | None:
    row = conn.execute("SELECT added_in FROM version_extra WHERE name=? AND version=?", (name, version)).fetchone()
    return row[0] if row else None


def _nsid(conn, name: str, version: int) -> int | None:
    row = conn.execute("SELECT nsid FROM version_extra WHERE name=? AND version=?", (name, version)).fetchone()
    return row[0] if row else None


def nsids(conn: sqlite3.Connection) -> dict[tuple[str, int], int]:
    return {(n, v): i for n, v, i in conn.execute("SELECT name, version, nsid FROM version_extra WHERE nsid IS NOT NULL")}


def import_state(conn: sqlite3.Connection, state: dict[str, Any], documents: dict[tuple[str, int], bytes]) -> None:
    """Inside a transaction: make the tables hold exactly `state`; `documents` has the signed
    manifest bytes of every version (the caller fetched those the database lacked)."""
    conn.execute("DELETE FROM version_files")
    conn.execute("DELETE FROM versions")
    conn.execute("DELETE FROM version_extra")
    conn.execute("DELETE FROM channels")
    conn.execute("DELETE FROM channel_history")
    for v in state["versions"]:
        key = (v["name"], int(v["version"]))
        conn.execute("INSERT INTO versions(name, version, manifest_digest, document, retired, created, total_size, "
                     "content_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (*key, v["manifest_digest"], documents[key], int(v["retired"]), v["created"], v["size"],
                      v["content_key"]))
        conn.executemany("INSERT INTO version_files(name, version, path, digest, size) VALUES (?, ?, ?, ?, ?)",
                         [(*key, p, d, s) for p, d, s in v["files"]])
        set_extra(conn, *key, v.get("added_in"), v.get("nsid"))
    conn.executemany("INSERT INTO channels(name, channel, version) VALUES (?, ?, ?)",
                     [tuple(c) for c in state["channels"]])
    conn.executemany("INSERT INTO channel_history(seq, name, channel, version) VALUES (?, ?, ?, ?)",
                     [tuple(h) for h in state["history"]])
    conn.execute(f"DELETE FROM meta WHERE key IN ({','.join('?' * len(META_KEYS))})", META_KEYS)
    for k, val in state.get("meta", {}).items():
        if k in META_KEYS:
            conn.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (k, val))
