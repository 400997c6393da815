"""The watcher: follows the real aggregator, refuses bad snapshots, degrades and recovers."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta

import pytest

from pifarm.cache.nodestate import read_state
from pifarm.cache.store import Cache
from pifarm.client.http import AggregatorClient
from pifarm.initiator.http_source import HttpSource
from pifarm.initiator.settings import WatcherSettings
from pifarm.initiator.watcher import Watcher
from pifarm.signed.signing import SigningKey, TrustedKeys
from tests.cache.helpers import manifest_doc, snapshot_doc
from tests.initiator.docserver import DocServer
from tests.support.wait import eventually

FAST = WatcherSettings(poll_wait=2, connect_timeout=1.0, rate=50, burst=50, backoff_base=0.05, backoff_max=0.5,
                       s3_poll_interval=0.5)


class Running:
    def __init__(self, watcher: Watcher):
        self.w, self.stop = watcher, threading.Event()
        self.t = threading.Thread(target=watcher.run, args=(self.stop,), daemon=True)
        self.t.start()

    def close(self) -> None:
        self.stop.set()
        self.t.join(timeout=30)
        self.w.close()


def active(cache: Cache, name: str):
    return cache.layout.read_ref(name, "active")


def test_follows_real_aggregator_publish_and_rollback(aggregator, tmp_path):
    f1, f2 = tmp_path / "v1.bin", tmp_path / "v2.bin"
    f1.write_bytes(os.urandom(300_000))
    f2.write_bytes(os.urandom(300_000))
    client = aggregator.client()
    client.publish(f1, "follow", "stable", format="raw")
    cache = Cache(tmp_path / "cache")
    state = tmp_path / "state"
    w = Watcher(cache=cache, sources=[HttpSource(aggregator.url)], trusted=TrustedKeys.from_files([aggregator.pubkey]),
                state_dir=state, aggregator=AggregatorClient(aggregator.url), settings=FAST)
    run = Running(w)
    try:
        assert eventually(lambda: (a := active(cache, "follow")) is not None and a.version == 1)
        client.publish(f2, "follow", "stable", format="raw")
        assert eventually(lambda: active(cache, "follow").version == 2)
        assert cache.layout.read_ref("follow", "previous").version == 1
        assert eventually(lambda: read_state(state).models["follow"]["version"] == 2)
        st = read_state(state)
        assert st.models["follow"]["source"] == "http" and st.models["follow"]["previous"] == 1
        assert st.paths["http"] == "live" and not st.degraded
        fetched = w.sources[0].received
        client.rollback("follow", "stable")  # registry rollback: v1 is still in the cache
        assert eventually(lambda: active(cache, "follow").version == 1)
        assert w.sources[0].received == fetched  # nothing downloaded again
        assert eventually(lambda: read_state(state).models["follow"]["source"] == "cache")
    finally:
        run.close()
        client.close()


def test_canary_channel_and_model_filter(tmp_path):
    key = SigningKey.generate()
    srv = DocServer()
    try:
        m_st, m_ca = manifest_doc(key, "a", 1, {"f": b"s" * 100}), manifest_doc(key, "a", 2, {"f": b"c" * 100})
        m_b = manifest_doc(key, "b", 1, {"f": b"b" * 100})
        for d in (m_st, m_ca, m_b):
            srv.manifests[(d["signed"]["name"], d["signed"]["version"])] = d
        for data in (b"s" * 100, b"c" * 100, b"b" * 100):
            from pifarm.signed.integrity import digest_bytes

            srv.blobs[digest_bytes(data)] = data
        srv.snapshot = snapshot_doc(key, 3, {"a": {"stable": m_st, "canary": m_ca}, "b": {"stable": m_b}})
        cache = Cache(tmp_path / "c")
        w = Watcher(cache=cache, sources=[HttpSource(srv.url)], trusted=TrustedKeys([key.public]),
                    state_dir=tmp_path / "s", channel="canary", models=["a"],
                    aggregator=AggregatorClient(srv.url), settings=FAST)
        w.cycle()
        assert active(cache, "a").version == 2 and active(cache, "b") is None
    finally:
        srv.stop()


@pytest.mark.parametrize("case", ["bad-signature", "older-revision", "expired"])
def test_bad_snapshots_are_refused(tmp_path, case):
    key = SigningKey.generate()
    srv = DocServer()
    try:
        m1, m2 = manifest_doc(key, "m", 1, {"f": b"1" * 64}), manifest_doc(key, "m", 2, {"f": b"2" * 64})
        from pifarm.signed.integrity import digest_bytes

        for d, data in ((m1, b"1" * 64), (m2, b"2" * 64)):
            srv.manifests[("m", d["signed"]["version"])] = d
            srv.blobs[digest_bytes(data)] = data
        srv.snapshot = snapshot_doc(key, 5, {"m": {"stable": m1}})
        cache = Cache(tmp_path / "c")
        w = Watcher(cache=cache, sources=[HttpSource(srv.url)], trusted=TrustedKeys([key.public]),
                    state_dir=tmp_path / "s", aggregator=AggregatorClient(srv.url), settings=FAST)
        w.cycle()
        assert active(cache, "m").version == 1 and w.revision == 5
        if case == "bad-signature":
            bad = snapshot_doc(key, 6, {"m": {"stable": m2}})
            bad["signed"]["revision"] = 7  # changed after signing
            srv.snapshot, want = bad, "does not verify"
        elif case == "older-revision":
            w.revision = 6  # revision 6 was seen before; the server now offers 5 (signed, valid)
            srv.snapshot, want = snapshot_doc(key, 5, {"m": {"stable": m2}}), "rollback refused"
        else:
            srv.snapshot, want = snapshot_doc(key, 9, {"m": {"stable": m2}}, expires_in=timedelta(seconds=-1)), "freeze refused"
        w._agg.next_try = 0
        w.cycle()
        assert active(cache, "m").version == 1
        st = read_state(tmp_path / "s")
        assert st.last_error and want in st.last_error
    finally:
        srv.stop()


def test_degraded_within_5s_when_nothing_answers_and_recovers(tmp_path):
    key = SigningKey.generate()
    srv = DocServer()
    url = srv.url
    m1 = manifest_doc(key, "m", 1, {"f": b"1" * 64})
    from pifarm.signed.integrity import digest_bytes

    srv.manifests[("m", 1)] = m1
    srv.blobs[digest_bytes(b"1" * 64)] = b"1" * 64
    srv.snapshot = snapshot_doc(key, 1, {"m": {"stable": m1}})
    cache = Cache(tmp_path / "c")
    state = tmp_path / "s"
    # a long poll_wait: recovery must not wait for a held long-poll to time out (regression)
    slow_poll = WatcherSettings(**{**FAST.__dict__, "poll_wait": 60})
    w = Watcher(cache=cache, sources=[HttpSource(url)], trusted=TrustedKeys([key.public]), state_dir=state,
                aggregator=AggregatorClient(url, connect_timeout=1.0), settings=slow_poll)
    run = Running(w)
    try:
        assert eventually(lambda: active(cache, "m") is not None)
        port = int(url.rsplit(":", 1)[1])
        srv.stop()
        t0 = time.monotonic()
        assert eventually(lambda: (s := read_state(state)) is not None and s.degraded, timeout=5.0)
        st = read_state(state)
        assert "http:" in st.degraded_reason and st.degraded_since and st.paths["http"] == "unreachable"
        assert active(cache, "m").version == 1  # keeps serving what it has
        assert time.monotonic() - t0 <= 5.0
        # the aggregator comes back on the same port: degraded mode ends by itself
        revived = _serve_on(port, srv)
        try:
            assert eventually(lambda: not read_state(state).degraded, timeout=10.0)
            assert read_state(state).degraded_reason is None
        finally:
            revived.stop()
    finally:
        run.close()


def _serve_on(port: int, old: DocServer) -> DocServer:
    """A DocServer with the same documents, bound to a given port."""
    from http.server import ThreadingHTTPServer

    new = DocServer()
    new.snapshot, new.manifests, new.blobs = old.snapshot, old.manifests, old.blobs
    handler = new._httpd.RequestHandlerClass
    new.stop()
    new.closing = False
    new._httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
    new._httpd.daemon_threads = True
    new._thread = threading.Thread(target=new._httpd.serve_forever, daemon=True)
    new._thread.start()
    return new


def test_highest_revision_survives_a_restart_and_bad_manifest_path_is_refused(tmp_path):
    from pifarm.cache.nodestate import NodeState, write_state

    key = SigningKey.generate()
    srv = DocServer()
    try:
        m1 = manifest_doc(key, "m", 1, {"f": b"1" * 64})
        srv.manifests[("m", 1)] = m1
        from pifarm.signed.integrity import digest_bytes

        srv.blobs[digest_bytes(b"1" * 64)] = b"1" * 64
        srv.snapshot = snapshot_doc(key, 5, {"m": {"stable": m1}})
        write_state(tmp_path / "s", NodeState(revision=9))  # seen before the restart
        cache = Cache(tmp_path / "c")
        w = Watcher(cache=cache, sources=[HttpSource(srv.url)], trusted=TrustedKeys([key.public]),
                    state_dir=tmp_path / "s", aggregator=AggregatorClient(srv.url), settings=FAST)
        w.cycle()
        assert active(cache, "m") is None and "rollback refused" in read_state(tmp_path / "s").last_error
        # a signed manifest whose file path escapes the cache is refused, nothing installed
        body = dict(m1["signed"], version=2, files=[dict(m1["signed"]["files"][0], path="../../x")])
        bad = key.sign(body)
        srv.manifests[("m", 2)] = bad
        srv.snapshot = snapshot_doc(key, 10, {"m": {"stable": bad}})
        w._refused_until = 0  # skip the backoff the refused snapshot earned
        w.cycle()
        assert active(cache, "m") is None
        err = read_state(tmp_path / "s").models["m"]["error"]
        assert "v2: manifest m v2 refused" in err and "'../../x'" in err
        assert not (cache.root / "manifests" / "m" / "2.json").exists()
    finally:
        srv.stop()


def test_state_file_names_the_nvme_path_state_and_the_source_that_served(tmp_path):
    """An NVMe source that offers nothing is reported as "nothing-offered" (not unreachable) in
    node.json, and the model is recorded as served by the next source in the chain."""
    from pifarm.initiator.nvme_tcp.source import NvmeTcpUserspaceSource
    from pifarm.signed.integrity import digest_bytes

    key = SigningKey.generate()
    srv = DocServer()
    nvme = NvmeTcpUserspaceSource(clients=[])
    try:
        m = manifest_doc(key, "a", 1, {"f": b"n" * 64})
        srv.manifests[("a", 1)] = m
        srv.blobs[digest_bytes(b"n" * 64)] = b"n" * 64
        srv.snapshot = snapshot_doc(key, 1, {"a": {"stable": m}})
        cache = Cache(tmp_path / "c")
        w = Watcher(cache=cache, sources=[nvme, HttpSource(srv.url)], trusted=TrustedKeys([key.public]),
                    state_dir=tmp_path / "s", aggregator=AggregatorClient(srv.url), settings=FAST)
        w.cycle()
        state = read_state(tmp_path / "s")
        assert state.paths["nvme-tcp-userspace"] == "nothing-offered"
        assert state.models["a"]["source"] == "http"
        assert active(cache, "a").version == 1
    finally:
        srv.stop()


def _unfetchable(tmp_path, key):
    """A server whose snapshot (revision 3) names m v1, whose blob is not there yet."""
    from pifarm.signed.integrity import digest_bytes

    srv = DocServer()
    m1 = manifest_doc(key, "m", 1, {"f": b"1" * 64})
    srv.manifests[("m", 1)] = m1
    srv.snapshot = snapshot_doc(key, 3, {"m": {"stable": m1}})
    return srv, digest_bytes(b"1" * 64), b"1" * 64


def test_a_failed_install_is_retried_without_a_new_revision(tmp_path):
    """One failed fetch must not leave the node on its old version until the next publish: the
    watcher retries on its own backoff with the current snapshot (revision unchanged)."""
    key = SigningKey.generate()
    srv, digest, data = _unfetchable(tmp_path, key)
    cache = Cache(tmp_path / "c")
    w = Watcher(cache=cache, sources=[HttpSource(srv.url)], trusted=TrustedKeys([key.public]),
                state_dir=tmp_path / "s", aggregator=AggregatorClient(srv.url), settings=FAST)
    run = Running(w)
    try:
        assert eventually(lambda: "error" in read_state(tmp_path / "s").models.get("m", {}))
        assert active(cache, "m") is None and w.revision == 3
        srv.blobs[digest] = data  # the source is back; the registry publishes nothing new
        assert eventually(lambda: (a := active(cache, "m")) is not None and a.version == 1, timeout=60)
        assert eventually(lambda: "error" not in read_state(tmp_path / "s").models["m"])
        assert w.revision == 3
    finally:
        run.close()
        srv.stop()


def test_a_failed_install_is_retried_at_once_after_a_restart(tmp_path):
    key = SigningKey.generate()
    srv, digest, data = _unfetchable(tmp_path, key)
    try:
        def watcher() -> Watcher:
            return Watcher(cache=Cache(tmp_path / "c"), sources=[HttpSource(srv.url)],
                           trusted=TrustedKeys([key.public]), state_dir=tmp_path / "s",
                           aggregator=AggregatorClient(srv.url), settings=FAST)
        w = watcher()
        w.cycle()
        assert "error" in read_state(tmp_path / "s").models["m"] and w.revision == 3
        w.close()
        srv.blobs[digest] = data
        w = watcher()  # restarted with revision 3 remembered and the failure in its state
        w.cycle()
        assert active(w.cache, "m").version == 1 and "error" not in read_state(tmp_path / "s").models["m"]
        w.close()
    finally:
        srv.stop()
