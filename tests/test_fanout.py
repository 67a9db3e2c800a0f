"""fast.fanout against a plain-Python reference: dict of ordered sets, a list per
subscriber, one join per flush (what the compiled registry replaces)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fast.fanout import Fanout, Subscriber


class Transport:
    def __init__(self, buffered: int = 0) -> None:
        self.writes: list[bytes] = []
        self.buffered = buffered

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered


class Sub(Subscriber):
    __slots__ = ("name",)

    def __init__(self, name: int, sse: bool) -> None:
        self.name = name
        self.sse = sse
        self.transport = Transport()


class ReferenceFanout:
    def __init__(self) -> None:
        self.channels: dict[str, dict[int, None]] = {}
        self.pending: dict[int, list[bytes]] = {}
        self.written: dict[int, list[bytes]] = {}

    def subscribe(self, key, sub):
        subs = self.channels.setdefault(key, {})
        if sub in subs:
            return False
        subs[sub] = None
        return True

    def unsubscribe(self, key, sub):
        subs = self.channels.get(key)
        if not subs or sub not in subs:
            return False
        del subs[sub]
        if not subs:
            del self.channels[key]
        return True

    def publish(self, key, ws, sse, kinds):
        subs = self.channels.get(key, {})
        for s in subs:
            self.pending.setdefault(s, []).append(sse if kinds[s] else ws)
        return len(subs)

    def send(self, sub, data):
        self.pending.setdefault(sub, []).append(data)

    def flush(self):
        for s, pieces in self.pending.items():
            self.written.setdefault(s, []).append(b"".join(pieces))
        self.pending = {}


ops = st.lists(st.one_of(
    st.tuples(st.just("sub"), st.integers(0, 5), st.sampled_from("abc")),
    st.tuples(st.just("unsub"), st.integers(0, 5), st.sampled_from("abc")),
    st.tuples(st.just("pub"), st.sampled_from("abcd"), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("send"), st.integers(0, 5), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("flush"), st.just(0), st.just(0)),
), max_size=60)


@settings(max_examples=300)
@given(ops, st.lists(st.booleans(), min_size=6, max_size=6))
def test_fanout_matches_the_reference(operations, kinds):
    scheduled = []
    fo = Fanout(scheduled.append, lambda s: None)
    ref = ReferenceFanout()
    subs = [Sub(i, kinds[i]) for i in range(6)]
    for op, a, b in operations:
        if op == "sub":
            assert fo.subscribe(b, subs[a]) == ref.subscribe(b, a)
        elif op == "unsub":
            assert fo.unsubscribe(b, subs[a]) == ref.unsubscribe(b, a)
        elif op == "pub":
            assert fo.publish(a, b"W" + b, b"S" + b) == ref.publish(a, b"W" + b, b"S" + b, kinds)
        elif op == "send":
            fo.send(subs[a], b)
            ref.send(a, b)
        else:
            fo.flush()
            ref.flush()
        for key in "abcd":
            assert fo.count(key) == len(ref.channels.get(key, {}))
    fo.flush()
    ref.flush()
    assert len(scheduled) <= 2 * len(operations)   # at most one flush (two hops) per batch
    for i, s in enumerate(subs):
        assert s.transport.writes == ref.written.get(i, [])
    assert fo.subscriptions() == sum(len(v) for v in ref.channels.values())


def test_one_write_per_subscriber_per_flush_and_the_same_bytes_object():
    scheduled = []
    fo = Fanout(scheduled.append, lambda s: None)
    subs = [Sub(i, False) for i in range(3)]
    for s in subs:
        fo.subscribe("c", s)
    frame = b"frame-bytes"
    assert fo.publish("c", frame, b"sse") == 3
    assert len(scheduled) == 1
    scheduled.pop(0)()          # first hop: schedules the flush itself
    fo.publish("c", b"+", b"")  # published meanwhile: joins the same write
    assert len(scheduled) == 1 and all(s.transport.writes == [] for s in subs)
    scheduled.pop(0)()
    assert all(s.transport.writes == [frame + b"+"] for s in subs)
    fo.publish("c", frame, b"sse")
    scheduled.pop(0)()
    scheduled.pop(0)()
    assert all(s.transport.writes[1] is frame for s in subs)  # shared, not copied
    for _ in range(5):
        fo.publish("c", b"x", b"y")
    assert len(scheduled) == 1
    scheduled.pop(0)()
    scheduled.pop(0)()
    assert [s.transport.writes for s in subs] == [[frame + b"+", frame, b"xxxxx"]] * 3
    assert (fo.deliveries, fo.writes) == (24, 9)


def test_slow_subscriber_is_handed_over_once_and_gets_nothing_more():
    scheduled, slow = [], []
    fo = Fanout(scheduled.append, slow.append, max_buffer=100)
    fast_sub, slow_sub = Sub(0, False), Sub(1, False)
    slow_sub.transport.buffered = 500
    for s in (fast_sub, slow_sub):
        fo.subscribe("c", s)
    fo.publish("c", b"a", b"")
    fo.flush()
    assert slow == []               # not paused: the buffer size is not even read
    slow_sub.paused = True
    fo.publish("c", b"b", b"")
    fo.flush()
    assert slow == [slow_sub] and slow_sub.dropped
    assert fo.publish("c", b"c", b"") == 1
    fo.flush()
    assert slow_sub.transport.writes == [b"a", b"b"]
    assert fast_sub.transport.writes == [b"a", b"b", b"c"]


def test_flush_sends_straight_to_the_socket_only_when_the_transport_is_idle_and_open():
    import socket
    a, b = socket.socketpair()
    b.setblocking(False)
    try:
        class Idle(Transport):
            closing = False

            def is_closing(self):
                return self.closing

        scheduled = []
        fo = Fanout(scheduled.append, lambda s: None)
        sub = Sub(0, False)
        sub.transport = Idle()
        sub.fd = a.fileno()
        fo.subscribe("c", sub)
        fo.publish("c", b"one", b"")
        fo.flush()
        assert b.recv(100) == b"one" and sub.transport.writes == []     # the socket took it
        sub.transport.buffered = 10            # bytes queued in the transport: they go first
        fo.publish("c", b"two", b"")
        fo.flush()
        assert sub.transport.writes == [b"two"]
        sub.transport.buffered = 0
        sub.transport.closing = True           # its fd may be closed (and reused) soon
        fo.publish("c", b"three", b"")
        fo.flush()
        assert sub.transport.writes == [b"two", b"three"]
        try:
            leaked = b.recv(100)
        except BlockingIOError:
            leaked = b""
        assert leaked == b""
    finally:
        a.close()
        b.close()
