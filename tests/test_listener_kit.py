"""The listener kit without sockets: admission and its counted refusals, hand-over,
the deadline sweep on a FakeClock, and StreamProtocol's read/idle/stalled deadlines
and write flow control against a recording transport."""
from __future__ import annotations

from farts.clock import FakeClock
from farts.metrics import Metrics
from farts.transport.kit import QUEUE, ConnectionStats, ListenerKit, StreamProtocol


class Conn:
    def __init__(self, client: str) -> None:
        self.client = client
        self.transport = None
        self.checked: list[float] = []

    def check_timeouts(self, now: float) -> None:
        self.checked.append(now)


class Transport:
    def __init__(self, peer: str = "192.0.2.1") -> None:
        self.peer = peer
        self.reading = True
        self.closed = self.aborted = False
        self.written = b""
        self.unsent = 0                 # what the kernel has not taken yet

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def get_extra_info(self, name, default=None):
        return (self.peer, 5000) if name == "peername" else default

    def pause_reading(self) -> None:
        assert self.reading
        self.reading = False

    def resume_reading(self) -> None:
        assert not self.reading
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


class Echo(StreamProtocol):
    """Answers each line; a line without its newline is a partial message."""

    def __init__(self, kit) -> None:
        super().__init__(kit, idle_timeout=10.0, read_timeout=2.0)
        self.buf = b""
        self.writes = 0

    def received(self, data: bytes) -> None:
        self.buf += data
        self.writable()

    def writable(self) -> None:
        while b"\n" in self.buf and not self.write_paused:
            line, self.buf = self.buf.split(b"\n", 1)
            self.transport.write(line.upper() + b"\n")
            self.done_reply()

    def partial(self) -> bool:
        return bool(self.buf)

    def busy(self) -> bool:
        return self.write_paused


def kit(clock=None, **caps) -> ListenerKit:
    caps = {"max_connections": 3, "max_connections_per_ip": 2, **caps}
    return ListenerKit("test", clock or FakeClock(), ConnectionStats(Metrics(), "farts_test"), **caps)


def test_admission_caps_count_their_refusals_and_free_their_places():
    k = kit()
    a1, a2, a3, b1, c1 = Conn("a"), Conn("a"), Conn("a"), Conn("b"), Conn("c")
    assert k.place(a1) is None and k.place(a2) is None
    assert k.place(a3) == "max_connections_per_ip"
    assert k.place(b1) is None
    assert k.place(c1) == "max_connections"
    assert k.stats.refused.totals() == {("test", "max_connections_per_ip"): 1, ("test", "max_connections"): 1}
    release = k.hand_over(a1)           # still counted while another protocol has it
    assert k.open == 3 and k.place(c1) == "max_connections"
    release()
    assert k.place(c1) is None and k.per_ip == {"a": 1, "b": 1, "c": 1}
    for conn in (a2, b1, c1):
        k.release(conn)
    k.release(c1)                       # twice is harmless
    assert k.open == 0 and k.per_ip == {}


def test_the_sweep_runs_on_the_clock_and_stops_with_the_kit():
    clock = FakeClock(start=100.0)
    k = kit(clock, tick=0.5)
    conn = Conn("a")
    k.place(conn)
    k._sweep = clock.every(k.tick, k.sweep)     # what start() schedules once listening
    clock.advance(1.2)
    assert conn.checked == [100.5, 101.0] and k.now == 101.0
    k._sweep.cancel()
    clock.advance(5)
    assert len(conn.checked) == 2


def test_stream_protocol_deadlines_and_flow_control():
    clock = FakeClock(start=0.0)
    k = kit(clock)
    clock.every(0.5, k.sweep)          # what start() schedules once listening
    p, t = Echo(k), Transport()
    p.connection_made(t)
    assert p.admitted and k.open == 1
    p.data_received(b"hi\nhal")
    assert t.written == b"HI\n" and p.partial()
    clock.advance(2.0)                  # a partial line, quiet for 2 s: not yet
    assert not t.closed
    clock.advance(0.5)
    assert t.closed and k.stats.timeouts.totals() == {("test", "read"): 1}
    p.connection_lost(None)
    assert k.open == 0

    q, t = Echo(k), Transport()
    q.connection_made(t)
    q.pause_writing()                   # the client stops reading: so do we
    assert not t.reading
    q.data_received(b"one\n")
    assert t.written == b""             # nothing answered while paused
    q.pause_reading(QUEUE)
    q.resume_writing()
    assert t.written == b"ONE\n" and not t.reading  # still paused for the other reason
    q.resume_reading(QUEUE)
    assert t.reading
    clock.advance(10.5)
    assert t.closed and k.stats.timeouts.get(("test", "idle")) == 1

    r, t = Echo(k), Transport()
    r.connection_made(t)
    r.pause_writing()
    t.unsent = 70_000                   # a reader that stopped: its bytes are dropped
    clock.advance(11)
    assert t.aborted and not t.closed and k.stats.timeouts.get(("test", "stalled")) == 1


def test_a_refused_stream_connection_is_aborted_and_not_released_twice():
    k = kit(max_connections_per_ip=1)
    first, second = Echo(k), Echo(k)
    first.connection_made(Transport())
    t = Transport()
    second.connection_made(t)
    assert t.aborted and not second.admitted
    second.connection_lost(None)
    assert k.open == 1 and k.per_ip == {"192.0.2.1": 1}
