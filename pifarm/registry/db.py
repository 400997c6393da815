"""Registry metadata in SQLite (WAL): revisions, versions, channels and their history.

The database is the commit point of every change: a version exists once its row is committed,
never before. The signed manifest and the signed snapshot are kept here byte for byte, so the
API keeps serving metadata when the store is unreachable, and start-up can re-mirror the store.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pifarm.errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, manifest_digest TEXT NOT NULL,
    document BLOB NOT NULL, retired INTEGER NOT NULL DEFAULT 0, created TEXT NOT NULL,
    total_size INTEGER NOT NULL, content_key TEXT NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS version_files (
    name TEXT NOT NULL, version INTEGER NOT NULL, path TEXT NOT NULL, digest TEXT NOT NULL,
    size INTEGER NOT NULL, PRIMARY KEY (name, version, path));
CREATE INDEX IF NOT EXISTS version_files_digest ON version_files (digest);
CREATE TABLE IF NOT EXISTS channels (
    name TEXT NOT NULL, channel TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (name, channel));
CREATE TABLE IF NOT EXISTS channel_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, channel TEXT NOT NULL, version INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class VersionRow:
    name: str
    version: int
    manifest_digest: str
    document: bytes
    retired: bool
    created: str
    total_size: int
    content_key: str


class Database:
    """One connection, serialised by a lock: writes are short and the API reads mostly from memory."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"registry database {self.path} cannot be opened: {e}") from e

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _q(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # -- meta -----------------------------------------------------------------------------
    def get_meta(self, key: str, default=None):
        rows = self._q("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0][0] if rows else default

    @staticmethod
    def set_meta(conn: sqlite3.Connection, key: str, value) -> None:
        conn.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                     (key, value))

    def revision(self) -> int:
        return int(self.get_meta("revision", 0))

    # -- versions ---------------------------------------------------------------------------
    _COLS = "name, version, manifest_digest, document, retired, created, total_size, content_key"

    def _row(self, r: tuple) -> VersionRow:
        return VersionRow(r[0], r[1], r[2], bytes(r[3]), bool(r[4]), r[5], r[6], r[7])

    def version(self, name: str, version: int) -> VersionRow | None:
        rows = self._q(f"SELECT {self._COLS} FROM versions WHERE name=? AND version=?", (name, version))
        return self._row(rows[0]) if rows else None

    def versions(self, name: str | None = None, include_retired: bool = False) -> list[VersionRow]:
        sql = f"SELECT {self._COLS} FROM versions WHERE 1=1"
        args: tuple = ()
        if name is not None:
            sql, args = sql + " AND name=?", (name,)
        if not include_retired:
            sql += " AND retired=0"
        return [self._row(r) for r in self._q(sql + " ORDER BY name, version", args)]

    def models(self) -> list[str]:
        return [r[0] for r in self._q("SELECT DISTINCT name FROM versions ORDER BY name")]

    def next_version(self, conn: sqlite3.Connection, name: str) -> int:
        (v,) = conn.execute("SELECT COALESCE(MAX(version), 0) FROM versions WHERE name=?", (name,)).fetchone()
        return int(v) + 1

    def find_content(self, name: str, content_key: str) -> VersionRow | None:
        rows = self._q(f"SELECT {self._COLS} FROM versions WHERE name=? AND content_key=? AND retired=0 "
                       "ORDER BY version DESC LIMIT 1", (name, content_key))
        return self._row(rows[0]) if rows else None

    @staticmethod
    def insert_version(conn: sqlite3.Connection, row: VersionRow, files: list[tuple[str, str, int]]) -> None:
        conn.execute("INSERT INTO versions(name, version, manifest_digest, document, retired, created, total_size, "
                     "content_key) VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
                     (row.name, row.version, row.manifest_digest, row.document, row.created, row.total_size,
                      row.content_key))
        conn.executemany("INSERT INTO version_files(name, version, path, digest, size) VALUES (?, ?, ?, ?, ?)",
                         [(row.name, row.version, p, d, s) for p, d, s in files])

    def live_digests(self) -> set[str]:
        """Every blob digest a non-retired version refers to."""
        return {r[0] for r in self._q(
            "SELECT DISTINCT f.digest FROM version_files f JOIN versions v "
            "ON f.name=v.name AND f.version=v.version WHERE v.retired=0")}

    def files(self, name: str, version: int) -> list[tuple[str, str, int]]:
        return self._q("SELECT path, digest, size FROM version_files WHERE name=? AND version=? ORDER BY path",
                       (name, version))

    # -- channels ---------------------------------------------------------------------------
    def channels(self, name: str) -> dict[str, int]:
        return {c: v for c, v in self._q("SELECT channel, version FROM channels WHERE name=?", (name,))}

    def all_channels(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for n, c, v in self._q("SELECT name, channel, version FROM channels"):
            out.setdefault(n, {})[c] = v
        return out

    @staticmethod
    def set_channel(conn: sqlite3.Connection, name: str, channel: str, version: int) -> None:
        conn.execute("INSERT INTO channels(name, channel, version) VALUES (?, ?, ?) "
                     "ON CONFLICT(name, channel) DO UPDATE SET version=excluded.version", (name, channel, version))
        conn.execute("INSERT INTO channel_history(name, channel, version) VALUES (?, ?, ?)", (name, channel, version))

    @staticmethod
    def history(conn: sqlite3.Connection, name: str, channel: str) -> list[tuple[int, int]]:
        """(seq, version) assignments of a channel, newest first."""
        return conn.execute("SELECT seq, version FROM channel_history WHERE name=? AND channel=? ORDER BY seq DESC",
                            (name, channel)).fetchall()
