"""The next process's side of a restart's event stream (farts/release/handover.py
``Successor``): the events the old process still publishes while it drains reach the
new one's subscribers, whatever way the socket cut the lines."""
from __future__ import annotations

import asyncio
import json
import socket

import pytest
from test_pubsub_service import _messages, service, websocket

from farts.release.handover import Successor, _line


def forwarded(*values) -> bytes:
    return b"".join(_line({"op": "event", "event": {"tenant": "t1", "channel": "c", "origin": "n1~7", "seq": i + 1,
                                                    "data": json.dumps(v)}}) for i, v in enumerate(values))


@pytest.mark.parametrize("cut", [0, 1, 30, -1], ids=["none-read", "one-byte", "mid-line", "all-but-newline"])
def test_the_old_processs_events_reach_the_subscribers_however_the_released_read_cut_them(cut):
    async def main():
        ps, _ = await service()
        sink, _ = websocket(ps, b'{"op":"subscribe","channel":"c"}')
        ours, theirs = socket.socketpair()
        lines = forwarded("a", "b")
        split = len(lines) + cut if cut < 0 else len(lines) // 2 + cut if cut else 0
        successor = Successor(ours, lines[:split])   # what _receive read past "released"
        successor.ready(ps)
        theirs.sendall(lines[split:])
        theirs.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(successor.reader, 10)
        ps.flush()
        got = [json.loads(m) for m in _messages(sink.data)]
        assert [m.get("data") for m in got if "data" in m] == ["a", "b"]
        assert json.loads(theirs.recv(1024))["op"] == "ready"
        theirs.close()
        await ps.stop()
    asyncio.run(main())
