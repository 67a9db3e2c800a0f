"""The HTTP/2 adapter's answer paths through an in-process listener on loopback (h2c),
read by a real client (the h2 library's client side over a socket): what the handlers
return, as HTTP/1.1 clients get it (test_http_edge, test_http_streamed)."""
from __future__ import annotations

import asyncio
import contextlib

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset, TrailersReceived
from test_http_streamed import Checksummed

from farts.config import Limits, Route
from farts.metrics import Metrics
from farts.transport.http import Fixed, Response
from farts.transport.listener import HTTPStats, Listener
from farts.transport.router import Router

BIG = bytes(range(256)) * 1200   # 300 KiB: more than the client's first windows


class Handler:
    def handle(self, req):
        what = req.path.rsplit(b"/", 1)[-1]
        if what == b"big":        # bytes, beyond the 64 KiB stream window
            return Response(200, [(b"content-type", b"application/octet-stream")], BIG)
        if what == b"empty":
            return Response(204, [(b"x-empty", b"1")])
        if what == b"boom":       # the handler fails before answering
            raise RuntimeError("boom")
        if what == b"trailers":   # a streamed body whose trailer is known at its end
            return Checksummed().handle(req)

        async def later():
            if what == b"late-boom":
                raise RuntimeError("late boom")
            if what == b"fixed":
                return Fixed(201, b"made\n")

            async def body():
                yield b"one "
                if what == b"broken":   # fails after the head is out
                    raise RuntimeError("broken")
                yield b"two"
            return Response(200, [(b"Connection", b"keep-alive"), (b"X-Mixed", "Case")], body(),
                            content_length=-1)
        return later()


@contextlib.asynccontextmanager
async def h2c_listener(stats: HTTPStats | None = None):
    """An in-process HTTP listener on loopback with h2c, routing everything to Handler."""
    router = Router(None, [(Route(prefix="/", kind="admin"), Handler())], 0)
    listener = Listener("t", "http", router, Limits(), stats or HTTPStats(Metrics(), {}), h2c=True)
    await listener.start("127.0.0.1", 0)
    try:
        yield listener
    finally:
        await listener.close()


def run(paths: list[tuple[bytes, bytes]]) -> dict:
    """Each (method, path) on its own stream of one connection; what came back, by stream."""
    async def main():
        async with h2c_listener() as listener:
            reader, writer = await asyncio.open_connection(*listener.address)
            c = H2Connection(H2Configuration(client_side=True, header_encoding=None))
            c.initiate_connection()
            out: dict = {}
            for i, (method, path) in enumerate(paths):
                sid = 2 * i + 1
                out[sid] = {"body": b"", "done": False}
                c.send_headers(sid, [(b":method", method), (b":scheme", b"http"),
                                     (b":authority", b"x"), (b":path", path)], end_stream=True)
            writer.write(c.data_to_send())
            while not all(r["done"] for r in out.values()):
                data = await asyncio.wait_for(reader.read(65536), 10)
                assert data, "the server closed the connection"
                for ev in c.receive_data(data):
                    r = out.get(getattr(ev, "stream_id", 0))
                    if isinstance(ev, ResponseReceived):
                        r["headers"] = dict(ev.headers)
                    elif isinstance(ev, DataReceived):
                        r["body"] += ev.data
                        c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, TrailersReceived):
                        r["trailers"] = ev.headers
                    elif isinstance(ev, StreamEnded):
                        r["done"] = True
                    elif isinstance(ev, StreamReset):
                        r["done"], r["reset"] = True, ev.error_code
                writer.write(c.data_to_send())
            writer.close()
            return out
    return asyncio.run(main())


def test_every_kind_of_answer_on_one_connection():
    out = run([(b"GET", b"/big"), (b"GET", b"/empty"), (b"GET", b"/boom"), (b"GET", b"/late-boom"),
               (b"GET", b"/fixed"), (b"GET", b"/stream"), (b"HEAD", b"/big"), (b"GET", b"/broken"),
               (b"GET", b"/trailers")])
    big, empty, boom, late, fixed, stream, head, broken, trailers = (out[2 * i + 1] for i in range(9))
    assert big["headers"][b":status"] == b"200" and big["body"] == BIG
    assert big["headers"][b"content-length"] == str(len(BIG)).encode()
    assert empty["headers"][b":status"] == b"204" and empty["body"] == b""
    assert b"content-length" not in empty["headers"] and empty["headers"][b"x-empty"] == b"1"
    assert boom["headers"][b":status"] == b"500"
    assert late["headers"][b":status"] == b"500" and late["body"].startswith(b"500 Internal")
    assert fixed["headers"][b":status"] == b"201" and fixed["body"] == b"made\n"
    # A streamed body of unknown length; HTTP/1.1's connection fields dropped, names lowercase.
    assert stream["body"] == b"one two" and b"connection" not in stream["headers"]
    assert stream["headers"][b"x-mixed"] == b"Case"
    assert head["headers"][b"content-length"] == str(len(BIG)).encode() and head["body"] == b""
    # A body that breaks after its head is out: the stream is reset, not left hanging.
    assert broken["headers"][b":status"] == b"200" and broken.get("reset") == 2   # INTERNAL_ERROR
    # Trailer fields known only at the body's end, in a HEADERS frame ending the stream.
    assert trailers["body"] == b"hello world" and trailers["trailers"] == [(b"x-body-length", b"11")]


def test_a_client_that_never_opens_its_window_is_timed_out_as_stalled():
    """The answer waits for a WINDOW_UPDATE that never comes: at the listener's tick
    after idle_timeout (called here with that time, no waiting) the connection goes and
    the timeout is counted."""
    async def main():
        stats = HTTPStats(Metrics(), {})
        async with h2c_listener(stats) as listener:
            reader, writer = await asyncio.open_connection(*listener.address)
            c = H2Connection(H2Configuration(client_side=True, header_encoding=None))
            c.initiate_connection()
            c.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"),
                               (b":path", b"/big")], end_stream=True)
            writer.write(c.data_to_send())
            got = 0
            while got < 65535:   # the whole first window, then nothing more can come
                data = await asyncio.wait_for(reader.read(65536), 10)
                assert data
                got += sum(len(e.data) for e in c.receive_data(data) if isinstance(e, DataReceived))
            (conn,) = listener.connections
            conn.check_timeouts(listener.now + Limits().idle_timeout / 2)
            assert not conn.closed   # not yet
            conn.check_timeouts(conn.last_activity + Limits().idle_timeout + 1)
            assert conn.closed and stats.timeouts.get(("t", "stalled")) == 1
            rest = await asyncio.wait_for(reader.read(), 10)   # GOAWAY, then the end
            assert rest and rest[3] == 0x7
    asyncio.run(main())
