"""The reverse proxy passes an upstream's 103 Early Hints on to the client (RFC 9110
§15.2, RFC 8297; farts/proxy/interim.py): a real upstream (a raw asyncio server in a
thread of this process, since HTTP libraries have no API to send a 1xx) behind a real
node, curl as the client over HTTP/1.1, HTTP/1.0 and HTTP/2."""
from __future__ import annotations

import asyncio
import subprocess
import threading

import pytest
from conftest import BASE_CONFIG

HINTS = (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n"
         b"Connection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\r\n")
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
# What the client gets of HINTS: the Link, none of the upstream connection's fields.
PASSED_ON = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"


class HintingUpstream:
    """Keep-alive HTTP/1.1: /hints answers with HINTS then the answer in one write,
    /hints-then-wait with HINTS, a pause, then the answer (the real use: hints while the
    answer is made), /continue with a 100 Continue then the answer; a body is read."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self.serve, "127.0.0.1", 0), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.lower().split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                path = head.split(b" ", 2)[1]
                if path.endswith(b"/hints"):
                    writer.write(HINTS + ANSWER)
                elif path.endswith(b"/hints-then-wait"):
                    writer.write(HINTS)
                    await writer.drain()
                    await asyncio.sleep(0.3)
                    writer.write(ANSWER)
                elif path.endswith(b"/continue"):
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + ANSWER)
                else:
                    writer.write(ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def upstream():
    u = HintingUpstream()
    yield u
    u.close()


def curl(*args: str) -> bytes:
    out = subprocess.run(["curl", "-sS", "--max-time", "20", "-i", *args], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_early_hints_from_the_upstream_reach_the_client(upstream, node_factory):
    node = node_factory(f"""
        [upstreams.app]
        servers = ["127.0.0.1:{upstream.port}"]

        [[routes]]
        prefix = "/app/"
        kind = "proxy"
        upstream = "app"
    """, base=BASE_CONFIG.replace("[listeners.http]\nport = 0\n", "[listeners.http]\nport = 0\nh2c = true\n"))
    url = lambda path: node.url("http", "/app/" + path)  # noqa: E731
    for path in ("hints", "hints-then-wait"):
        # A request without a body (the proxy's callback exchange), hints in the answer's read or before it.
        got = curl(url(path))
        assert got.startswith(PASSED_ON + b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\nok"), got
        # A request with a body (the proxy's coroutine).
        got = curl("-X", "POST", "-d", "x=1", url(path))
        assert got.startswith(PASSED_ON + b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\nok"), got
        # An HTTP/1.0 client must not get a 1xx (RFC 9110 §15.2).
        got = curl("--http1.0", url(path))
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and b"103" not in got, got
        # HTTP/2 (h2c): a HEADERS frame with :status 103 before the answer's.
        got = curl("--http2-prior-knowledge", url(path))
        hints, _, rest = got.partition(b"\r\n\r\n")
        status, *fields = hints.split(b"\r\n")
        assert status.rstrip() == b"HTTP/2 103" and fields == [b"link: </a.css>; rel=preload"], got
        assert rest.startswith(b"HTTP/2 200") and rest.endswith(b"\r\n\r\nok"), got
    # An upstream's 100 Continue is not passed on: the node answers Expect itself.
    for args in ((), ("-X", "POST", "-d", "x=1")):
        got = curl(*args, url("continue"))
        assert got.startswith(b"HTTP/1.1 200 OK\r\n") and b"100" not in got, got
    assert node.alive() and "Traceback" not in node.log()
