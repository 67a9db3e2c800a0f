"""The pooled outbound HTTP(S) client (farts.transport.client) and the CDN origin on it,
against real servers on loopback: keep-alive reuse (one TLS handshake for several
misses, with SNI), the retry of a stale pooled connection, the read timeout on the
injected clock."""
from __future__ import annotations

import asyncio
import ssl

import pytest

from farts import pki
from farts.cdn.origin import HTTPOrigin, OriginError
from farts.clock import FakeClock, LoopClock
from farts.transport.client import Client, Deadlines, ReadTimeout


class RawServer:
    """An HTTP/1.1 server that answers each request with its path, keeping the
    connection; ``answers_per_connection`` requests later it closes instead of answering."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None, answers_per_connection: int = 1000,
                 answer: bool = True) -> None:
        self.ssl = ssl_context
        self.limit = answers_per_connection
        self.answer = answer
        self.connections = 0
        self.requests = 0
        self.got_request = asyncio.Event()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                self.got_request.set()
                if answered >= self.limit:
                    break   # a keep-alive connection the server has given up on
                if not self.answer:
                    await asyncio.sleep(3600)
                path = head.split(b" ", 2)[1]
                body = b"object " + path
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                answered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        self.server.close()


async def _read(resp) -> bytes:
    return b"".join([chunk async for chunk in resp.body])


def test_https_origin_reuses_one_tls_connection_for_several_misses(tmp_path):
    ca, _ = pki.make_ca(tmp_path / "ca")
    pki.issue(tmp_path / "ca", tmp_path / "origin.crt", tmp_path / "origin.key", ["localhost", "127.0.0.1"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "origin.crt", tmp_path / "origin.key")
    handshakes: list[str | None] = []
    server_ctx.sni_callback = lambda sslobj, name, ctx: handshakes.append(name)

    async def main() -> None:
        srv = RawServer(server_ctx)
        port = await srv.start()
        client = Client(LoopClock(), ca_file=str(ca))
        origin = HTTPOrigin(f"https://localhost:{port}/media", 5, 5, client)
        try:
            for name in (b"a.jpg", b"b.jpg", b"c.jpg"):
                resp = await origin.fetch(name, [])
                assert resp.status == 200
                assert await _read(resp) == b"object /media/" + name
        finally:
            client.close()
            await srv.stop()
        assert srv.requests == 3
        assert srv.connections == 1
        assert handshakes == ["localhost"]  # one handshake, with SNI

    asyncio.run(main())


def test_an_untrusted_origin_certificate_is_a_502(tmp_path):
    pki.make_ca(tmp_path / "ca")
    pki.issue(tmp_path / "ca", tmp_path / "origin.crt", tmp_path / "origin.key", ["localhost"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "origin.crt", tmp_path / "origin.key")

    async def main() -> None:
        srv = RawServer(server_ctx)
        port = await srv.start()
        client = Client(LoopClock())   # the system's CAs only
        try:
            with pytest.raises(OriginError) as err:
                await HTTPOrigin(f"https://localhost:{port}/", 5, 5, client).fetch(b"x", [])
            assert err.value.status == 502
        finally:
            client.close()
            await srv.stop()

    asyncio.run(main())


def test_a_stale_pooled_connection_is_replaced_once():
    async def main() -> None:
        srv = RawServer(answers_per_connection=1)
        port = await srv.start()
        client = Client(LoopClock())
        pool = client.pool("http", "127.0.0.1", port)
        try:
            for path in (b"/1", b"/2", b"/3"):
                resp = await client.request(pool, b"GET", path, [(b"host", b"x")],
                                            connect_timeout=5, read_timeout=5)
                assert resp.body == b"object " + path
        finally:
            client.close()
            await srv.stop()
        # /2 and /3 first went to the pooled connection the server had given up on.
        assert srv.connections == 3
        assert srv.requests == 5

    asyncio.run(main())


def test_read_timeout_runs_on_the_injected_clock():
    async def main() -> None:
        srv = RawServer(answer=False)
        port = await srv.start()
        clock = FakeClock()
        client = Client(clock)
        pool = client.pool("http", "127.0.0.1", port)
        task = asyncio.ensure_future(client.request(pool, b"GET", b"/", [(b"host", b"x")],
                                                    connect_timeout=5, read_timeout=2))
        await srv.got_request.wait()
        clock.advance(1.5)
        await asyncio.sleep(0)
        assert not task.done()
        clock.advance(1.0)
        with pytest.raises(ReadTimeout):
            await task
        client.close()
        await srv.stop()

    asyncio.run(main())


def test_a_read_timeout_never_fires_early():
    # Deadlines count from the last sweep's time, which is up to a TICK old when a wait
    # starts: 0.09 s here. A 1.05 s wait that starts at 0.19 must still be waiting at
    # 1.23 (the sweep at 1.2 must not end it).
    clock = FakeClock(start=0.0)
    deadlines = Deadlines(clock)
    deadlines.start()
    clock.advance(0.19)
    loop = asyncio.new_event_loop()
    try:
        fut = loop.create_future()
        deadlines.add(fut, 1.05)
        clock.advance(1.04)           # 1.23 s
        assert not fut.done()
        clock.advance(0.25)           # 1.48 s: past it by no more than two sweeps
        assert fut.done()
    finally:
        loop.close()


def test_pools_to_checked_addresses_are_bounded_least_recently_used_first():
    # (webhooks: the destinations are what tenants choose; each would otherwise stay for ever)
    from farts.transport.client import MAX_ROUTED_POOLS
    client = Client(FakeClock())
    first = client.pool("https", "h0.example", 443, "203.0.113.1")
    kept = client.pool("https", "kept.example", 443, "203.0.113.2", ("10.0.0.1", 3128))
    for i in range(1, MAX_ROUTED_POOLS + 10):
        client.pool("https", f"h{i}.example", 443, "203.0.113.1")
        assert client.pool("https", "kept.example", 443, "203.0.113.2", ("10.0.0.1", 3128)) is kept
    assert len(client.routed) == MAX_ROUTED_POOLS
    assert first.closed and not kept.closed
    assert client.pool("https", "h0.example", 443, "203.0.113.1") is not first
    fixed = client.pool("http", "origin.example", 80)          # a configured origin: never evicted
    assert client.pool("http", "origin.example", 80) is fixed and len(client.pools) == 1
    client.close()
