"""The CDN service: the cache (index, entries, store), fills from origins, the handlers.

A request resolves to a key (farts/cdn/key.py); what to do with it is decided by the
pure functions of farts/cdn/decide.py, and this module carries the decisions out.  A
fresh entry is answered at once, in the connection's own call (no task): from memory for
small objects (a ready ``Fixed``), else a ``FileBody`` the transport sends with sendfile.
Anything else goes to a task: stale within stale-while-revalidate → served, refreshed in
the background; otherwise the key's ``Fill`` (one per key at a time: concurrent misses
share it) fetches from the origin, writes the body to a temp file while every waiting
client streams from that file, and on completion the file is renamed into the store and
the entry installed.

The time is read once per request (``clock.wall()``; a fill reads it when it asks the
origin and when the origin answers).  File contents are read and written in the
``disk`` thread pool, never on the loop; on the loop only metadata calls (open, close,
unlink of one path) and sendfile, which the transport does without blocking.
"""
from __future__ import annotations

import asyncio
import logging
import os
import resource
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from farts.cdn.config import CDNConfig
from farts.clock import Clock
from farts.metrics import Metrics
from farts.transport.http import ClientGone, FileBody, Fixed, Request, Response
from fast.lru import LRUIndex

from . import decide, partial, policy
from .decide import HIT, JOIN, ONLY_CACHED, STALE, STALE_REFRESH, on_request
from .key import SEP, base_key, base_of, variant_key
from .origin import CHUNK, OriginError
from .store import Entry, Store

log = logging.getLogger("farts.cdn")

STATE = {HIT: b"HIT", STALE: b"STALE", STALE_REFRESH: b"STALE"}  # X-Cache of an answer
DISK_THREADS = 4
PARTIAL = b"\x01"  # + key: a partial object's key in the LRU index (CDN.partials)
LOAD = object()  # whole(): a small object to read into memory first (CDNHandler.load)
_join = b"".join  # (one allocation for a key of four parts, where + makes three)


class Fill:
    """One origin fetch and the clients waiting on it."""

    __slots__ = ("key", "base", "fields", "head_ready", "status", "headers", "own", "content_length",
                 "fd", "tmp", "written", "done", "failed", "error", "entry", "cacheable",
                 "readers", "waiters", "purged", "names", "private", "at", "pool_ops", "interim")

    def __init__(self, key: bytes, base: bytes, fields: list) -> None:
        self.key, self.base = key, base
        self.fields = fields          # the request's fields: the variant it selects
        self.head_ready = asyncio.get_running_loop().create_future()
        self.status = 0
        self.headers: list = []
        self.own: list = []           # the headers for the client whose request started it
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
        self.at = 0.0                 # when the origin answered or the fetch failed (wall)
        self.pool_ops = 0             # reads, writes, fsync of fd running in a thread
        self.interim = None           # fn(status, headers): the origin's 1xx to the first client

    def header(self, name: bytes) -> bytes | None:
        return policy.header(self.fields, name)

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def storing(self) -> bool:
        """Every byte of a cacheable answer is in: it is being stored (fsync, rename)."""
        return (self.cacheable and not self.purged and not self.failed and not self.done
                and self.content_length >= 0 and self.written == self.content_length)

    async def changed(self) -> None:
        """Until the next wake: more of the body written, the head, or the end."""
        w = asyncio.get_running_loop().create_future()
        self.waiters.append(w)
        await w

    async def ended(self) -> None:
        while not self.done:
            await self.changed()

    def answered(self) -> None:
        if not self.head_ready.done():
            self.head_ready.set_result(None)

    def release(self) -> None:
        """One reader less; the temp file's descriptor closes with the last one."""
        self.readers -= 1
        self._close_if_unused()

    def _close_if_unused(self) -> None:
        if self.done and self.readers <= 0 and self.pool_ops == 0 and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def in_pool(self, pool: ThreadPoolExecutor, fn, *args) -> asyncio.Future:
        """``fn(self.fd, *args)`` in a thread of ``pool``.  The descriptor stays open until the
        thread is done with it, even when the task awaiting it is cancelled: closed
        under a running write, its number could be reused by another file or socket."""
        loop = asyncio.get_running_loop()
        self.pool_ops += 1
        cf = pool.submit(fn, self.fd, *args)
        cf.add_done_callback(lambda _cf: loop.is_closed() or loop.call_soon_threadsafe(self._pool_op_done))
        return asyncio.wrap_future(cf, loop=loop)

    def _pool_op_done(self) -> None:
        self.pool_ops -= 1
        self._close_if_unused()


class FollowBody:
    """A client's view of a fill: the body as it is written to the temp file."""

    __slots__ = ("fill", "disk", "offset", "closed")

    def __init__(self, fill: Fill, disk: ThreadPoolExecutor) -> None:
        self.fill = fill      # the caller has counted this reader already
        self.disk = disk
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
                # (the descriptor stays open while this reader is counted)
                data = await fill.in_pool(self.disk, os.pread, min(CHUNK, fill.written - self.offset),
                                       self.offset)
                self.offset += len(data)
                return data
            if fill.done:
                await self.aclose()
                if fill.failed:  # the client must see a broken answer, not a short one
                    raise ClientGone()
                raise StopAsyncIteration
            await fill.changed()

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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _open_partial(path: str, length: int) -> int:
    """A partial object's file (a new one: ``length`` bytes of holes), opened for pwrite."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    os.ftruncate(fd, length)
    return fd


def _write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


# The fields a 304 carries (RFC 9110 §15.4.5), and the cache's own.
NOT_MODIFIED_FIELDS = frozenset((b"etag", b"last-modified", b"cache-control", b"expires", b"vary",
                                 b"content-location", b"date", b"age", b"x-cache"))


def not_modified(headers: list) -> Response:
    return Response(304, [(k, v) for k, v in headers if k in NOT_MODIFIED_FIELDS], b"", head_only=True)


def unsatisfiable(size: int) -> Response:
    return Response(416, [(b"content-range", f"bytes */{size}".encode()),
                          (b"content-type", b"text/plain; charset=utf-8")], b"416 Range Not Satisfiable\n")


async def _slice(body, start: int, stop: int):
    """Bytes start..stop (exclusive) of a streamed body; the rest is read and dropped
    (that also ends the origin's answer)."""
    at = 0
    async for chunk in body:
        lo, hi = max(start - at, 0), min(stop - at, len(chunk))
        if lo < hi:
            yield chunk[lo:hi]
        at += len(chunk)


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
        self.partial = metrics.counter("farts_cdn_partial_total",
                                       "Partial content (206) from origins, by what became of it: "
                                       "stored, combined, completed, passed (not stored), served "
                                       "(a range answered from it)", ("outcome",))
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
    def __init__(self, cfg: CDNConfig, root: Path, metrics: Metrics, clock: Clock) -> None:
        self.cfg = cfg
        self.clock = clock
        self.disk = ThreadPoolExecutor(DISK_THREADS, thread_name_prefix="cdn-disk")
        self.store = Store(root)
        self.index = LRUIndex()
        self.entries: dict[bytes, Entry] = {}
        self.vary: dict[bytes, tuple[bytes, ...]] = {}
        # base key → its stored variant keys, oldest first (cdn.max_variants_per_uri)
        self.variants: dict[bytes, dict[bytes, None]] = {}
        self.fills: dict[bytes, Fill] = {}
        # Partial objects by key (farts/cdn/partial.py; in memory only: a restart forgets
        # them and sweeps their files); ``purges`` counts purges and invalidations, so a
        # range fill that saw one meanwhile does not store what it fetched.
        self.partials: dict[bytes, partial.Partial] = {}
        self.purges = 0
        self.tasks: set[asyncio.Task] = set()
        self.mem_used = 0
        self.open_fds = 0
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.max_open_fds = max(0, min(4096, soft // 4))  # the rest stays for sockets
        self.hits = self.misses = self.stale = self.coalesced = self.bytes_hit = self.evictions = 0
        self.stats = CDNStats(metrics, self)
        self._flusher = None  # the clock's Timer of the recency flush
        entries, self.vary = self.store.load()
        self.index.load((e.key, e.size) for e in entries)
        for e in entries:
            self.entries[e.key] = e
            base = base_of(e.key)
            if base != e.key:
                self.variants.setdefault(base, {})[e.key] = None
        self._evict()

    def start(self) -> None:
        self._flusher = self.clock.every(self.cfg.flush_interval, self._flush_tick)

    def _flush_tick(self, _now: float) -> None:
        keys = self.index.take_touched()
        if keys:
            self.store.touch(keys).add_done_callback(_log_failure)

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
        self.disk.shutdown(wait=False)
        await asyncio.get_running_loop().run_in_executor(None, self.store.close)

    def spawn(self, coro) -> None:
        t = asyncio.ensure_future(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    # -- entries ------------------------------------------------------------------------
    def install(self, entry: Entry, vary_base: bytes | None, names: tuple[bytes, ...]) -> None:
        if vary_base is not None:  # one more variant of a URI: within the bound
            stored = self.variants.setdefault(vary_base, {})
            drop = decide.variants_to_drop(list(stored), entry.key, self.cfg.max_variants_per_uri)
            if drop:
                for k in drop:
                    self.index.remove(k)
                self._drop(drop)
            stored = self.variants.setdefault(vary_base, {})
            stored.pop(entry.key, None)
            stored[entry.key] = None
        if entry.key in self.partials:  # (a whole object supersedes its parts)
            self.index.remove(PARTIAL + entry.key)
            self._drop([PARTIAL + entry.key])
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
            return FileBody(fd, 0, e.size, False)   # (owned: no, positional: a hit makes one)
        try:  # (an open is a metadata call: on the loop, like sendfile's setup)
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
        variants = self.variants
        for k in keys:
            if k[:1] == PARTIAL:
                p = self.partials.pop(k[1:], None)
                if p is not None:
                    files.append(p.file)
                continue
            e = self.entries.pop(k, None)
            if e is not None:
                self._release(e)
                files.append(e.file)
            if variants:
                base = base_of(k)
                stored = variants.get(base)
                if stored is not None:
                    stored.pop(k, None)
                    if not stored:
                        del variants[base]
        self.store.delete(keys, files)

    def invalidate(self, base: bytes) -> int:
        """Remove what is stored for one URI (its variants too), and keep fills of it in
        flight from being stored: an unsafe request changed it (RFC 9111 §4.4)."""
        keys = [k for k in self.entries if k == base or k.startswith(base + SEP)]
        if base in self.partials:
            keys.append(PARTIAL + base)
        self.purges += 1
        for k in keys:
            self.index.remove(k)
        self._drop(keys)
        for k, fill in self.fills.items():
            if k == base or k.startswith(base + SEP):
                fill.purged = True
        self.vary.pop(base, None)
        return len(keys)

    def purge(self, prefix: bytes, exact: bool) -> int:
        """Remove every key starting with ``prefix`` (or equal to it, with its variants,
        when ``exact``); fills in progress for them are not stored."""
        def match(k: bytes) -> bool:
            if exact:
                return k == prefix or k.startswith(prefix + b"\0")
            return k.startswith(prefix)
        keys = [k for k in self.entries if match(k)] + [PARTIAL + k for k in self.partials if match(k)]
        self.purges += 1
        for k in keys:
            self.index.remove(k)
        self._drop(keys)
        n = len(keys)
        for k, fill in self.fills.items():
            if match(k):
                n += fill.storing()   # (whole, being stored: its client had it as stored)
                fill.purged = True
        self.stats.purged.inc((), n)
        return n


class CDNHandler:
    """The handler of one route of kind "cdn": carries out decide.py's decisions."""

    def __init__(self, cdn: CDN, origin, prefix: str) -> None:
        self.cdn = cdn
        self.origin = origin
        self.prefix_len = len(prefix.encode())
        self.memory_object_bytes = cdn.cfg.memory_object_bytes
        # The parts of base_key() that do not change per request, built once.
        self.tenant_part: dict[str, bytes] = {}
        self.scheme_part = {s: SEP + s.encode() + SEP for s in ("http", "https")}
        self.allowed: dict[int, tuple] = {}  # id(route) → (its methods, its 405)
        if cdn.cfg.request_cache_control == "honor":
            self.handle = self.handle_honoring

    def handle(self, req: Request):
        method = req.method
        if method != b"GET" and method != b"HEAD":
            return self.other_method(req)
        target = req.target
        if target[:1] != b"/":  # absolute-form: keep path and query only
            query = req.query
            target = req.path + (b"?" + query if query else b"")
        tenant = req.tenant
        tenant = tenant.id if tenant is not None else "-"
        part = self.tenant_part.get(tenant)
        if part is None:
            part = self.tenant_part[tenant] = tenant.encode() + SEP
        base = _join((part, target, self.scheme_part[req.scheme], req.host))  # = base_key(...)
        cdn = self.cdn
        header = req.header
        names = cdn.vary.get(base)
        key = variant_key(base, names, header) if names else base
        now = cdn.clock.wall()  # the one read of the time for this request
        e = cdn.entries.get(key)
        # The hit path, in this call (no task).  (A fill in flight does not change a HIT.)
        # decide.on_request answers HIT exactly when the entry is fresh; the test is made
        # here without the call (a measured share of a hit; test_cdn_decide pins the rule).
        if e is not None and now < e.fresh_until:
            # No field that could make the answer more than the object: its ready Fixed.
            if (header(b"range") is None and header(b"if-none-match") is None
                    and header(b"if-modified-since") is None):
                fixed = e.fixed
                if fixed is not None and now < e.fixed_until:  # (its Age is right)
                    cdn.hits += 1
                    cdn.index.touch(key)
                    cdn.bytes_hit += e.size
                    return fixed
                answer = self.whole(e, now, b"HIT")
            else:
                answer = self.serve(e, req.headers, now, b"HIT")
            if answer is not None and answer is not LOAD:
                cdn.hits += 1
                cdn.index.touch(key)
                return answer
            if answer is None:  # its file has gone: as if nothing were stored
                return self.slow(req, target, key, base, now, e)
        return self.slow(req, target, key, base, now, None)

    def handle_honoring(self, req: Request):
        """``handle`` when the cache honours a request's Cache-Control (RFC 9111 §5.2.1): a
        request with one goes the slow way, whose decision (decide.on_request) weighs it;
        the others take ``handle`` as they are."""
        method = req.method
        if req.header(b"cache-control") is None or (method != b"GET" and method != b"HEAD"):
            return CDNHandler.handle(self, req)
        target = req.target
        if target[:1] != b"/":
            query = req.query
            target = req.path + (b"?" + query if query else b"")
        tenant = req.tenant.id if req.tenant is not None else "-"
        base = base_key(tenant, target, req.scheme, req.host)
        names = self.cdn.vary.get(base)
        key = variant_key(base, names, req.header) if names else base
        return self.slow(req, target, key, base, self.cdn.clock.wall(), None,
                         policy.cache_control(req.headers))

    # -- methods other than GET and HEAD ----------------------------------------------------
    def other_method(self, req: Request):
        """A route's methods restrict; HEAD with GET restricted is answered here too (the
        hit path never restricts: a route's methods always include GET)."""
        allowed = self.allowed.get(id(req.route)) if req.route is not None else None
        if allowed is None:
            methods = tuple(m.encode() for m in getattr(req.route, "methods", ()))
            allow = b", ".join(dict.fromkeys((b"GET", b"HEAD", *methods)))
            allowed = (methods, Fixed(405, b"405 Method Not Allowed: this route answers "
                                      + allow + b"\n", headers=[(b"allow", allow)]))
            if req.route is not None:
                self.allowed[id(req.route)] = allowed
        action = decide.on_method(req.method, allowed[0])
        if action is decide.REFUSE:
            return allowed[1]
        return self.pass_on(req)

    async def pass_on(self, req: Request):
        """The request to the origin as it is (its body streamed; the route's body limit is
        the transport's), the origin's answer back, nothing stored; a non-error answer to
        an unsafe method invalidates what is stored (RFC 9111 §4.4)."""
        cdn = self.cdn
        method = req.method
        target = req.target
        if target[:1] != b"/":
            query = req.query
            target = req.path + (b"?" + query if query else b"")
        body = req.body
        length = req.content_length  # -1: chunked
        if body is None and length < 0:
            length = -2
        headers = policy.forward_headers(req.headers, req.client)
        cdn.stats.origin_requests.inc()
        try:
            resp = await self.origin.send(method, target[self.prefix_len:], headers, body, length,
                                          on_interim=getattr(req, "send_interim", None))
        except OriginError as err:
            cdn.stats.origin_errors.inc((err.status,))
            return Fixed.error(err.status, err.reason)
        tenant = req.tenant.id if req.tenant is not None else "-"
        for t in decide.invalidated(method, resp.status, resp.headers, req.scheme, req.host, target):
            cdn.invalidate(base_key(tenant, t, req.scheme, req.host))
        no_body = resp.status in (204, 304) or 100 <= resp.status < 200
        return Response(resp.status, [*policy.response_headers(resp.headers), (b"x-cache", b"PASS")],
                        _nothing() if no_body else resp.body, resp.content_length, head_only=no_body)

    # -- answers from an entry --------------------------------------------------------------
    def whole(self, e: Entry, now: float, state: bytes):
        """The whole object: a ready response from memory, or the file; LOAD when a small
        object must first be read into memory (off the loop: ``load``); None if the
        file has gone (purged or evicted under us)."""
        cdn = self.cdn
        if e.size <= self.memory_object_bytes and (
                e.body is not None or cdn.mem_used + e.size <= cdn.cfg.memory_capacity_bytes):
            if e.body is None:
                return LOAD
            return self.fixed(e, e.body, now, state)
        body = cdn.file_of(e)
        if body is None:
            return None
        cdn.bytes_hit += e.size
        headers = self.hit_headers(e, now) if state == b"HIT" else self.headers(e, now, state)
        return Response(e.status, headers, body, e.size)

    def fixed(self, e: Entry, body: bytes, now: float, state: bytes) -> Fixed:
        ctype = b"application/octet-stream"
        hs = []
        for k, v in e.headers:
            if k == b"content-type":
                ctype = v
            else:
                hs.append((k, v))
        age = now - e.response_time + e.initial_age
        hs.append((b"age", str(int(age)).encode()))
        hs.append((b"x-cache", state))
        fixed = Fixed(e.status, body, ctype, hs)
        if state == b"HIT" and e.body is body:  # kept until the Age it carries changes
            e.fixed, e.fixed_until = fixed, now + 1 - age % 1
        self.cdn.bytes_hit += e.size
        return fixed

    async def load(self, e: Entry, now: float, state: bytes):
        """A small object's answer, its file read into memory in the disk pool."""
        cdn = self.cdn
        body = await asyncio.get_running_loop().run_in_executor(
            cdn.disk, _read_file, cdn.store.path(e.file))
        if body is None:
            return None
        if e.body is None and cdn.entries.get(e.key) is e:  # still stored: keep it in memory
            e.body = body
            cdn.mem_used += len(body)
        return self.fixed(e, body, now, state)

    @staticmethod
    def hit_headers(e: Entry, now: float) -> tuple:
        """A hit's headers for the file tier, ready: a tuple (immutable, so the transport
        frames its head once per connection and reuses it), kept until the Age it carries
        changes, as the memory tier keeps its Fixed."""
        if now < e.hit_headers_until:
            return e.hit_headers
        age = now - e.response_time + e.initial_age
        hs = e.hit_headers = (*e.headers, (b"age", str(int(age)).encode()), (b"x-cache", b"HIT"))
        e.hit_headers_until = now + 1 - age % 1
        return hs

    def headers(self, e: Entry, now: float, state: bytes) -> list:
        return [*e.headers, (b"age", str(int(now - e.response_time + e.initial_age)).encode()),
                (b"x-cache", state)]

    def serve(self, e: Entry, headers: list, now: float, state: bytes):
        """An entry as the request asks for it: 304, 206/416 for a Range, or whole
        (LOAD or None as ``whole`` answers)."""
        shape = decide.shape(headers, e)
        if shape is decide.WHOLE:
            return self.whole(e, now, state)
        if shape is decide.NOT_MODIFIED:
            return not_modified(self.headers(e, now, state))
        if shape is decide.UNSATISFIABLE:
            return unsatisfiable(e.size)
        first, last = shape
        body = self.cdn.file_of(e)
        if body is None:
            return None
        n = body.count = last - first + 1
        body.offset = first
        self.cdn.bytes_hit += n
        return Response(206, [*self.headers(e, now, state), (
            b"content-range", f"bytes {first}-{last}/{e.size}".encode())], body, n)

    async def answer(self, e: Entry, headers: list, now: float, state: bytes):
        answer = self.serve(e, headers, now, state)
        if answer is LOAD:
            answer = await self.load(e, now, state)
        return answer

    # -- misses, stale entries ------------------------------------------------------------------
    async def slow(self, req: Request, target: bytes, key: bytes, base: bytes, now: float,
                   gone: Entry | None, rcc: dict | None = None):
        """Everything but a fresh hit from memory or a kept file; ``gone``: an entry whose
        file was found missing (treated as not stored); ``rcc``: the request's
        Cache-Control directives when honoured."""
        cdn = self.cdn
        headers = req.headers
        while True:
            e = cdn.entries.get(key)  # (this task starts later than handle(): look again)
            if e is gone:
                e = None
            action = on_request(e, now, key in cdn.fills, rcc)
            if action is ONLY_CACHED:
                return Fixed.error(504, "only-if-cached: nothing stored may answer")
            if req.method == b"HEAD":
                action = decide.for_head(action)
                if action is decide.HEAD_THROUGH:
                    return await self.head_through(req, target, e)
            if action is HIT or action is STALE or action is STALE_REFRESH:
                answer = await self.answer(e, headers, now, STATE[action])
                if answer is None:  # its file has gone
                    gone = e
                    continue
                if action is HIT:
                    cdn.hits += 1
                    cdn.index.touch(key)
                else:
                    cdn.stale += 1
                    if key not in cdn.fills:
                        self.start_fill(key, base, target, req, e)
                return answer
            if (action is decide.FILL and key == base and cdn.cfg.range_fill_min_bytes
                    and req.method == b"GET" and req.header(b"range") is not None
                    and req.header(b"if-range") is None):
                answer = await self.range_fill(req, target, key, now)
                if answer is not None:
                    return answer
            started = action is not JOIN
            if started:
                fill = self.start_fill(key, base, target, req, e)
                cdn.misses += 1
            else:
                fill = cdn.fills[key]
                cdn.coalesced += 1
            fill = await self.wait(fill)
            fill_variant = client_variant = b""
            if fill.names:
                fill_variant = variant_key(base, fill.names, fill.header)
                client_variant = variant_key(base, fill.names, req.header)
            head_only = req.method == b"HEAD"
            step = decide.after_fill(fill.error is not None, e, fill.at, fill.entry, fill.names,
                                     fill_variant, client_variant, fill.private, started, head_only,
                                     fill.status, fill.storing())
            if step is decide.AWAIT_ENTRY:  # stored in a moment: a HIT (or, purged, a fill)
                cdn.coalesced -= 1            # (counted as what it gets)
                fill.release()
                await fill.ended()
                key, gone, now = client_variant or key, None, cdn.clock.wall()
                continue
            if step is decide.OWN_FETCH:
                # An answer for one client (private, Set-Cookie) is never handed to another:
                # this one asks the origin itself.  (Other answers that are not stored, too
                # large or errors, are shared by the clients that waited for them.)
                fill.release()
                fill = await self.wait(self.start_fill(key, base, target, req, None, register=False))
                started = True
                step = decide.after_fill(fill.error is not None, None, fill.at, None, (),
                                         b"", b"", False, True, head_only, fill.status)
            if (step is decide.PASS or step is decide.PASS_HEAD) and decide.fill_not_modified(
                    headers, fill.status, fill.headers):
                fill.release()
                return not_modified([*fill.headers, (b"x-cache", b"MISS")])
            if step is decide.PASS:
                return Response(fill.status, [*(fill.own if started else fill.headers), (b"x-cache", b"MISS")],
                                FollowBody(fill, cdn.disk), fill.content_length)
            fill.release()
            if step is decide.PASS_HEAD:  # a head without a body
                return Response(fill.status, [*(fill.own if started else fill.headers), (b"x-cache", b"MISS")],
                                _nothing(), fill.content_length, head_only=True)
            if step is decide.OTHER_VARIANT:  # the answer varies: this client's variant
                key, gone = variant_key(base, fill.names, req.header), None
                continue
            if step is decide.SERVE_ENTRY:  # revalidated (304) or stored before we looked
                answer = await self.answer(fill.entry, headers, fill.at, b"REVALIDATED")
                return answer if answer is not None else Fixed.error(502, "cached object vanished")
            if step is decide.SERVE_STALE:
                answer = await self.answer(e, headers, fill.at, b"STALE")
                if answer is not None:
                    cdn.stale += 1
                    return answer
            return Fixed.error(fill.error.status, fill.error.reason)

    # -- partial content (RFC 9111 §3.3, §3.4) ----------------------------------------------
    def partial_answer(self, p: partial.Partial, fd: int, first: int, last: int, now: float,
                       state: bytes) -> Response:
        """Bytes first..last of a partial object's file (``fd``, closed by the transport)."""
        n = last - first + 1
        headers = [*p.headers, (b"age", str(int(now - p.response_time + p.initial_age)).encode()),
                   (b"x-cache", state), (b"content-range", f"bytes {first}-{last}/{p.length}".encode())]
        return Response(206, headers, FileBody(fd, first, n), n)

    async def range_fill(self, req: Request, target: bytes, key: bytes, now: float):
        """A Range request that found no whole object (cdn.range_fill_min_bytes set):
        answered from the stored partial object when it is fresh and holds the range,
        else the range (widened) is asked of the origin and its 206 stored, combined
        with the stored one when their strong validators match; None: fetch the whole
        object instead (the Range is not one byte range)."""
        cdn, cfg = self.cdn, self.cdn.cfg
        rng = req.header(b"range")
        p = cdn.partials.get(key)
        if p is not None and now < p.fresh_until:
            r = policy.byte_range(rng, p.length)
            if r == policy.UNSATISFIABLE:
                return unsatisfiable(p.length)
            if r is not None and partial.covers(p.spans, *r):
                try:
                    fd = os.open(cdn.store.path(p.file), os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    fd = -1
                if fd >= 0:
                    cdn.hits += 1
                    cdn.bytes_hit += r[1] - r[0] + 1
                    cdn.index.touch(PARTIAL + key)
                    cdn.stats.partial.inc(("served",))
                    return self.partial_answer(p, fd, *r, now, b"HIT")
        ask = partial.origin_range(rng, p.length if p is not None else None, cfg.range_fill_min_bytes)
        if ask is None:
            return None
        headers = [*decide.conditional_headers(policy.forward_headers(req.headers, req.client), None),
                   (b"range", ask)]
        purges = cdn.purges
        request_time = cdn.clock.wall()
        cdn.stats.origin_requests.inc()
        cdn.misses += 1
        try:
            resp = await self.origin.fetch(target[self.prefix_len:], headers,
                                           on_interim=getattr(req, "send_interim", None))
        except OriginError as err:
            cdn.stats.origin_errors.inc((err.status,))
            return Fixed.error(err.status, err.reason)
        response_time = cdn.clock.wall()
        stored = cdn.partials.get(key)
        verdict, span = partial.on_partial(stored, resp.status, resp.headers, resp.content_length,
                                           headers, cfg.negative_ttl)
        if verdict is partial.PASS:
            cdn.stats.partial.inc(("passed",))
            passed = [*policy.response_headers(resp.headers), (b"x-cache", b"MISS")]
            no_body = resp.status in (204, 304)
            got = partial.content_range(policy.header(resp.headers, b"content-range")) \
                if resp.status == 206 else None
            r = policy.byte_range(rng, got[2]) if got is not None else None
            if r is not None and r != policy.UNSATISFIABLE and got[0] <= r[0] <= r[1] <= got[1]:
                # (the client gets the range it asked for, not the widened one)
                passed = [h for h in passed if h[0] != b"content-range"]
                passed.append((b"content-range", f"bytes {r[0]}-{r[1]}/{got[2]}".encode()))
                return Response(206, passed, _slice(resp.body, r[0] - got[0], r[1] - got[0] + 1),
                                r[1] - r[0] + 1)
            return Response(resp.status, passed, _nothing() if no_body else resp.body,
                            resp.content_length, head_only=no_body)
        first, last, length = span
        name = stored.file if verdict is partial.COMBINE else cdn.store.new_name(key)
        opening = cdn.disk.submit(_open_partial, cdn.store.path(name), length)
        try:
            fd = await asyncio.wrap_future(opening)
        except asyncio.CancelledError:   # (the client went: the file it opens is closed)
            opening.add_done_callback(lambda f: f.exception() is None and os.close(f.result()))
            raise
        writing = None   # the last write in the disk pool: fd stays open until it is done

        def in_disk(fn, *args) -> asyncio.Future:
            nonlocal writing
            writing = cdn.disk.submit(fn, fd, *args)
            return asyncio.wrap_future(writing)
        try:
            offset = first
            async for chunk in resp.body:
                await in_disk(_write_at, chunk, offset)
                offset += len(chunk)
                cdn.stats.origin_bytes.inc((), len(chunk))
            if offset != last + 1:
                raise OriginError(502, "origin body shorter than its Content-Range")
            await in_disk(os.fsync)
        except BaseException as err:
            # (What it wrote of a combined part is not in its spans: never served.)
            if writing is not None:
                writing.add_done_callback(lambda _f: os.close(fd))
            else:
                os.close(fd)
            if verdict is partial.NEW:
                cdn.store.delete([], [name])
            if not isinstance(err, OriginError):
                raise
            cdn.stats.origin_errors.inc((err.status,))
            return Fixed.error(err.status, err.reason)
        headers_kept = partial.kept_headers(resp.headers)
        lifetime = policy.freshness_lifetime(200, resp.headers, response_time, cfg.negative_ttl)
        age = policy.initial_age(resp.headers, request_time, response_time)
        r = policy.byte_range(rng, length)
        if r is None or r == policy.UNSATISFIABLE or not first <= r[0] <= r[1] <= last:
            r = (first, last)   # (the origin chose another range: that one, as it said)
        current = cdn.partials.get(key)
        if cdn.purges != purges or (verdict is partial.COMBINE and current is not stored) or key in cdn.entries:
            # Purged or replaced meanwhile: this answer is for its client only (and its
            # file goes, unless what is stored now is in it).
            entry = cdn.entries.get(key)
            if (current is None or current.file != name) and (entry is None or entry.file != name):
                cdn.store.delete([], [name])
            p = partial.Partial(key, headers_kept, length, b"", [(first, last)], name, response_time,
                                lifetime, age)
            return self.partial_answer(p, fd, *r, response_time, b"MISS")
        spans = partial.merged(stored.spans if verdict is partial.COMBINE else [], first, last)
        p = partial.Partial(key, headers_kept, length, policy.header(resp.headers, b"etag"), spans, name,
                            response_time, lifetime, age)
        if current is not None and verdict is partial.NEW:   # another validator: the old goes
            cdn.index.remove(PARTIAL + key)
            cdn._drop([PARTIAL + key])
        cdn.stats.partial.inc(("combined" if verdict is partial.COMBINE else "stored",))
        if partial.complete(spans, length):   # every byte: a whole object (§3.4)
            cdn.partials.pop(key, None)
            cdn.index.remove(PARTIAL + key)
            cdn.stats.partial.inc(("completed",))
            cdn.install(Entry(key, 200, headers_kept, length, name, request_time, response_time,
                              lifetime, age, *policy.stale_windows(resp.headers)), None, ())
        else:
            cdn.partials[key] = p
            cdn.index.insert(PARTIAL + key, p.held)
            cdn._evict()
        return self.partial_answer(p, fd, *r, response_time, b"MISS")

    async def head_through(self, req: Request, target: bytes, stored: Entry | None):
        """A HEAD to the origin for a HEAD that found nothing fresh; a 200 whose validators
        match freshens the stored GET answer (RFC 9111 §4.3.5)."""
        cdn, cfg = self.cdn, self.cdn.cfg
        headers = decide.conditional_headers(policy.forward_headers(req.headers, req.client), None)
        request_time = cdn.clock.wall()
        cdn.stats.origin_requests.inc()
        cdn.misses += 1
        try:
            resp = await self.origin.fetch(target[self.prefix_len:], headers, head_only=True)
        except OriginError as err:
            cdn.stats.origin_errors.inc((err.status,))
            return Fixed.error(err.status, err.reason)
        response_time = cdn.clock.wall()
        async for _ in resp.body:  # (none: the iterator ends at once)
            pass
        fresh = decide.on_head(stored, resp.status, resp.headers, resp.content_length,
                               request_time, response_time, cfg.negative_ttl)
        if fresh is not None and cdn.entries.get(stored.key) is stored:
            if fresh is decide.MAKE_STALE:  # (in memory: a restart keeps its old freshness)
                stored.fresh_until = min(stored.fresh_until, response_time)
                cdn.stats.revalidations.inc(("modified",))
            else:
                cdn.stats.revalidations.inc(("not_modified",))
                cdn.install(fresh, None, ())
        passed = [*policy.response_headers(resp.headers), (b"x-cache", b"MISS")]
        if decide.fill_not_modified(req.headers, resp.status, resp.headers):
            return not_modified(passed)
        return Response(resp.status, passed, _nothing(), resp.content_length, head_only=True)

    async def wait(self, fill: Fill) -> Fill:
        """Wait, as one more reader, until the fill has the origin's answer (or failed)."""
        fill.readers += 1
        try:
            await asyncio.shield(fill.head_ready)
        except BaseException:
            fill.release()
            raise
        return fill

    def start_fill(self, key: bytes, base: bytes, target: bytes, req: Request,
                   stale: Entry | None, register: bool = True) -> Fill:
        fields = req.headers
        fill = Fill(key, base, fields)
        # The origin's 1xx answers (103 Early Hints) go to the client whose miss started
        # the fill, if it still waits (the connection checks); never stored.
        fill.interim = getattr(req, "send_interim", None)
        if register:
            self.cdn.fills[key] = fill
        headers = decide.conditional_headers(policy.forward_headers(fields, req.client), stale)
        self.cdn.spawn(self.run_fill(fill, target[self.prefix_len:], headers, stale))
        return fill

    async def run_fill(self, fill: Fill, rest: bytes, req_headers: list, stale: Entry | None) -> None:
        cdn = self.cdn
        try:
            await self._fetch(fill, rest, req_headers, stale)
        except OriginError as err:
            cdn.stats.origin_errors.inc((err.status,))
            log.warning("origin fetch of %r failed: %s", rest[:200], err.reason)
            self._failed(fill, err)
        except Exception:
            log.exception("CDN fill of %r failed", rest[:200])
            self._failed(fill, OriginError(502, "internal error"))
        finally:
            if cdn.fills.get(fill.key) is fill:
                del cdn.fills[fill.key]
            if fill.tmp:
                try:
                    os.unlink(fill.tmp)  # still there: not stored (a metadata call)
                except FileNotFoundError:
                    pass
            fill.done = True
            fill.answered()
            fill.wake()
            fill._close_if_unused()

    def _failed(self, fill: Fill, err: OriginError) -> None:
        if not fill.head_ready.done():
            fill.error = err
            if not fill.at:
                fill.at = self.cdn.clock.wall()
        fill.failed = True

    async def _fetch(self, fill: Fill, rest: bytes, req_headers: list, stale: Entry | None) -> None:
        cdn, cfg = self.cdn, self.cdn.cfg
        request_time = cdn.clock.wall()
        cdn.stats.origin_requests.inc()
        resp = await self.origin.fetch(rest, req_headers, on_interim=fill.interim)
        response_time = fill.at = cdn.clock.wall()
        status = resp.status
        verdict = decide.on_origin(fill.key, status, resp.headers, resp.content_length, stale,
                                   req_headers, request_time, response_time, cfg.negative_ttl,
                                   cfg.max_object_bytes)
        if not isinstance(verdict, decide.Take):
            async for _ in resp.body:  # (read to the end: that also closes the connection)
                pass
            if verdict is decide.REFETCH:  # (without a stale entry: never twice)
                plain = [h for h in req_headers if h[0] not in decide.CLIENT_CONDITIONALS]
                return await self._fetch(fill, rest, plain, None)
            if isinstance(verdict, decide.UseStale):  # stale-if-error (RFC 5861)
                raise OriginError(status, f"origin answered {status}")
            cdn.stats.revalidations.inc(("not_modified",))
            if not fill.purged and cdn.entries.get(fill.key) is stale:
                cdn.install(verdict.entry, None, ())
            fill.entry = verdict.entry
            return
        if stale is not None:
            cdn.stats.revalidations.inc(("modified",))
        cacheable = verdict.cacheable
        fill.names = verdict.names
        fill.cacheable = cacheable
        fill.private = verdict.private
        fill.status = status
        fill.headers = verdict.headers
        fill.own = verdict.own
        fill.content_length = resp.content_length
        fill.fd, fill.tmp = cdn.store.temp_file()  # (open of a new file: a metadata call)
        fill.answered()
        small = [] if cacheable and 0 <= resp.content_length <= self.memory_object_bytes else None
        async for chunk in resp.body:
            await fill.in_pool(cdn.disk, _write_all, chunk)
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
            await fill.in_pool(cdn.store.worker, cdn.store.settle, tmp, name)
        except OSError:
            fill.tmp = tmp
            raise
        if fill.purged:
            cdn.store.delete([], [name])
            return
        store_key = variant_key(fill.base, fill.names, fill.header) if fill.names else fill.key
        entry = Entry(store_key, status, fill.headers, fill.written, name, request_time, response_time,
                      verdict.lifetime, verdict.initial_age, *verdict.windows)
        if small is not None and cdn.mem_used + fill.written <= cfg.memory_capacity_bytes:
            entry.body = b"".join(small)
        if fill.names:
            cdn.vary[fill.base] = fill.names
        cdn.install(entry, fill.base if fill.names else None, fill.names)
