"""Model-based check of channels, rollback, retire and idempotent publish: random operation
sequences run against the real registry (filesystem store) and a dictionary model of the rules;
after every step the signed snapshot, the store mirror and the stored blobs match the model."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pifarm.errors import Conflict, NotFound
from pifarm.signed.integrity import digest_bytes
from pifarm.registry.service import Registry
from pifarm.signed.signing import TrustedKeys
from pifarm.signed.snapshot import verify_snapshot
from pifarm.registry.store import SNAPSHOT_KEY

NAMES = st.sampled_from(["a", "b"])
CONTENT = st.integers(0, 3)
CHANNEL = st.sampled_from(["stable", "canary"])


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="pifarm-model-")
        self.reg = Registry.open(Path(self.tmp.name) / "agg")
        self.keys = TrustedKeys.from_files([self.reg.pubkey_path])
        self.versions: dict[str, dict[int, int]] = {}   # name -> version -> content id
        self.retired: dict[str, set[int]] = {}
        self.channels: dict[str, dict[str, int]] = {}
        self.history: dict[tuple[str, str], list[int]] = {}
        self.revision = 0

    def teardown(self):
        self.reg.close()
        self.tmp.cleanup()

    def _live(self, name: str) -> dict[int, int]:
        return {v: c for v, c in self.versions.get(name, {}).items() if v not in self.retired.get(name, set())}

    def _set(self, name: str, ch: str, v: int, bump: bool = True) -> None:
        if self.channels.get(name, {}).get(ch) != v:
            self.channels.setdefault(name, {})[ch] = v
            self.history.setdefault((name, ch), []).append(v)
            self.revision += bump

    @rule(name=NAMES, content=CONTENT, channel=st.none() | CHANNEL)
    def publish(self, name, content, channel):
        f = Path(self.tmp.name) / f"{name}-{content}.bin"
        f.write_bytes(b"content %d" % content)
        m, _ = self.reg.publish(f, name, channel=channel)
        same = [v for v, c in self._live(name).items() if c == content]
        if same:
            assert m.version == max(same)
        else:  # a new version and its channel are one commit, one revision
            assert m.version == max(self.versions.get(name, {0: 0}), default=0) + 1
            self.versions.setdefault(name, {})[m.version] = content
            self.revision += 1
        if channel:
            self._set(name, channel, m.version, bump=bool(same))

    @rule(name=NAMES, version=st.integers(1, 6), channel=CHANNEL)
    def promote(self, name, version, channel):
        if version not in self._live(name):
            with pytest.raises(NotFound):
                self.reg.promote(name, version, channel)
            return
        self.reg.promote(name, version, channel)
        self._set(name, channel, version)

    @rule(name=NAMES, channel=CHANNEL)
    def rollback(self, name, channel):
        current = self.channels.get(name, {}).get(channel)
        if current is None:
            with pytest.raises(NotFound):
                self.reg.rollback(name, channel)
            return
        hist = self.history[(name, channel)]
        target = next((i for i in range(len(hist) - 1, -1, -1)
                       if hist[i] != current and hist[i] in self._live(name)), None)
        if target is None:
            with pytest.raises(Conflict):
                self.reg.rollback(name, channel)
            return
        assert self.reg.rollback(name, channel) == hist[target]
        del hist[target + 1:]
        self.channels[name][channel] = hist[target]
        self.revision += 1

    @rule(name=NAMES, version=st.integers(1, 6))
    def retire(self, name, version):
        if version not in self._live(name):
            with pytest.raises(NotFound):
                self.reg.retire(name, version)
            return
        if version in self.channels.get(name, {}).values():
            with pytest.raises(Conflict):
                self.reg.retire(name, version)
            return
        self.reg.retire(name, version)
        self.retired.setdefault(name, set()).add(version)
        self.revision += 1

    @invariant()
    def snapshot_matches_model(self):
        snap = verify_snapshot(self.reg.snapshot_document(), self.keys)
        assert snap.revision == self.revision
        assert self.reg.store.get_document(SNAPSHOT_KEY) == self.reg.snapshot_bytes()[1]
        for name in ("a", "b"):
            live = self._live(name)
            entry = snap.models.get(name)
            assert sorted(live) == ([p.version for p in entry.versions] if entry else [])
            assert (self.channels.get(name, {}) if live else {}) == (
                {c: p.version for c, p in entry.channels.items()} if entry else {})
        wanted = {digest_bytes(b"content %d" % c) for n in ("a", "b") for c in self._live(n).values()}
        assert set(self.reg.store.list_blobs()) == wanted
        docs = {k for k in self.reg.store.list_documents("models/")}
        assert docs == {f"models/{n}/{v}.json" for n in ("a", "b") for v in self._live(n)}
        assert all(json.loads(self.reg.manifest_bytes(n, v))["signed"]["version"] == v
                   for n in ("a", "b") for v in self._live(n))


RegistryMachine.TestCase.settings = settings(max_examples=12, stateful_step_count=14, deadline=None,
                                             database=None, suppress_health_check=list(HealthCheck))
test_registry_matches_model = RegistryMachine.TestCase
