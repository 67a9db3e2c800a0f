"""The CDN service: the cache (index, entries, store), fills from origins, the handlers.

A request resolves to a key (farts/cdn/key.py).  A fresh entry is answered at once, in
the connection's own call (no task): from memory for small objects (a ready ``Fixed``),
else a ``FileBody`` the transport sends with sendfile.  Anything else goes to a task:
stale within stale-while-revalidate → served, refreshed in the background; otherwise the
key's ``Fill`` (one per key at a time: concurrent misses share it) fetches from the
origin, writes the body to a temp file while every waiting client streams from that
file, and on completion the file is renamed into the store and the entry installed.
"""
from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from pathlib import Path

from farts.cdn.config import CDNConfig
from farts.metrics import Metrics
from farts.transport.http import ClientGone, FileBody, Fixed, Request, Response
from fast.lru import LRUIndex

from . import policy
from .key import SEP, accept_encoding, parse_vary, variant_key
from .origin import CHUNK, OriginError
from .store import Entry, Store

log = logging.getLogger("farts.cdn")

NOT_ALLOWED = Fixed(405, b"405 Method Not Allowed: the CDN answers GET and HEAD\n",
                    headers=[(b"allow", b"GET, HEAD")])
# Fields a client's request may carry that make the answer more than "the object".
SPECIAL = (b"range", b"if-none-match", b"if-modified-since", b"cache-control")


class Fill:
    """One origin fetch and the clients waiting on it."""

    __slots__ = ("key", "base", "ae", "head_ready", "status", "headers", "content_length",
                 "fd", "tmp", "written", "done", "failed", "error", "entry", "cacheable",
                 "readers", "waiters", "purged", "names", "private")

    def __init__(self, key: bytes, base: bytes, ae: bytes) -> None:
        self.key, self.base, self.ae = key, base, ae
        self.head_ready = asyncio.get_running_loop().create_future()
        self.status = 0
        self.headers: list = []
        self.content_length = -1
        self.fd = -1
        self.tmp = ""
        self.written = 0
        self.done = False
        self.failed = False           # the origin's body ended early
        self.error: OriginError | None = None
        self.entry: Entry | None = None  # set when the answer is a stored entry (304)
        self.cacheable = False
        self.readers = 0
        self.waiters: list[asyncio.Future] = []
        self.purged = False
        self.names: tuple[bytes, ...] = ()
        self.private = False          # private or Set-Cookie: for the client that asked only

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def answered(self) -> None:
        if not self.head_ready.done():
            self.head_ready.set_result(None)

    def release(self) -> None:
        """One reader less; the temp file's descriptor closes with the last one."""
        self.readers -= 1
        self._close_if_unused()

    def _close_if_unused(self) -> None:
        if self.done and self.readers <= 0 and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FollowBody:
    """A client's view of a fill: the body as it is written to the temp file."""

    __slots__ = ("fill", "offset", "closed")

    def __init__(self, fill: Fill) -> None:
        self.fill = fill      # the caller has counted this reader already
        self.offset = 0
        self.closed = False

    def __aiter__(self) -> FollowBody:
        return self

    async def __anext__(self) -> bytes:
        fill = self.fill
        while True:
            if self.closed:
                raise StopAsyncIteration
            if self.offset < fill.written:
                # Just written by the fill: in the page cache, so read on the loop.
                data = os.pread(fill.fd, min(CHUNK, fill.written - self.offset), self.offset)
                self.offset += len(data)
                return data
            if fill.done:
                await self.aclose()
                if fill.failed:  # the client must see a broken answer, not a short one
                    raise ClientGone()
                raise StopAsyncIteration
            w = asyncio.get_running_loop().create_future()
            fill.waiters.append(w)
            await w

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.fill.release()

    def __del__(self) -> None:  # a client that went before its body was read
        if not self.closed:
            self.closed = True
            self.fill.release()


def _log_failure(fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("CDN metadata commit failed: %s", fut.exception())


async def _nothing():
    return
    yield  # an empty async iterator: a HEAD answer whose length is known


class CDNStats:
    def __init__(self, metrics: Metrics, cdn: CDN) -> None:
        self.revalidations = metrics.counter("farts_cdn_revalidations_total",
                                             "Conditional requests to origins, by outcome", ("result",))
        self.origin_errors = metrics.counter("farts_cdn_origin_errors_total",
                                             "Origin fetches that failed, by the status answered", ("status",))
        self.origin_requests = metrics.counter("farts_cdn_origin_requests_total", "Requests sent to origins")
        self.origin_bytes = metrics.counter("farts_cdn_origin_bytes_total", "Body bytes received from origins")
        self.purged = metrics.counter("farts_cdn_purged_total", "Objects removed by the purge API")
        for name, help_, attr in (
                ("farts_cdn_hits_total", "Answers from a fresh cached object", "hits"),
                ("farts_cdn_misses_total", "Answers that needed the origin", "misses"),
                ("farts_cdn_stale_total", "Stale objects served (while revalidating, or on an origin error)", "stale"),
                ("farts_cdn_coalesced_total", "Misses that waited for another request's fetch", "coalesced"),
                ("farts_cdn_cache_bytes_total", "Body bytes answered from the cache", "bytes_hit"),
                ("farts_cdn_evictions_total", "Objects evicted to stay under capacity_bytes", "evictions")):
            c = metrics.counter(name, help_)
            c.sources.append(lambda a=attr: {(): getattr(cdn, a)})
        metrics.gauge("farts_cdn_disk_bytes", "Bytes of cached bodies on disk", lambda: cdn.index.total_size)
        metrics.gauge("farts_cdn_objects", "Cached objects", lambda: len(cdn.index))
        metrics.gauge("farts_cdn_memory_bytes", "Bytes of small objects kept in memory", lambda: cdn.mem_used)


class CDN:
    def __init__(self, cfg: CDNConfig, root: Path, metrics: Metrics) -> None:
        self.cfg = cfg
        self.store = Store(root)
        self.index = LRUIndex()
        self.entries: dict[bytes, Entry] = {}
        self.vary: dict[bytes, tuple[bytes, ...]] = {}
        self.fills: dict[bytes, Fill] = {}
        self.tasks: set[asyncio.Task] = set()
        self.mem_used = 0
        # time.time() - perf_counter(): a request's start (perf_counter) as wall time.
        self.wall_offset = time.time() - time.perf_counter()
        self.open_fds = 0
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.max_open_fds = max(0, min(4096, soft // 4))  # the rest stays for sockets
        self.hits = self.misses = self.stale = self.coalesced = self.bytes_hit = self.evictions = 0
        self.stats = CDNStats(metrics, self)
        self._flusher: asyncio.Task | None = None
        entries, self.vary = self.store.load()
        self.index.load((e.key, e.size) for e in entries)
        for e in entries:
            self.entries[e.key] = e
        self._evict()

    def start(self) -> None:
        self._flusher = asyncio.ensure_future(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.flush_interval)
            self.wall_offset = time.time() - time.perf_counter()  # follows clock steps
            await self.flush()

    async def flush(self) -> None:
        """Persist the recency order of what was used since the last flush."""
        keys = self.index.take_touched()
        if keys:
            await self.store.touch(keys)

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        if self.tasks:  # fills about to be stored get a moment to finish
            await asyncio.wait(list(self.tasks), timeout=2.0)
        for t in list(self.tasks):
            t.cancel()
        await self.flush()
        await asyncio.get_running_loop().run_in_executor(None, self.store.close)

    def spawn(self, coro) -> None:
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    # -- entries ------------------------------------------------------------------------
    def install(self, entry: Entry, vary_base: bytes | None, names: tuple[bytes, ...]) -> None:
        old = self.entries.get(entry.key)
        if old is not None:
            self._release(old)
        self.entries[entry.key] = entry
        self.index.insert(entry.key, entry.size)
        if entry.body is not None:
            self.mem_used += len(entry.body)
        self.store.put(entry, vary_base, names).add_done_callback(_log_failure)
        if old is not None and old.file != entry.file:
            self.store.delete([], [old.file])
        self._evict()

    def _release(self, e: Entry) -> None:
        """Drop what an entry holds besides its file: the body in memory, the descriptor."""
        if e.body is not None:
            self.mem_used -= len(e.body)
            e.body = None
        e.fixed = None
        if e.fd >= 0:
            os.close(e.fd)
            e.fd = -1
            self.open_fds -= 1

    def file_of(self, e: Entry) -> FileBody | None:
        """A body from the entry's file: its kept descriptor (opened once, for up to
        max_open_fds entries), or one of its own; None if the file has gone."""
        fd = e.fd
        if fd >= 0:
            return FileBody(fd, 0, e.size, owned=False)
        try:
            fd = os.open(self.store.path(e.file), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        if self.open_fds < self.max_open_fds:
            e.fd = fd
            self.open_fds += 1
            return FileBody(fd, 0, e.size, owned=False)
        return FileBody(fd, 0, e.size)

    def _evict(self) -> None:
        keys = self.index.evict_until(self.cfg.capacity_bytes)
        if keys:
            self.evictions += len(keys)
            self._drop(keys)

    def _drop(self, keys: list[bytes]) -> None:
        files = []
        for k in keys:
            e = self.entries.pop(k, None)
            if e is not None:
                self._release(e)
                files.append(e.file)
        self.store.delete(keys, files)

    def purge(self, prefix: bytes, exact: bool) -> int:
        """Remove every key starting with ``prefix`` (or equal to it, with its variants,
        when ``exact``); fills in progress for them are not stored."""
        def match(k: bytes) -> bool:
            if exact:
                return k == prefix or k.startswith(prefix + b"\0")
            return k.startswith(prefix)
        keys = [k for k in self.entries if match(k)]
        for k in keys:
            self.index.remove(k)
        self._drop(keys)
        for k, fill in self.fills.items():
            if match(k):
                fill.purged = True
        self.stats.purged.inc((), len(keys))
        return len(keys)


class CDNHandler:
    """The handler of one route of kind "cdn"."""

    def __init__(self, cdn: CDN, origin, prefix: str) -> None:
        self.cdn = cdn
        self.origin = origin
        self.prefix_len = len(prefix.encode())
        self.memory_object_bytes = cdn.cfg.memory_object_bytes
        # The parts of base_key() that do not change per request, built once.
        self.tenant_part: dict[str, bytes] = {}
        self.scheme_part = {s: SEP + s.encode() + SEP for s in ("http", "https")}

    def handle(self, req: Request):
        head = req.head
        if head.method != b"GET" and head.method != b"HEAD":
            return NOT_ALLOWED
        target = head.target
        if target[:1] != b"/":  # absolute-form: keep path and query only
            target = head.path + (b"?" + head.query if head.query else b"")
        tenant = req.tenant.id if req.tenant is not None else "-"
        part = self.tenant_part.get(tenant)
        if part is None:
            part = self.tenant_part[tenant] = tenant.encode() + SEP
        base = part + target + self.scheme_part[req.scheme] + head.host  # = base_key(...)
        cdn = self.cdn
        names = cdn.vary.get(base)
        key = variant_key(base, names, head.header) if names else base
        e = cdn.entries.get(key)
        if e is not None:
            now = req.start + cdn.wall_offset  # wall clock time without another clock call
            if now < e.fresh_until:
                header = head.header
                if (header(b"range") is None and header(b"if-none-match") is None
                        and header(b"if-modified-since") is None):
                    cdn.hits += 1
                    cdn.index.touch(key)
                    fixed = e.fixed
                    if fixed is not None and now < e.fixed_until:  # (its Age is right)
                        cdn.bytes_hit += e.size
                        return fixed
                    answer = self.whole(e, now, b"HIT")
                    if answer is not None:
                        return answer
                else:
                    answer = self.serve(e, head, now, b"HIT")
                    if answer is not None:
                        cdn.hits += 1
                        cdn.index.touch(key)
                        return answer
        return self.slow(req, target, key, base)

    # -- answers from an entry --------------------------------------------------------------
    def whole(self, e: Entry, now: float, state: bytes):
        """The whole object: a ready response from memory, or the file; None if the file
        has gone (purged or evicted under us)."""
        cdn = self.cdn
        if e.size <= self.memory_object_bytes and (
                e.body is not None or cdn.mem_used + e.size <= cdn.cfg.memory_capacity_bytes):
            body = e.body
            if body is None:  # small: read on the loop, once
                try:
                    with open(cdn.store.path(e.file), "rb") as f:
                        body = e.body = f.read()
                except OSError:
                    return None
                cdn.mem_used += len(body)
            ctype = b"application/octet-stream"
            hs = []
            for k, v in e.headers:
                if k == b"content-type":
                    ctype = v
                else:
                    hs.append((k, v))
            hs.append((b"age", str(int(now - e.response_time + e.initial_age)).encode()))
            hs.append((b"x-cache", state))
            fixed = Fixed(e.status, body, ctype, hs)
            if state == b"HIT":  # kept until the Age it carries changes
                e.fixed, e.fixed_until = fixed, now + 1 - (now - e.response_time + e.initial_age) % 1
            cdn.bytes_hit += e.size
            return fixed
        body = self.cdn.file_of(e)
        if body is None:
            return None
        self.cdn.bytes_hit += e.size
        return Response(e.status, self.headers(e, now, state), body, e.size)

    def headers(self, e: Entry, now: float, state: bytes) -> list:
        return [*e.headers, (b"age", str(int(now - e.response_time + e.initial_age)).encode()),
                (b"x-cache", state)]

    def serve(self, e: Entry, head, now: float, state: bytes):
        """An entry as the request asks for it: 304, 206/416 for a Range, or whole."""
        hs = head.headers
        if policy.not_modified(hs, e.etag, e.last_modified):
            keep = [(k, v) for k, v in self.headers(e, now, state)
                    if k in (b"etag", b"last-modified", b"cache-control", b"expires", b"vary",
                             b"content-location", b"age", b"x-cache")]
            return Response(304, keep, b"", head_only=True)
        rng = head.header(b"range")
        if rng is not None and e.status == 200:
            if_range = head.header(b"if-range")
            if if_range is None or if_range in (e.etag, e.last_modified):
                r = policy.byte_range(rng, e.size)
                if r == policy.UNSATISFIABLE:
                    return Response(416, [(b"content-range", f"bytes */{e.size}".encode()),
                                          (b"content-type", b"text/plain; charset=utf-8")],
                                    b"416 Range Not Satisfiable\n")
                if r is not None:
                    first, last = r
                    body = self.cdn.file_of(e)
                    if body is None:
                        return None
                    n = body.count = last - first + 1
                    body.offset = first
                    self.cdn.bytes_hit += n
                    return Response(206, [*self.headers(e, now, state), (
                        b"content-range", f"bytes {first}-{last}/{e.size}".encode())], body, n)
        return self.whole(e, now, state)

    # -- misses, stale entries ------------------------------------------------------------------
    async def slow(self, req: Request, target: bytes, key: bytes, base: bytes):
        cdn = self.cdn
        head = req.head
        now = time.time()
        e = cdn.entries.get(key)  # (this task starts later than handle(): look again)
        if e is not None:
            if now < e.fresh_until:  # fresh, but its file had gone: fetch again
                e = None
            elif now - e.fresh_until <= e.swr:
                answer = self.serve(e, head, now, b"STALE")
                if answer is not None:
                    cdn.stale += 1
                    if key not in cdn.fills:
                        self.start_fill(key, base, target, head, e)
                    return answer
        fill = cdn.fills.get(key)
        started = fill is None
        if started:
            fill = self.start_fill(key, base, target, head, e)
            cdn.misses += 1
        else:
            cdn.coalesced += 1
        fill.readers += 1
        try:
            await asyncio.shield(fill.head_ready)
        except BaseException:
            fill.release()
            raise
        if fill.error is not None:
            fill.release()
            if e is not None and time.time() - e.fresh_until <= e.sie:
                answer = self.serve(e, head, time.time(), b"STALE")
                if answer is not None:
                    cdn.stale += 1
                    return answer
            return Fixed.error(fill.error.status, fill.error.reason)
        if fill.entry is not None:  # revalidated (304) or stored before we looked
            fill.release()
            answer = self.serve(fill.entry, head, time.time(), b"REVALIDATED")
            if answer is not None:
                return answer
            return Fixed.error(502, "cached object vanished")
        if fill.names and fill.ae != accept_encoding(head.header(b"accept-encoding")):
            # The answer varies and this client asked for another variant.
            fill.release()
            vkey = variant_key(base, fill.names, head.header)
            return await self.slow(req, target, vkey, base)
        if fill.private and not started:
            # An answer for one client (private, Set-Cookie) is never handed to another:
            # this one asks the origin itself.  (Other answers that are not stored, too
            # large or errors, are shared by the clients that waited for them.)
            fill.release()
            fill = self.start_fill(key, base, target, head, None, register=False)
            fill.readers += 1
            try:
                await asyncio.shield(fill.head_ready)  # (its own: nobody else waits on it)
            except BaseException:
                fill.release()
                raise
            if fill.error is not None:
                fill.release()
                return Fixed.error(fill.error.status, fill.error.reason)
        status, headers, length = fill.status, fill.headers, fill.content_length
        if head.method == b"HEAD" or status in (204, 304):  # a head without a body
            fill.release()
            return Response(status, [*headers, (b"x-cache", b"MISS")], _nothing(),
                            length, head_only=True)
        return Response(status, [*headers, (b"x-cache", b"MISS")], FollowBody(fill), length)

    def start_fill(self, key: bytes, base: bytes, target: bytes, head, stale: Entry | None,
                   register: bool = True) -> Fill:
        ae = head.header(b"accept-encoding")
        fill = Fill(key, base, accept_encoding(ae))
        if register:
            self.cdn.fills[key] = fill
        headers = [(b"accept-encoding", ae)] if ae else []
        if stale is not None:
            if stale.etag is not None:
                headers.append((b"if-none-match", stale.etag))
            if stale.last_modified is not None:
                headers.append((b"if-modified-since", stale.last_modified))
        self.cdn.spawn(self.run_fill(fill, target[self.prefix_len:], headers, stale))
        return fill

    async def run_fill(self, fill: Fill, rest: bytes, req_headers: list, stale: Entry | None) -> None:
        cdn = self.cdn
        try:
            await self._fetch(fill, rest, req_headers, stale)
        except OriginError as err:
            cdn.stats.origin_errors.inc((err.status,))
            log.warning("origin fetch of %r failed: %s", rest[:200], err.reason)
            if not fill.head_ready.done():
                fill.error = err
            fill.failed = True
        except Exception:
            log.exception("CDN fill of %r failed", rest[:200])
            if not fill.head_ready.done():
                fill.error = OriginError(502, "internal error")
            fill.failed = True
        finally:
            if cdn.fills.get(fill.key) is fill:
                del cdn.fills[fill.key]
            if fill.tmp:
                try:
                    os.unlink(fill.tmp)  # still there: not stored
                except FileNotFoundError:
                    pass
            fill.done = True
            fill.answered()
            fill.wake()
            fill._close_if_unused()

    async def _fetch(self, fill: Fill, rest: bytes, req_headers: list, stale: Entry | None) -> None:
        cdn, cfg = self.cdn, self.cdn.cfg
        request_time = time.time()
        cdn.stats.origin_requests.inc()
        resp = await self.origin.fetch(rest, req_headers)
        response_time = time.time()
        status, headers = resp.status, resp.headers
        if status == 304 and stale is not None:
            async for _ in resp.body:
                pass
            merged = policy.updated_headers(stale.headers, headers)
            entry = Entry(fill.key, stale.status, merged, stale.size, stale.file, request_time,
                          response_time, policy.freshness_lifetime(stale.status, merged, response_time, cfg.negative_ttl),
                          policy.initial_age(headers, request_time, response_time),
                          *policy.stale_windows(merged))
            cdn.stats.revalidations.inc(("not_modified",))
            if not fill.purged and cdn.entries.get(fill.key) is stale:
                cdn.install(entry, None, ())
            fill.entry = entry
            return
        if status >= 500 and stale is not None and response_time - stale.fresh_until <= stale.sie:
            # An error answer while a stale copy may stand in (stale-if-error, RFC 5861).
            async for _ in resp.body:  # (read to the end: that also closes the connection)
                pass
            raise OriginError(status, f"origin answered {status}")
        if stale is not None:
            cdn.stats.revalidations.inc(("modified",))
        names = parse_vary(policy.header(headers, b"vary"))
        cacheable = (names is not None and status != 304 and
                     policy.storable(b"GET", status, req_headers, headers, cfg.negative_ttl)
                     and resp.content_length <= cfg.max_object_bytes)
        fill.names = names or ()
        fill.cacheable = cacheable
        fill.private = (policy.header(headers, b"set-cookie") is not None
                        or b"private" in policy.cache_control(headers))
        fill.status = status
        fill.headers = (policy.stored_headers(headers) if cacheable else
                        [(k, v) for k, v in headers if k not in policy.CONNECTION_FIELDS])
        fill.content_length = resp.content_length
        fill.fd, fill.tmp = cdn.store.temp_file()
        fill.answered()
        small = [] if cacheable and 0 <= resp.content_length <= self.memory_object_bytes else None
        fd = fill.fd
        async for chunk in resp.body:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
            fill.written += len(chunk)
            cdn.stats.origin_bytes.inc((), len(chunk))
            if small is not None:
                small.append(chunk)
            if fill.written > cfg.max_object_bytes:
                fill.cacheable = cacheable = False
            fill.wake()
        if resp.content_length >= 0 and fill.written != resp.content_length:
            raise OriginError(502, "origin body shorter than its Content-Length")
        if not cacheable or fill.purged:
            return
        name = cdn.store.new_name(fill.key)
        tmp, fill.tmp = fill.tmp, ""
        try:
            await cdn.store.settle(fd, tmp, name)
        except OSError:
            fill.tmp = tmp
            raise
        if fill.purged:
            cdn.store.delete([], [name])
            return
        lifetime = policy.freshness_lifetime(status, headers, response_time, cfg.negative_ttl)
        store_key = variant_key(fill.base, fill.names, lambda _n: fill.ae) if fill.names else fill.key
        entry = Entry(store_key, status, fill.headers, fill.written, name, request_time, response_time,
                      lifetime, policy.initial_age(headers, request_time, response_time),
                      *policy.stale_windows(headers))
        if small is not None and cdn.mem_used + fill.written <= cfg.memory_capacity_bytes:
            entry.body = b"".join(small)
        if fill.names:
            cdn.vary[fill.base] = fill.names
        cdn.install(entry, fill.base if fill.names else None, fill.names)

