"""The CDN service carrying out decide.py's decisions, in process: a FakeClock (time moves
only when the test says), an origin object that records what it was asked, real files
under tmp_path.  No sockets."""
from __future__ import annotations

import asyncio
import os
import threading

from farts.cdn.config import CDNConfig
from farts.cdn.key import tenant_prefix
from farts.cdn.origin import OriginResponse
from farts.cdn.service import CDN, CDNHandler
from farts.clock import FakeClock
from farts.metrics import Metrics
from farts.transport.http import FileBody, Fixed, Request
from fast.http1 import RequestParser


class Origin:
    """Answers each fetch with the next scripted (status, headers, body); records the
    request fields it got."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.asked: list[list] = []

    async def fetch(self, rest, headers, head_only=False, on_interim=None):
        self.asked.append(headers)
        status, hs, body = self.answers.pop(0)

        async def chunks():
            if body:
                yield body
        return OriginResponse(status, list(hs), len(body), chunks())


def request(path=b"/m/a", *fields):
    raw = b"GET " + path + b" HTTP/1.1\r\nhost: example.com\r\n" + b"".join(
        k + b": " + v + b"\r\n" for k, v in fields) + b"\r\n"
    head = RequestParser(65536, 100).feed(raw)[0]
    return Request(head, None, None, "127.0.0.1", "http", None, 0.0)


async def answer(handler, req):
    """(status, x-cache, body) of the handler's answer."""
    resp = handler.handle(req)
    if asyncio.iscoroutine(resp):
        resp = await resp
    if isinstance(resp, Fixed):
        head, _, body = resp.keep.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        fields = {k.lower(): v for k, v in (line.split(b": ", 1) for line in lines[1:])}
        return int(lines[0].split()[1]), fields.get(b"x-cache"), body
    fields = {(k.encode() if isinstance(k, str) else k): v for k, v in resp.headers}
    if isinstance(resp.body, FileBody):
        body = os.pread(resp.body.fd, resp.body.count, resp.body.offset)
    elif isinstance(resp.body, bytes):
        body = resp.body
    else:
        body = b"".join([c async for c in resp.body])
    return resp.status, fields.get(b"x-cache"), body


def run(tmp_path, origin, test, **cfg):
    clock = FakeClock(wall_start=1_700_000_000.0)

    async def main():
        cdn = CDN(CDNConfig(**cfg), tmp_path, Metrics(), clock)
        cdn.start()
        try:
            await test(cdn, CDNHandler(cdn, origin, "/m"), clock)
        finally:
            await cdn.stop()
    asyncio.run(main())


async def settled(cdn):
    while cdn.tasks:  # the fills and their stores
        await asyncio.wait(list(cdn.tasks))
    await asyncio.sleep(0)


def test_freshness_follows_the_injected_clock_and_a_stale_entry_is_revalidated(tmp_path):
    origin = Origin((200, [(b"cache-control", b"max-age=60"), (b"etag", b'"v1"')], b"hello"),
                    (304, [(b"cache-control", b"max-age=60"), (b"etag", b'"v1"')], b""))

    async def test(cdn, h, clock):
        assert await answer(h, request()) == (200, b"MISS", b"hello")
        await settled(cdn)
        assert await answer(h, request()) == (200, b"HIT", b"hello")
        clock.advance(59)
        assert await answer(h, request()) == (200, b"HIT", b"hello")
        assert len(origin.asked) == 1
        clock.advance(2)  # only the fake clock moved: stale now
        assert await answer(h, request()) == (200, b"REVALIDATED", b"hello")
        assert (b"if-none-match", b'"v1"') in origin.asked[1]
        await settled(cdn)
        assert await answer(h, request()) == (200, b"HIT", b"hello")
    run(tmp_path, origin, test)


def test_stale_while_revalidate_serves_stale_and_refreshes_once(tmp_path):
    cc = [(b"cache-control", b"max-age=10, stale-while-revalidate=60")]
    origin = Origin((200, cc, b"one"), (200, cc, b"two"))

    async def test(cdn, h, clock):
        await answer(h, request())
        await settled(cdn)
        clock.advance(20)
        first, second = await asyncio.gather(answer(h, request()), answer(h, request()))
        assert first == second == (200, b"STALE", b"one")
        await settled(cdn)
        assert len(origin.asked) == 2  # one refresh for both
        assert await answer(h, request()) == (200, b"HIT", b"two")
    run(tmp_path, origin, test)


def test_large_objects_are_answered_from_the_file(tmp_path):
    big = os.urandom(50_000)
    origin = Origin((200, [(b"cache-control", b"max-age=60")], big))

    async def test(cdn, h, clock):
        assert await answer(h, request()) == (200, b"MISS", big)
        await settled(cdn)
        resp = h.handle(request())
        assert isinstance(resp.body, FileBody)  # at once, no task: sendfile
        assert await answer(h, request(b"/m/a", (b"range", b"bytes=10-19"))) == (206, b"HIT", big[10:20])
    run(tmp_path, origin, test, memory_object_bytes=1024)


async def whole_body_not_stored(cdn, h, gate: threading.Event, body: bytes):
    """A miss whose client has read every byte while the store's thread, held on
    ``gate``, has not stored it yet; returns the rest of the client's body iterator."""
    settle = cdn.store.settle
    cdn.store.settle = lambda *a: gate.wait(10) and settle(*a)
    first = await h.handle(request())
    got, chunks = b"", first.body.__aiter__()
    while len(got) < first.content_length:
        got += await chunks.__anext__()
    assert got == body and (b"x-cache", b"MISS") in first.headers
    return chunks


def test_a_client_that_had_the_last_byte_of_a_miss_asks_again_and_gets_a_hit(tmp_path):
    """Between a fill's last byte and its entry (fsync, rename in the store's thread) a
    request waits for the entry rather than join the fill: whoever had a whole miss and
    asks again gets a HIT, and the origin is asked once.  Here the store's thread is held
    so that the request surely comes in that window."""
    body = os.urandom(5_000)
    origin = Origin((200, [(b"cache-control", b"max-age=60")], body))
    gate = threading.Event()

    async def test(cdn, h, clock):
        chunks = await whole_body_not_stored(cdn, h, gate, body)
        again = asyncio.ensure_future(answer(h, request()))
        await asyncio.sleep(0.05)
        assert not again.done()      # (the entry is not there yet)
        gate.set()
        assert await again == (200, b"HIT", body)
        assert [c async for c in chunks] == []
        assert len(origin.asked) == 1
        assert (cdn.misses, cdn.coalesced, cdn.hits) == (1, 0, 1)   # (counted once, as a HIT)
    run(tmp_path, origin, test)


def test_a_purge_while_a_whole_body_is_stored_counts_it_and_it_is_not_stored(tmp_path):
    body = os.urandom(5_000)
    origin = Origin(*[(200, [(b"cache-control", b"max-age=60")], body)] * 2)
    gate = threading.Event()

    async def test(cdn, h, clock):
        chunks = await whole_body_not_stored(cdn, h, gate, body)
        assert cdn.purge(tenant_prefix("-", "/m/"), False) == 1   # its client had it whole
        gate.set()
        assert [c async for c in chunks] == []
        await settled(cdn)
        assert cdn.entries == {}
        assert await answer(h, request()) == (200, b"MISS", body)
        assert len(origin.asked) == 2
    run(tmp_path, origin, test)


def test_a_small_object_after_a_restart_is_read_into_memory_off_the_loop(tmp_path):
    origin = Origin((200, [(b"cache-control", b"max-age=60")], b"small"))

    async def first(cdn, h, clock):
        await answer(h, request())
        await settled(cdn)
    run(tmp_path, origin, first)

    async def after_restart(cdn, h, clock):
        resp = h.handle(request())
        assert asyncio.iscoroutine(resp)  # the file is read in the disk pool, once
        status, state, body = await answer(h, request())
        resp.close()
        assert (status, state, body) == (200, b"HIT", b"small")
        assert isinstance(h.handle(request()), Fixed)  # in memory now
        assert origin.answers == [] and len(origin.asked) == 1
    run(tmp_path, origin, after_restart)


def test_the_recency_flush_is_a_clock_entry(tmp_path):
    origin = Origin((200, [(b"cache-control", b"max-age=60")], b"x"))

    async def test(cdn, h, clock):
        await answer(h, request())
        await settled(cdn)
        await answer(h, request())
        assert cdn.index.take_touched() == list(cdn.entries)
        await answer(h, request())
        clock.advance(2.0)  # flush_interval: the ticker takes what was touched
        assert cdn.index.take_touched() == []
    run(tmp_path, origin, test, flush_interval=2.0)


def test_a_large_hit_reuses_its_headers_until_its_age_changes(tmp_path):
    """The file tier's hit headers are kept (a tuple the transport frames once per
    connection) while the Age they carry is right, like the memory tier's Fixed."""
    big = os.urandom(50_000)
    origin = Origin((200, [(b"cache-control", b"max-age=60")], big))

    async def test(cdn, h, clock):
        await answer(h, request())
        await settled(cdn)
        first = h.handle(request()).headers
        assert type(first) is tuple and (b"age", b"0") in first and (b"x-cache", b"HIT") in first
        clock.advance(0.5)
        assert h.handle(request()).headers is first
        clock.advance(0.6)
        again = h.handle(request()).headers
        assert again is not first and (b"age", b"1") in again
        assert await answer(h, request()) == (200, b"HIT", big)
    run(tmp_path, origin, test, memory_object_bytes=1024)
