"""The pub/sub service's logic without sockets: subscribers on a recording Sink, the
ticker (pings, dead peers, heartbeats, history expiry) driven by a FakeClock."""
from __future__ import annotations

import asyncio
import json

from farts.clock import FakeClock
from farts.config import Tenant
from farts.metrics import Metrics
from farts.pubsub import PubSub
from farts.pubsub.config import PubSubConfig
from farts.pubsub.sse import SSESubscriber
from farts.pubsub.websocket import WebSocketSubscriber
from farts.transport.http import CHUNKED, RAW

TENANT = Tenant("t1", ["t1.example"], api_keys=["key"])


class RecordingSink:
    """A Sink that keeps what is written (no socket: fd -1, never buffers)."""

    def __init__(self, framing: str) -> None:
        self.framing, self.fd = framing, -1
        self.data = b""
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0


async def service(cfg: PubSubConfig | None = None) -> tuple[PubSub, FakeClock]:
    clock = FakeClock()
    ps = PubSub("n1", cfg or PubSubConfig(ping_interval=10.0, history_seconds=30.0),
                [TENANT], Metrics(), clock)
    await ps.start()
    return ps, clock


def websocket(ps: PubSub, *commands: bytes) -> tuple[RecordingSink, WebSocketSubscriber]:
    """A WebSocket subscriber on a recording sink, after ``commands``."""
    sink = RecordingSink(RAW)
    sub = WebSocketSubscriber(ps, TENANT)
    sub.opened(sink, b"")
    for text in commands:
        ps.command(sub, text)
    ps.flush()
    return sink, sub


def test_websocket_subscribe_publish_and_pings_on_the_clock():
    async def main():
        ps, clock = await service()
        sink, sub = websocket(ps, b'{"op":"subscribe","channel":"news"}')
        ps.publish("t1", "news", {"x": 1})
        ps.flush()
        assert b'"op":"subscribed"' in sink.data and b'"data":{"x":1}' in sink.data
        assert ps.channels.count("t1\0news") == 1
        before = len(sink.data)
        assert clock.advance(10.0) == 1     # one tick: a ping
        ps.flush()
        assert sink.data[before:] == b"\x89\x00"
        sub.heard = ps.now                  # the client answered
        clock.advance(10.0)
        assert not sink.closed
        clock.advance(25.0)                 # silent for more than two intervals
        ps.flush()
        assert sink.closed and b"no answer to ping" in sink.data
        sub.closed(None)
        assert ps.channels.count("t1\0news") == 0 and not ps.channels.websockets
        await ps.stop()
    asyncio.run(main())


def test_event_stream_gets_chunks_heartbeats_and_replay():
    async def main():
        ps, clock = await service()
        first = ps.publish("t1", "a", "one")
        ps.publish("t1", "a", "two")
        sink = RecordingSink(CHUNKED)
        sub = SSESubscriber(ps, TENANT, ["a"], {"n1": int(first.split(":")[1])})
        sub.opened(sink, b"")
        ps.flush()
        assert b'data: {"channel":"a"' in sink.data and b'"two"' in sink.data
        assert b'"one"' not in sink.data       # replayed after the cursor only
        pieces = _chunks(sink.data)
        # (the channel's record starts at its first event: a cursor there is complete,
        # so no "not recovered" comment)
        assert pieces[0].startswith(b"id: ") and b'"data":"two"' in pieces[0]
        assert not any(p.startswith(b": not recovered") for p in pieces)
        clock.advance(10.0)
        ps.flush()
        assert _chunks(sink.data)[-1] == b": heartbeat\n\n"
        sub.close()
        assert sink.closed
        await ps.stop()
    asyncio.run(main())


def test_history_expires_on_the_clock():
    async def main():
        ps, clock = await service()
        ps.publish("t1", "gone", 1)
        assert "t1\0gone" in ps.history.channels
        clock.advance(40.0)                  # past history_seconds, with ticks on the way
        assert "t1\0gone" not in ps.history.channels
        await ps.stop()
        assert clock.advance(100.0) == 0     # stop cancels the ticker
    asyncio.run(main())


def test_unsubscribe_and_errors_are_counted():
    async def main():
        ps, _ = await service()
        sink, _ = websocket(ps, b'{"op":"subscribe","channel":"a"}',
                            b'{"op":"unsubscribe","channel":"a"}', b"nope")
        assert ps.channels.count("t1\0a") == 0
        texts = [json.loads(m) for m in _messages(sink.data)]
        assert [t.get("op") for t in texts] == ["subscribed", "unsubscribed", "error"]
        assert ps.errors.get(("bad_json",)) == 1
        await ps.stop()
    asyncio.run(main())


def _messages(data: bytes) -> list[bytes]:
    """Payloads of unmasked server text frames (short ones: 7-bit lengths)."""
    out = []
    while data:
        n = data[1] & 0x7F
        out.append(data[2:2 + n])
        data = data[2 + n:]
    return out


def _chunks(data: bytes) -> list[bytes]:
    out = []
    while data:
        size, _, data = data.partition(b"\r\n")
        n = int(size, 16)
        out.append(data[:n])
        data = data[n + 2:]
    return out


def test_a_resume_ahead_of_the_history_waits_for_its_events():
    """A cursor from another worker (or node) that names events not here yet: the
    subscription waits for them, then replays exactly what follows the cursor, recovered;
    one whose events never come is answered after RESUME_WAIT, not recovered; a subscriber
    gone meanwhile is forgotten."""
    from farts.pubsub.history import encode_cursor
    from farts.pubsub.service import RESUME_WAIT

    async def main():
        ps, clock = await service()
        base = int(clock.wall() * 1_000_000)   # (seqs are wall-clock microseconds)

        def remote(n: int, data: str) -> dict:
            return {"tenant": "t1", "channel": "c", "origin": "n2", "seq": base + n, "data": json.dumps(data)}
        ps.apply_remote(remote(1, "a"))
        cursor = encode_cursor({"n2": base + 3}).encode()   # the client saw 2 and 3 elsewhere
        sink, _ = websocket(ps, b'{"op":"subscribe","channel":"c","since":"' + cursor + b'"}')
        assert sink.data == b""                          # not answered yet
        ps.apply_remote(remote(2, "b"))
        ps.flush()
        assert sink.data == b""
        ps.apply_remote(remote(3, "c"))                  # caught up: answered now
        ps.apply_remote(remote(4, "d"))
        ps.flush()
        text = sink.data.decode("latin-1")
        assert '"recovered":true' in text
        assert '"data":"d"' in text and '"data":"c"' not in text and '"data":"b"' not in text
        assert text.count('"data":"d"') == 1             # live after the replay, once
        assert ps.waiting == [] and ps._waiting_timer is None
        # Events that never come: answered at the deadline, not recovered.
        late = encode_cursor({"n2": base + 99}).encode()
        sink2, _ = websocket(ps, b'{"op":"subscribe","channel":"c","since":"' + late + b'"}')
        clock.advance(RESUME_WAIT / 2)
        ps.flush()
        assert sink2.data == b""
        clock.advance(RESUME_WAIT)
        ps.flush()
        assert b'"recovered":false' in sink2.data
        # A subscriber that leaves while it waits is never registered.
        sink3, sub3 = websocket(ps, b'{"op":"subscribe","channel":"c","since":"' + late + b'"}')
        sub3.closed(None)
        clock.advance(RESUME_WAIT * 2)
        ps.flush()
        assert sink3.data == b"" and ps.channels.count("t1\0c") == 2
    asyncio.run(main())


def test_a_channel_first_seen_through_a_remote_event_resumes_from_it():
    """A worker (or node) whose first event of a channel came from elsewhere: a cursor at
    that event resumes, recovered (the record starts at that event, not later)."""
    from farts.pubsub.history import encode_cursor

    async def main():
        ps, clock = await service()
        seq = int(clock.wall() * 1_000_000) - 5_000     # published 5 ms before it got here
        ps.apply_remote({"tenant": "t1", "channel": "c", "origin": "n2", "seq": seq, "data": '"a"'})
        ps.apply_remote({"tenant": "t1", "channel": "c", "origin": "n2", "seq": seq + 1, "data": '"b"'})
        cursor = encode_cursor({"n2": seq}).encode()
        sink, _ = websocket(ps, b'{"op":"subscribe","channel":"c","since":"' + cursor + b'"}')
        text = sink.data.decode("latin-1")
        assert '"recovered":true' in text and '"data":"b"' in text and '"data":"a"' not in text
    asyncio.run(main())


def test_a_catch_up_that_cannot_reach_back_far_enough_makes_resumes_from_before_not_recovered():
    """A node away for longer than a peer's history (3 events here): the peer sends what it
    still holds and says what it no longer has; a resume from before that, on the node
    that was away, is answered "not recovered" (it was "recovered" with events missing)."""
    from farts.peer import Envelope
    from farts.pubsub.peer import CatchupRequest, PubSubPeer

    class Bus:   # one node's side of the link between the two: a send reaches the other at once
        def __init__(self, me: str) -> None:
            self.me, self.handlers, self.other = me, {}, None

        def subscribe(self, cls, fn):
            self.handlers[cls] = fn

        def on_member_change(self, fn):
            pass

        def on_gap(self, fn):
            pass

        def broadcast(self, msg) -> int:
            return 0

        def send(self, node: str, msg) -> bool:
            self.other.handlers[type(msg)](msg, Envelope(self.me))
            return True

    async def main():
        clock = FakeClock()
        cfg = PubSubConfig(history_size=3, ping_interval=10.0)
        n1, n2 = (PubSub(i, cfg, [TENANT], Metrics(), clock) for i in ("n1", "n2"))
        await n1.start()
        await n2.start()
        bus1, bus2 = Bus("n1"), Bus("n2")
        bus1.other, bus2.other = bus2, bus1
        PubSubPeer("n1", n1, bus1, clock)
        PubSubPeer("n2", n2, bus2, clock)
        cursor = n2.publish("t1", "c", 0)
        bus1.send("n2", CatchupRequest(n1.have()))      # n1 gets event 0
        away = n1.have()
        for i in range(1, 7):                            # n1 is away: n2 keeps 4-6, evicts 0-3
            n2.publish("t1", "c", i)
        bus1.send("n2", CatchupRequest(away))            # back: 4-6, and what n2 no longer has
        evicted = n2.history.channels["t1\0c"].evicted
        assert n1.history.channels["t1\0c"].missing == evicted == {"n2": evicted["n2"]}
        sink, _ = websocket(n1, b'{"op":"subscribe","channel":"c","since":"' + cursor.encode() + b'"}')
        text = sink.data.decode("latin-1")
        assert '"recovered":false' in text                     # 1-3 are nowhere to be had
        assert [f'"data":{i}' in text for i in range(7)] == [False] * 4 + [True] * 3
        late = n2.history.channels["t1\0c"].events[0].id       # a cursor at 4: all after it is here
        sink, _ = websocket(n1, b'{"op":"subscribe","channel":"c","since":"' + late.encode() + b'"}')
        assert '"recovered":true' in sink.data.decode("latin-1")
        await n1.stop()
        await n2.stop()
    asyncio.run(main())
