"""The chunked blob transfer (farts/transfer.py): the receiver's Pull on its own (chunks and
``now`` in, asks out), then Transfers on an in-memory bus in wire form with a FakeClock:
a lost chunk asked again, a wrong digest, too large, a peer gone, served from bytes and
from a file."""
from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from farts import transfer
from farts.clock import FakeClock
from farts.peer import BadMessage, Envelope
from farts.transfer import (
    CHUNK,
    STALL,
    STALL_TRIES,
    WINDOW,
    Ask,
    Blob,
    Chunk,
    Failed,
    Pull,
    Transfers,
)


def blob_of(data: bytes) -> Blob:
    return Blob(hashlib.sha256(data).hexdigest(), len(data))


def test_a_pull_keeps_its_window_and_gives_the_blob_whole():
    data = os.urandom(CHUNK * 9 + 123)
    pull = Pull(blob_of(data), "a", 0.0, 1 << 30)
    asked = pull.ask()
    assert asked == list(range(WINDOW))
    while asked:
        i = asked.pop(0)
        offset, length = pull.blob.span(i)
        asked += pull.take(i, data[offset:offset + length], 1.0)
        assert len(pull.asked) <= WINDOW
    assert pull.complete() and pull.result() == data
    assert pull.take(3, data[3 * CHUNK:4 * CHUNK], 2.0) == []    # a duplicate changes nothing


def test_a_lost_chunk_is_asked_again_once_the_deadline_passes():
    clock = FakeClock()
    data = os.urandom(CHUNK * 2 + 1)
    pull = Pull(blob_of(data), "a", clock.monotonic(), 1 << 30)
    assert pull.ask() == [0, 1, 2]
    pull.take(0, data[:CHUNK], clock.monotonic())
    pull.take(2, data[2 * CHUNK:], clock.monotonic())          # chunk 1 is lost
    assert not pull.complete()
    clock.advance(STALL)
    assert clock.monotonic() >= pull.deadline
    assert pull.stalled(clock.monotonic()) == [1]
    pull.take(1, data[CHUNK:2 * CHUNK], clock.monotonic())
    assert pull.complete() and pull.result() == data and pull.stalls == 0


def test_a_wrong_digest_a_wrong_chunk_and_too_large_fail():
    data = os.urandom(CHUNK + 10)
    pull = Pull(Blob("0" * 64, len(data)), "a", 0.0, 1 << 30)
    pull.ask()
    pull.take(0, data[:CHUNK], 0.0)
    pull.take(1, data[CHUNK:], 0.0)
    with pytest.raises(Failed, match="SHA-256") as e:
        pull.result()
    assert e.value.reason == "digest"
    pull = Pull(blob_of(data), "a", 0.0, 1 << 30)
    pull.ask()
    with pytest.raises(Failed) as e:
        pull.take(1, data[:CHUNK], 0.0)        # the last chunk is 10 bytes
    assert e.value.reason == "chunk"
    with pytest.raises(Failed) as e:
        Pull(Blob("0" * 64, 1001), "a", 0.0, 1000)
    assert e.value.reason == "too_large"


def test_a_peer_gone_is_asked_again_a_few_times_then_the_pull_fails():
    pull = Pull(Blob("0" * 64, 3 * CHUNK), "gone", 0.0, 1 << 30)
    assert pull.ask() == [0, 1, 2]
    now = 0.0
    for _ in range(STALL_TRIES):
        now += STALL
        assert pull.stalled(now) == [0, 1, 2] and pull.deadline == now + STALL
    with pytest.raises(Failed) as e:
        pull.stalled(now + STALL)
    assert e.value.reason == "stalled"


class AskX(Ask):
    __slots__ = ()
    TYPE = "test.ask"


class ChunkX(Chunk):
    __slots__ = ()
    TYPE = "test.chunk"


class Net:
    """Buses in one loop; a message goes through its wire form; ``lose(to, msg)`` drops one."""

    def __init__(self) -> None:
        self.handlers: dict[str, dict] = {}
        self.sent: list[tuple[str, object]] = []
        self.lose = lambda to, msg: False

    def bus(self, me: str) -> Bus:
        self.handlers[me] = {}
        return Bus(self, me)


class Bus:
    def __init__(self, net: Net, me: str) -> None:
        self.net, self.me = net, me

    def subscribe(self, cls, fn):
        self.net.handlers[self.me][cls] = fn
        return lambda: self.net.handlers[self.me].pop(cls, None)

    def send(self, to: str, msg) -> bool:
        if to not in self.net.handlers:
            return False
        self.net.sent.append((to, msg))
        if not self.net.lose(to, msg):
            wire = type(msg).from_wire(msg.to_wire())
            fn = self.net.handlers[to].get(type(msg))
            if fn is not None:
                asyncio.get_running_loop().call_soon(fn, wire, Envelope(self.me))
        return True


def pair(net: Net, clock: FakeClock, held, events: list):
    """A holder "a" of ``held`` (bytes or a file) and a receiver "b"; what b got in ``events``."""
    async def received(key, pull, data):
        events.append(("received", key, data))
    sha = hashlib.sha256(held if isinstance(held, bytes) else held.read_bytes()).hexdigest()
    served = []
    a = Transfers(net.bus("a"), clock, AskX, ChunkX, find=lambda s: held if s == sha else None,
                  received=received, served=lambda to, s: served.append(to))
    b = Transfers(net.bus("b"), clock, AskX, ChunkX, received=received, find=lambda s: None,
                  failed=lambda key, pull, e: events.append(("failed", key, e.reason)),
                  count=lambda e: events.append(("count", e)))
    return a, b, sha, served


async def settle(check) -> None:
    for _ in range(1000):
        if check():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("never settled")


@pytest.mark.parametrize("in_file", [False, True])
def test_transfers_over_a_bus_a_lost_chunk_asked_again_when_the_clock_passes_the_deadline(tmp_path, in_file):
    data = os.urandom(CHUNK * 5 + 7)
    if in_file:
        (tmp_path / "blob").write_bytes(data)

    async def main():
        net, clock, events = Net(), FakeClock(), []
        a, b, sha, served = pair(net, clock, tmp_path / "blob" if in_file else data, events)
        lost = []
        net.lose = lambda to, m: isinstance(m, ChunkX) and m.index == 2 and not lost and not lost.append(m)
        b.pull("k", Blob(sha, len(data)), "a", 1 << 30)
        # (delivered a loop turn after it is sent: wait until the last chunk is taken too)
        await settle(lambda: len([m for _, m in net.sent if isinstance(m, ChunkX)]) == 6
                     and b.pulling("k").asked == {2})
        assert events == []
        clock.advance(STALL)
        await settle(lambda: events)
        assert events == [("received", "k", data)] and b.pulling("k") is None
        asks = sorted(m.index for _, m in net.sent if isinstance(m, AskX))
        assert asks == [0, 1, 2, 2, 3, 4, 5] and served.count("b") == 7
    asyncio.run(main())


def test_transfers_a_corrupted_chunk_fails_the_digest_and_a_gone_peer_the_pull():
    data = os.urandom(CHUNK + 1)

    async def main():
        net, clock, events = Net(), FakeClock(), []
        a, b, sha, _ = pair(net, clock, data, events)
        net.lose = lambda to, m: False
        corrupt = {"on": True}
        send = Bus.send

        def tampering(self, to, msg):
            if corrupt["on"] and isinstance(msg, ChunkX) and msg.index == 0:
                msg = ChunkX(msg.sha256, 0, bytes([msg.data[0] ^ 1]) + msg.data[1:])
            return send(self, to, msg)
        a.bus.send = tampering.__get__(a.bus)
        b.pull("k", Blob(sha, len(data)), "a", 1 << 30)
        await settle(lambda: events)
        assert events == [("count", "digest"), ("failed", "k", "digest")]

        events.clear()
        b.pull("gone", Blob(sha, len(data)), "nobody", 1 << 30)      # asks go nowhere
        for _ in range(STALL_TRIES + 1):
            assert b.pulling("gone") is not None
            clock.advance(STALL)
        assert events == [("count", "stalled"), ("failed", "gone", "stalled")] and b.pulling("gone") is None
        with pytest.raises(Failed):
            b.pull("big", Blob(sha, len(data)), "a", len(data) - 1)
        assert events[-1] == ("count", "too_large") and b.pulling("big") is None
        b.stop()
        assert net.handlers["b"] == {}
    asyncio.run(main())


def test_bad_asks_and_chunks_are_refused():
    for cls, body in ((AskX, {"sha256": "a" * 64, "index": -1}), (AskX, []),
                      (AskX, {"sha256": "A" * 64, "index": 0}),
                      (ChunkX, {"sha256": "a" * 64, "index": 0, "data": b"x" * (transfer.CHUNK + 1)}),
                      (ChunkX, {"sha256": "a" * 64, "index": 0, "data": "text"}),
                      (ChunkX, {"sha256": "a" * 64, "index": 0, "data": b""})):
        with pytest.raises(BadMessage):
            cls.from_wire(body)
