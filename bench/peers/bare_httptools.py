"""The ceiling of Python on uvloop for bench/http.py: an asyncio.Protocol that parses
requests with httptools.HttpRequestParser and answers every complete message with a
prebuilt response, honouring keep-alive (and pipelining: one response per message).

No routing, no tenants, no limits, no per-request objects beyond what httptools makes:
whatever farts-edge does on top of this costs the difference.

Run: python bench/peers/bare_httptools.py --port 8080 [--host 127.0.0.1] [--size 1024]
"""
from __future__ import annotations

import argparse
import asyncio
import email.utils
import signal

import httptools
import uvloop
from body import make_body


class Responses:
    """The two prebuilt responses, with a Date header refreshed once a second."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.keep_alive = b""
        self.close = b""
        self.refresh()

    def refresh(self) -> None:
        date = email.utils.formatdate(usegmt=True).encode()
        head = (b"HTTP/1.1 200 OK\r\nServer: bare\r\nDate: " + date +
                b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: " +
                str(len(self.body)).encode() + b"\r\n")
        self.keep_alive = head + b"\r\n" + self.body
        self.close = head + b"Connection: close\r\n\r\n" + self.body

    def tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self.refresh()
        loop.call_later(1.0, self.tick, loop)


BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class BareHTTP(asyncio.Protocol):
    __slots__ = ("transport", "parser", "responses")

    def __init__(self, responses: Responses) -> None:
        self.responses = responses
        self.transport = None
        self.parser = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(BAD_REQUEST)
            self.transport.close()

    def on_message_complete(self) -> None:
        if self.parser.should_keep_alive():
            self.transport.write(self.responses.keep_alive)
        else:
            self.transport.write(self.responses.close)
            self.transport.close()

    def connection_lost(self, exc) -> None:
        self.transport = None


async def serve(host: str, port: int, size: int) -> None:
    loop = asyncio.get_running_loop()
    responses = Responses(make_body(size))
    loop.call_later(1.0, responses.tick, loop)
    server = await loop.create_server(lambda: BareHTTP(responses), host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"bare-uvloop-httptools on http://{host}:{port}/", flush=True)
    await stop.wait()
    server.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args()
    uvloop.run(serve(args.host, args.port, args.size))


if __name__ == "__main__":
    main()
