"""Issue 11: fuzzing the NVMe/TCP codec and the userspace target with Hypothesis (bounded: part of
`make test`). Stateful sequences of well-formed, mutated and random PDUs; the properties are
the ones a hostile LAN host tests: no crash (only RemoteProtocolError, with a message), no hang,
a bounded buffer, replies never larger than MDTS, and a target that keeps serving others."""

from __future__ import annotations

import socket

import pytest
import uuid

from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pifarm import nvmewire as w
from pifarm.nvmewire._codec import INCAPSULE_MAX
from pifarm.target.userspace import Controllers, QueueSession, ThreadedTarget
from tests.nvme.conftest import HOSTNQN, OTHER_HOST, SUBNQN, make_volume, target_config
from tests.nvme.test_target_behaviour import RawHost

MAX_DATA = 1 << 16  # the codec under test bounds each PDU's data to this


def _pdu_strategy():
    cid = st.integers(0, 0xFFFF)
    sqe = st.builds(lambda op, c, nsid, d10, d11, d12, n: w.Sqe(op, c, nsid, d10, d11, d12, sgl=w.Sgl(0, n)),
                    st.sampled_from([0x00, 0x01, 0x02, 0x06, 0x09, 0x0A, 0x0C, 0x18, 0x7F, 0x80, 0xFF]), cid,
                    st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                    st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
    return st.one_of(
        st.builds(w.CapsuleCmd, sqe, st.binary(max_size=2048)),
        st.builds(lambda c, t, o, n: w.H2CData(c, t, o, bytes(n), last=True), cid, cid, st.integers(0, 2**20),
                  st.integers(1, 5000)),
        st.builds(lambda f: w.TermReq(f, 0, from_host=True), st.integers(0, 7)),
    )


class CodecMachine(RuleBasedStateMachine):
    """A controller-side codec fed by a hostile host: encoded PDUs, mutated ones, garbage, in any
    split. It must decode, ask for more, or fail with RemoteProtocolError, and never hold more
    than one PDU's worth of unconsumed bytes."""

    def __init__(self):
        super().__init__()
        self._fresh()

    def _fresh(self) -> None:
        self.host = w.Codec(w.Role.HOST)
        self.ctrl = w.Codec(w.Role.CONTROLLER, max_data=MAX_DATA)
        self.failed = False

    def _feed(self, data: bytes) -> None:
        try:
            self.ctrl.feed(data)
            while (p := self.ctrl.next_pdu()) is not w.NEED_DATA:
                if isinstance(p, w.ICReq):
                    self.host.feed(self.ctrl.encode(w.ICResp(hdgst=p.hdgst, ddgst=p.ddgst)))
                    self.host.next_pdu()
        except w.RemoteProtocolError as e:
            assert str(e) and isinstance(e.fes, int)
            self.failed = True
        except w.LocalProtocolError:
            self.failed = True  # the codec refuses to be used after a failure: also clear

    @precondition(lambda self: self.failed)
    @rule()
    def reconnect(self):
        # after a protocol error the connection is gone (the codec refuses further use); a new one
        try:
            self.ctrl.feed(b"x")
            raise AssertionError("a failed codec accepted more bytes")
        except (w.RemoteProtocolError, w.LocalProtocolError):
            pass
        self._fresh()

    @precondition(lambda self: not self.failed)
    @rule(hd=st.booleans(), dd=st.booleans())
    def handshake(self, hd, dd):
        if self.host.state is w.State.IDLE:
            self._feed(self.host.encode(w.ICReq(hdgst=hd, ddgst=dd)))

    @precondition(lambda self: not self.failed and self.host.state is w.State.READY)
    @rule(pdu=_pdu_strategy(), cut=st.integers(1, 4096))
    def send_pdu(self, pdu, cut):
        try:
            raw = self.host.encode(pdu)
        except w.LocalProtocolError:
            return
        for i in range(0, len(raw), cut):
            self._feed(raw[i:i + cut])

    @precondition(lambda self: not self.failed and self.host.state is w.State.READY)
    @rule(pdu=_pdu_strategy(), pos=st.integers(0, 200), byte=st.integers(0, 255))
    def send_mutated(self, pdu, pos, byte):
        try:
            raw = bytearray(self.host.encode(pdu))
        except w.LocalProtocolError:
            return
        raw[pos % len(raw)] = byte
        self._feed(bytes(raw))

    @precondition(lambda self: not self.failed)
    @rule(junk=st.binary(min_size=1, max_size=3000))
    def send_garbage(self, junk):
        self._feed(junk)

    @invariant()
    def buffer_is_bounded(self):
        # what is left undecoded is at most one PDU in progress (header + in-capsule/data + digests)
        assert self.ctrl.buffered <= 24 + 8 + max(MAX_DATA, INCAPSULE_MAX) + 8


TestCodecMachine = CodecMachine.TestCase
TestCodecMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


class TargetMachine(RuleBasedStateMachine):
    """One queue of the userspace target, driven command by command (sans-I/O): any command in
    any order is answered with PDUs, never an exception, and no reply carries more than MDTS."""

    volume = None

    def __init__(self):
        super().__init__()
        self.cfg = target_config(self.volume)
        self.session = QueueSession(Controllers(self.cfg), ("127.0.0.1", 4420))

    def _handle(self, sqe: w.Sqe, data: bytes = b"") -> None:
        out = self.session.handle(w.CapsuleCmd(sqe, data))
        assert all(isinstance(p, (w.C2HData, w.CapsuleResp)) for p in out)
        assert len(out) <= 2
        for p in out:
            if isinstance(p, w.C2HData):
                assert len(p.data) <= self.cfg.max_transfer and len(p.data) <= sqe.sgl.length
        if out:
            assert out[-1].cqe.cid == sqe.cid

    @rule(subnqn=st.sampled_from([SUBNQN, w.DISCOVERY_NQN, "nqn.2024-01.io.other:x"]),
          host=st.sampled_from([HOSTNQN, OTHER_HOST]), qid=st.integers(0, 3), sqsize=st.integers(0, 200),
          cntlid=st.sampled_from([0xFFFF, 1, 2, 0]))
    def connect(self, subnqn, host, qid, sqsize, cntlid):
        sqe, data = w.connect_cmd(qid, sqsize, 0, w.ConnectData(uuid.uuid4(), cntlid, subnqn, host))
        self._handle(sqe, data)

    @rule()
    def enable(self):
        self._handle(w.property_set(w.Prop.CC, 0x460001))

    @rule(op=st.integers(0, 0xFF), nsid=st.integers(0, 3), d10=st.integers(0, 2**32 - 1),
          d11=st.integers(0, 2**32 - 1), d12=st.integers(0, 2**32 - 1), d13=st.integers(0, 2**32 - 1),
          sgl=st.one_of(st.integers(0, 1 << 21), st.just(2**32 - 1)), cid=st.integers(0, 0xFFFF))
    def command(self, op, nsid, d10, d11, d12, d13, sgl, cid):
        self._handle(w.Sqe(op, cid, nsid, d10, d11, d12, d13, sgl=w.Sgl(0, sgl)))

    @rule(lid=st.sampled_from([0x01, 0x02, 0x04, 0x05, 0x70, 0x99]), numd=st.integers(0, 2**32 - 1),
          offset=st.integers(0, 2**64 - 1), sgl=st.integers(0, 1 << 20))
    def log_page(self, lid, numd, offset, sgl):
        sqe = w.Sqe(w.Opcode.GET_LOG_PAGE, 7, 0, lid | (numd & 0xFFFF) << 16, numd >> 16, offset & 0xFFFFFFFF,
                    offset >> 32, sgl=w.Sgl(0, sgl))
        self._handle(sqe)

    @rule(cns=st.integers(0, 0xFF), nsid=st.integers(0, 2**32 - 1), sgl=st.integers(0, 1 << 22))
    def identify(self, cns, nsid, sgl):
        self._handle(w.identify(cns, nsid, length=sgl))

    def teardown(self):
        self.session.close()


def test_target_queue_state_machine(tmp_path_factory):
    TargetMachine.volume = make_volume(tmp_path_factory.mktemp("fuzzvol"), sizes=(5000, 9000))
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(TargetMachine, settings=settings(
        max_examples=80, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)))


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(streams=st.lists(st.one_of(st.binary(min_size=1, max_size=4000),
                                  _pdu_strategy().map(lambda p: ("pdu", p))), min_size=1, max_size=8))
def test_the_running_target_survives_any_byte_stream(live_target, streams):
    """Over real sockets: whatever a connection sends, the target answers or drops it, and the
    next well-behaved host is served."""
    t = live_target
    s = socket.create_connection(("127.0.0.1", t.port), timeout=10)
    s.settimeout(10)
    host = w.Codec(w.Role.HOST)
    try:
        s.sendall(host.encode(w.ICReq()))
        for item in streams:
            if isinstance(item, tuple):
                try:
                    s.sendall(_encode_ready(item[1]))
                except w.LocalProtocolError:
                    continue
            else:
                s.sendall(item)
    except OSError:
        pass  # the target dropped us: allowed
    finally:
        s.close()
    h = RawHost(t.port)  # the next host still gets its ICResp...
    sqe, data = w.connect_cmd(0, 31, 0, w.ConnectData(uuid.uuid4(), 0xFFFF, SUBNQN, HOSTNQN))
    assert h.command(sqe, data)[0].status == 0  # ...and a controller
    h.sock.close()


def _encode_ready(pdu) -> bytes:
    host, ctrl = w.Codec(w.Role.HOST), w.Codec(w.Role.CONTROLLER)
    ctrl.feed(host.encode(w.ICReq()))
    ctrl.next_pdu()
    host.feed(ctrl.encode(w.ICResp()))
    host.next_pdu()
    return host.encode(pdu)


@pytest.fixture(scope="module")
def live_target(tmp_path_factory):
    vol = make_volume(tmp_path_factory.mktemp("livefuzz"), sizes=(5000,))
    with ThreadedTarget(target_config(vol)) as t:
        yield t
