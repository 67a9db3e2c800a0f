"""The event streams of a restart between the old process and the next one
(farts/release/handover.py): the events the old process still publishes while it drains
reach the new one's subscribers, whatever way the socket cut the lines, and the events the
new process delivers reach the old one's subscribers until they move."""
from __future__ import annotations

import asyncio
import json
import socket

import pytest
from test_pubsub_service import _messages, service, websocket

from farts.release.handover import Successor, _apply_events, _line


def forwarded(*values, origin: str = "n1~7") -> bytes:
    return b"".join(_line({"op": "event", "event": {"tenant": "t1", "channel": "c", "origin": origin, "seq": i + 1,
                                                    "data": json.dumps(v)}}) for i, v in enumerate(values))


def received(sink) -> list:
    return [m["data"] for m in map(json.loads, _messages(sink.data)) if "data" in m]


def read_lines(sock: socket.socket) -> list[dict]:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return [json.loads(line) for line in data.splitlines()]


@pytest.mark.parametrize("cut", [0, 1, 30, -1], ids=["none-read", "one-byte", "mid-line", "all-but-newline"])
def test_the_old_processs_events_reach_the_subscribers_however_the_released_read_cut_them(cut):
    async def main():
        ps, _ = await service()
        sink, _ = websocket(ps, b'{"op":"subscribe","channel":"c"}')
        ours, theirs = socket.socketpair()
        lines = forwarded("a", "b")
        split = len(lines) + cut if cut < 0 else len(lines) // 2 + cut if cut else 0
        successor = Successor(ours, lines[:split], ps)   # what _receive read past "released"
        ps.publish("t1", "c", "early")               # the node serves before it says ready
        successor.ready()
        theirs.sendall(lines[split:])
        for _ in range(200):
            ps.flush()
            if len(received(sink)) == 3:
                break
            await asyncio.sleep(0.01)
        assert received(sink) == ["early", "a", "b"]
        ps.publish("t1", "c", "here")                # published on the new process: goes back
        assert ps.apply_remote({"tenant": "t1", "channel": "c", "origin": "n2", "seq": 5,
                                "data": '"peer"'})   # a peer's (maybe out of its order): does not
        theirs.shutdown(socket.SHUT_WR)              # (the old process stops)
        await asyncio.wait_for(successor.reader, 10)
        back = await asyncio.to_thread(read_lines, theirs)
        assert [m["op"] for m in back] == ["ready", "event", "event"]
        assert [json.loads(m["event"]["data"]) for m in back[1:]] == ["early", "here"]   # (not "a", "b", "peer")
        assert {m["event"]["origin"] for m in back[1:]} == {"n1"}
        assert ps.on_delivered == []                 # the old process is gone
        theirs.close()
        await ps.stop()
    asyncio.run(main())


def test_the_old_process_applies_the_next_ones_events_once():
    async def main():
        ps, _ = await service()
        sink, _ = websocket(ps, b'{"op":"subscribe","channel":"c"}')
        reader = asyncio.StreamReader()
        reader.feed_data(forwarded("x", "y", origin="n1") + forwarded("x", origin="n1"))   # (the last: again)
        reader.feed_eof()
        await _apply_events(reader, ps)
        ps.flush()
        assert received(sink) == ["x", "y"]
        await ps.stop()
    asyncio.run(main())


def test_a_line_that_cannot_be_opened_stops_the_forwarding_and_its_backlog():
    async def main():
        ps, _ = await service()
        ours, theirs = socket.socketpair()
        successor = Successor(ours, b"", ps)
        ps.publish("t1", "c", "early")
        assert len(successor.backlog) == 1
        ours.close()                                 # (gone before the node said ready)
        successor.ready()
        await asyncio.wait_for(successor.reader, 10)
        assert ps.on_delivered == [] and successor.backlog == []
        theirs.close()
        await ps.stop()
    asyncio.run(main())
