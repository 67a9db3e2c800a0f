"""The webhooks service of a node: the asyncio side of the queue and the scheduler.

Every node takes enqueues (``POST /api/webhooks`` with a tenant API key, or a document
inserted into the MongoDB collection ``webhooks.collection``) into the replicated
queue. Only the node the master lease names delivers: ``set_master(epoch)`` makes this
node active (``epoch``: the lease's fencing token, carried on every write it makes to
the queue), ``set_master(None)`` stops it. While active it looks every ``scan_interval``
at what changed in the queue (the store's operation log; a full scan of its keys at the
start, when the log cannot say, and every FULL_SCAN_EVERY seconds at most), hands each
delivery to the ``Scheduler`` and runs the attempts it hands out, each a POST through
the node's pooled client, to the address checked against request forgery, signed with
the tenant's webhook secret. Outcomes are written back in batches (one write for all
that finished in one loop iteration).
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import zlib
from collections.abc import Callable

from farts.clock import Clock, Timer
from farts.config import Tenant
from farts.transport.client import BadResponse, Client, ConnectionLost, ReadTimeout
from farts.transport.http import Fixed, Request, Response

from . import queue, signing, ssrf
from .config import WebhooksConfig
from .delivery import DEAD, DELIVERED, FAIL, GONE, OK, REJECTED, RETRY, Delivery, Scheduler

log = logging.getLogger("farts.webhooks")

JSON = [(b"content-type", b"application/json")]
MAX_BATCH = 1000              # deliveries per POST /api/webhooks
MAX_ANSWER_BYTES = 65536      # of a receiver's answer read (the rest is not waited for)
SCAN_SHARE = 20               # full scans take at most 1/20 of the master's loop ...
FULL_SCAN_EVERY = 30.0        # ... and come at least this many seconds apart
CLAIM_BATCH = 5000            # documents claimed from one MongoDB collection per look (the rest next time)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DELAY_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 21600.0, 86400.0)


def _json(status: int, obj) -> Response:
    return Response(status, JSON, json.dumps(obj, separators=(",", ":")).encode() + b"\n")


class _Active:
    """What this node holds while it is the master: its epoch, the scheduler and the
    queue documents it knows (by store key and by id)."""

    def __init__(self, epoch: int, scheduler: Scheduler) -> None:
        self.epoch = epoch
        self.scheduler = scheduler
        self.known: dict[bytes, str] = {}
        self.docs: dict[str, dict] = {}
        self.scan_timer: Timer | None = None
        self.watch: queue.Watch | None = None   # the queue's changes, from the operation log
        self.next_full_scan = 0.0
        self.wake_timer: Timer | None = None
        self.wake_at: float | None = None
        self.claiming = False
        self.results: list[tuple] = []   # outcomes waiting for the next write


class Webhooks:
    def __init__(self, cfg: WebhooksConfig, tenants: list[Tenant], store: Callable[[], object], metrics,
                 clock: Clock, client: Client, on_commit: Callable[[], None] = lambda: None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.client = client
        self._store = store
        self.store = None
        self.on_commit = on_commit
        self.by_key = {k: t for t in tenants for k in t.api_keys}
        self.secrets = {t.id: (cfg.secrets.get(t.id) or t.secret).encode() for t in tenants}
        db, _, coll = cfg.collection.partition(".")
        # The MongoDB collection of each tenant (and of "" when the endpoint runs without
        # auth: that is the only tenant's, if there is one).
        self.sources = {f"{t.id}${db}.{coll}": t.id for t in tenants}
        if len(tenants) == 1:
            self.sources[f"${db}.{coll}"] = tenants[0].id
        self.policy = ssrf.Policy(cfg.allow_loopback, cfg.allow_private, cfg.allow_networks)
        self.proxies = [(h, int(p)) for h, _, p in (a.rpartition(":") for a in cfg.proxies)]
        self.active: _Active | None = None
        self.tasks: set[asyncio.Task] = set()
        self._dns: dict[str, tuple[float, str | ssrf.Refused]] = {}
        self._dests: dict[str, ssrf.Destination] = {}
        self._metrics(metrics)

    def _metrics(self, m) -> None:
        m.gauge("farts_webhooks_queued", "Deliveries in the queue and dead letters, as this node's replica has them",
                lambda: {(state,): n for state, n in queue.counts(self.store).items()} if self.store else {},
                ("state",))
        m.gauge("farts_webhooks_in_flight", "Delivery attempts under way",
                lambda: len(self.active.scheduler.in_flight) if self.active else 0)
        m.gauge("farts_webhooks_master_epoch", "The lease epoch this node delivers under (0: not master)",
                lambda: self.active.epoch if self.active else 0)
        self.enqueued = m.counter("farts_webhooks_enqueued_total", "Deliveries enqueued on this node, by way",
                                  ("source",))
        self.delivered = m.counter("farts_webhooks_delivered_total", "Deliveries the receiver took (2xx)")
        self.retried = m.counter("farts_webhooks_retried_total", "Failed attempts that will be retried, by reason",
                                 ("reason",))
        self.dead = m.counter("farts_webhooks_dead_lettered_total", "Deliveries dead-lettered, by reason",
                              ("reason",))
        self.refused = m.counter("farts_webhooks_refused_total", "Enqueue requests refused, by reason", ("reason",))
        self.scans = m.counter("farts_webhooks_queue_looks_total", "The master's looks at the queue for "
                               "changes: in the operation log, or (now and then, or when it cannot say) "
                               "full scans of every key", ("kind",))
        self.fenced = m.counter("farts_webhooks_fenced_total",
                                "Outcomes not written: a master with a higher epoch had written the delivery")
        self.attempt_seconds = m.histogram("farts_webhooks_attempt_seconds",
                                           "One delivery attempt: request sent to the receiver's answer",
                                           buckets=LATENCY_BUCKETS)
        self.delivery_seconds = m.histogram("farts_webhooks_delivery_seconds",
                                            "Enqueue to delivered (wall clock), retries included",
                                            buckets=DELAY_BUCKETS)

    # ---- life ----

    async def start(self) -> None:
        self.store = self._store()

    async def stop(self) -> None:
        self.set_master(None)
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def master_changed(self, active: bool, epoch: int) -> None:
        """The master lease's hook: fn(active, epoch)."""
        self.set_master(epoch if active else None)

    def set_master(self, epoch: int | None) -> None:
        a = self.active
        if epoch is None:
            if a is not None:
                log.info("webhooks: no longer the master (epoch %d): delivering stops", a.epoch)
                for t in (a.scan_timer, a.wake_timer):
                    if t is not None:
                        t.cancel()
                self.active = None
            return
        if a is not None:
            a.epoch = max(a.epoch, epoch)
            return
        c = self.cfg
        a = self.active = _Active(epoch, Scheduler(
            window=c.window, backoff_min=c.backoff_min, backoff_max=c.backoff_max, max_in_flight=c.max_in_flight,
            per_destination=c.per_destination, breaker_failures=c.breaker_failures,
            breaker_cooldown=c.breaker_cooldown))
        log.info("webhooks: master with epoch %d: delivering", epoch)
        a.scan_timer = self.clock.call_later(0.0, self._scan_tick, a)

    # ---- enqueue (any node) ----

    async def enqueue(self, tenant: str, items: list[dict], source: str = "api") -> list[str]:
        """Commits deliveries to the queue; raises queue.BadDelivery (nothing enqueued)."""
        if not self.secrets.get(tenant):
            raise queue.BadDelivery(f"tenant {tenant!r} has no webhook secret (webhooks.secrets or its secret)")
        now = self.clock.wall()
        docs = []
        for i, item in enumerate(items):
            where = f"deliveries[{i}]." if len(items) > 1 else ""
            if not isinstance(item, dict):
                raise queue.BadDelivery(f"{where[:-1] or 'body'}: expected {{\"url\", \"event\", \"payload\"}}")
            try:
                doc = queue.make(tenant, item.get("url"), item.get("event"), item.get("payload"), now,
                                 self.cfg.max_payload_bytes)
                self._literal_check(doc["url"])
            except (queue.BadDelivery, ssrf.Refused) as e:
                raise queue.BadDelivery(where + str(e)) from None
            docs.append(doc)
        await asyncio.wrap_future(self.store.submit(lambda w: queue.enqueue(w, docs)))
        self.on_commit()
        self.enqueued.inc((source,), len(docs))
        if self.active is not None:
            for doc in docs:
                self._add(self.active, self.store.key(queue.QUEUE_NS, doc["_id"]), doc)
            self._pump()
        return [d["_id"] for d in docs]

    def _literal_check(self, url: str) -> None:
        """An address in the URL is refused at once (a name is checked when resolved)."""
        dest = ssrf.parse_url(url)
        try:
            why = self.policy.problem(dest.host)
        except ValueError:
            return   # a name
        if why is not None:
            raise ssrf.Refused(f"url: {why}")

    # ---- the master's side ----

    def _scan_tick(self, a: _Active) -> None:
        """Each scan_interval: what the operation log says changed in the queue. A full scan
        (every key) when the log cannot say, and now and then as a safety net, never more
        often than keeps it under 1/SCAN_SHARE of the loop's time (a long backlog)."""
        if self.active is not a:
            return
        ids = a.watch.changed() if a.watch is not None else None
        now = self.clock.monotonic()
        if ids is None or now >= a.next_full_scan:
            if a.watch is None or ids is None:
                a.watch = queue.Watch(self.store, queue.QUEUE_NS)   # (positions from before the scan)
            started = time.perf_counter()
            self.scan()
            self.scans.inc(("full",))
            a.next_full_scan = now + max(FULL_SCAN_EVERY, SCAN_SHARE * (time.perf_counter() - started))
        else:
            self._looked_at(a, ids)
            self.scans.inc(("log",))
        a.scan_timer = self.clock.call_later(self.cfg.scan_interval, self._scan_tick, a)

    def _looked_at(self, a: _Active, ids: set) -> None:
        with self.store.read() as txn:
            for did in ids:
                key = self.store.key(queue.QUEUE_NS, did)
                doc = self.store.get(txn, queue.QUEUE_NS, did)
                if doc is not None and key not in a.known:
                    self._add(a, key, doc)
                elif doc is None and key in a.known:
                    self._forget(a, did)
        if not a.claiming:
            self._claim(a)
        self._pump()

    def scan(self) -> None:
        """Picks up what other nodes enqueued (and forgets what is gone from the queue)."""
        a = self.active
        if a is None or self.store is None:
            return
        new, gone = queue.scan(self.store, queue.QUEUE_NS, a.known)
        for k in gone:
            self._forget(a, a.known[k])
        for doc in new:
            self._add(a, self.store.key(queue.QUEUE_NS, doc["_id"]), doc)
        if not a.claiming:
            self._claim(a)
        self._pump()

    def _add(self, a: _Active, key: bytes, doc: dict) -> None:
        if key in a.known:
            return
        did = doc["_id"]
        a.known[key] = did
        a.docs[did] = {k: v for k, v in doc.items() if k != "body"}   # (the body is read when sent)
        try:
            dest = self._destination(doc["url"]).key
        except ssrf.Refused:
            dest = ""           # (its attempt finds the URL refused and dead-letters it)
        a.scheduler.add(Delivery(did, dest, float(doc.get("since", 0)), int(doc.get("attempts", 0)),
                                 float(doc.get("due", 0))))

    def _forget(self, a: _Active, did: str) -> None:
        """A delivery that left the queue (delivered, dead-lettered, or moved by another node)."""
        a.known.pop(self.store.key(queue.QUEUE_NS, did), None)
        a.docs.pop(did, None)
        a.scheduler.remove(did)

    def _destination(self, url: str) -> ssrf.Destination:
        dest = self._dests.get(url)
        if dest is None:
            dest = ssrf.parse_url(url)
            if len(self._dests) > 10000:
                self._dests.clear()
            self._dests[url] = dest
        return dest

    def _claim(self, a: _Active) -> None:
        work = []
        for ns, tenant in self.sources.items():
            ids = [d["_id"] for d in queue.first_docs(self.store, ns, CLAIM_BATCH)]
            if ids:
                work.append((ns, tenant, ids))
        if not work:
            return
        a.claiming = True
        now, limit = self.clock.wall(), self.cfg.max_payload_bytes

        def claim_all(w) -> int:
            return sum(len(queue.claim(w, ns, tenant, ids, now, limit)) for ns, tenant, ids in work)

        fut = asyncio.wrap_future(self.store.submit(claim_all))

        def claimed(f: asyncio.Future) -> None:
            a.claiming = False
            if f.exception() is not None:
                log.error("webhooks: claiming from the MongoDB collection failed: %s", f.exception())
                return
            self.on_commit()
            self.enqueued.inc(("mongodb",), f.result())   # (the next look finds them in the queue)
        fut.add_done_callback(claimed)

    def _pump(self) -> None:
        a = self.active
        if a is None:
            return
        now = self.clock.wall()
        for d in a.scheduler.take(now):
            task = asyncio.ensure_future(self._attempt(a, d))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        wake = a.scheduler.wakeup(now)
        if wake != a.wake_at:
            if a.wake_timer is not None:
                a.wake_timer.cancel()
            a.wake_at = wake
            a.wake_timer = None if wake is None else self.clock.call_later(wake - now, self._wake, a)

    def _wake(self, a: _Active) -> None:
        a.wake_at = a.wake_timer = None
        self._pump()

    async def _attempt(self, a: _Active, d: Delivery) -> None:
        doc = a.docs.get(d.id)
        with self.store.read() as txn:
            stored = self.store.get(txn, queue.QUEUE_NS, d.id) if doc is not None else None
        if stored is None or queue.fenced(stored, a.epoch):
            # delivered or moved by another node while it waited, or in the hands of a
            # master with a higher epoch: not sent
            self._forget(a, d.id)
            outcome, status, error, retry_after = GONE, 0, "not in the queue", None
        else:
            try:
                outcome, status, error, retry_after = await self._send(doc, stored["body"], d)
            except Exception as e:  # noqa: BLE001 - a bug: the attempt failed, its slot must come back
                log.exception("webhooks: attempt of %s failed", d.id)
                outcome, status, error, retry_after = FAIL, 0, f"internal error: {type(e).__name__}", None
        now = self.clock.wall()
        result, d = a.scheduler.finished(d.id, now, outcome, retry_after)
        fields = {"attempts": d.attempts, "status": status, "error": error}
        if result == DELIVERED:
            self.delivered.inc()
            if doc is not None:
                self.delivery_seconds.observe(max(0.0, now - float(doc.get("created", now))))
            a.results.append(("delivered", d.id))
        elif result == RETRY:
            self.retried.inc((_reason(status, error),))
            a.results.append(("retry", d.id, {**fields, "due": d.due}))
        elif result == DEAD:
            self.dead.inc(("gone" if status == 410 else "refused" if outcome == GONE else "window",))
            log.warning("webhooks: %s dead-lettered after %d attempts: %s", d.id, d.attempts,
                        error or f"HTTP {status}")
            a.results.append(("dead", d.id, fields))
        if len(a.results) == 1:
            asyncio.get_running_loop().call_soon(self._flush, a)
        self._pump()

    def _flush(self, a: _Active) -> None:
        results, a.results = a.results, []
        if not results:
            return
        fut = asyncio.wrap_future(self.store.submit(lambda w: queue.record(w, a.epoch, results)))

        def written(f: asyncio.Future) -> None:
            if f.exception() is not None:   # the outcomes stay unwritten: the deliveries stay queued
                log.error("webhooks: writing %d outcomes failed: %s", len(results), f.exception())
                return
            self.on_commit()
            for r, state in zip(results, f.result(), strict=True):
                if state == queue.FENCED:
                    self.fenced.inc()
                if r[0] != "retry" or state != queue.DONE:   # it left the queue: forget it
                    self._forget(a, r[1])
                elif r[1] in a.docs:
                    a.docs[r[1]].update(r[2])
        fut.add_done_callback(written)

    async def _send(self, doc: dict, body: bytes, d: Delivery) -> tuple[str, int, str, float | None]:
        """One attempt: (outcome, HTTP status or 0, error, Retry-After seconds)."""
        secret = self.secrets.get(doc["tenant"])
        if not secret:
            return GONE, 0, f"tenant {doc['tenant']!r} has no webhook secret any more", None
        try:
            dest = self._destination(doc["url"])
            address = await self._resolve(dest.host, dest.port)
        except ssrf.Refused as e:
            return GONE, 0, f"refused: {e}", None
        except OSError as e:
            return FAIL, 0, f"cannot resolve {dest.host}: {e}", None
        proxy = self.proxies[(zlib.crc32(d.id.encode()) + d.attempts) % len(self.proxies)] if self.proxies else None
        pool = self.client.pool(dest.scheme, dest.host, dest.port, address, proxy)
        host = f"[{dest.host}]" if ":" in dest.host else dest.host
        default_port = 443 if dest.scheme == "https" else 80
        headers = [(b"host", (host if dest.port == default_port else f"{host}:{dest.port}").encode()),
                   *signing.headers(secret, d.id, doc["event"], d.attempts, int(self.clock.wall()), body)]
        started = time.perf_counter()
        try:
            resp = await self.client.request(pool, b"POST", dest.target, headers, body=body, length=len(body),
                                             connect_timeout=self.cfg.connect_timeout,
                                             read_timeout=self.cfg.timeout, idempotent=True)
            if type(resp.body) is not bytes:
                await _drain(resp.body)
        except (OSError, TimeoutError, ConnectionLost, ReadTimeout, BadResponse) as e:
            self.attempt_seconds.observe(time.perf_counter() - started)
            return FAIL, 0, f"{type(e).__name__}: {e}"[:300], None
        self.attempt_seconds.observe(time.perf_counter() - started)
        status = resp.head.status
        if 200 <= status < 300:
            return OK, status, "", None
        retry_after = None
        if status in (429, 503):
            value = next((v for k, v in resp.head.headers if k == b"retry-after"), b"")
            retry_after = float(value) if value.isdigit() else None
        if status == 410:
            return GONE, status, "HTTP 410 Gone: the receiver wants no more", None
        if status in (408, 429) or status >= 500:
            return FAIL, status, f"HTTP {status}", retry_after
        return REJECTED, status, f"HTTP {status}", None

    async def _resolve(self, host: str, port: int) -> str:
        """The checked address of host (cached dns_cache_seconds); raises ssrf.Refused."""
        now = self.clock.monotonic()
        hit = self._dns.get(host)
        if hit is not None and hit[0] > now:
            if isinstance(hit[1], ssrf.Refused):
                raise hit[1]
            return hit[1]
        try:
            self.policy.problem(host)
            addresses = [host]                     # an address literal
        except ValueError:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = list(dict.fromkeys(i[4][0] for i in infos))
        try:
            result: str | ssrf.Refused = self.policy.check(host, addresses)
        except ssrf.Refused as e:
            result = e
        if len(self._dns) > 10000:
            self._dns.clear()
        self._dns[host] = (now + self.cfg.dns_cache_seconds, result)
        if isinstance(result, ssrf.Refused):
            raise result
        return result

    # ---- retry by hand, listing ----

    async def retry(self, delivery_id: str) -> str:
        now = self.clock.wall()
        state = await asyncio.wrap_future(self.store.submit(lambda w: queue.retry(w, delivery_id, now)))
        self.on_commit()
        return state

    def status(self) -> dict:
        a = self.active
        return {"master": a is not None, "epoch": a.epoch if a else None,
                "queued": len(a.scheduler) if a else None, "in_flight": len(a.scheduler.in_flight) if a else None,
                **queue.listing(self.store)}


async def _drain(body) -> None:
    n = 0
    async for piece in body:
        n += len(piece)
        if n > MAX_ANSWER_BYTES:
            await body.aclose()
            return


def _reason(status: int, error: str) -> str:
    if status:
        return f"http_{status // 100}xx"
    return "timeout" if "Timeout" in error else "connection"


class EnqueueHandler:
    """POST /api/webhooks (public listeners, any tenant host): ``Authorization: Bearer
    <tenant API key>``, a JSON body ``{"url", "event", "payload"}`` or ``{"deliveries":
    [...]}``; answers 202 with the delivery id(s) once committed to this node's store."""

    def __init__(self, hooks: Webhooks) -> None:
        self.hooks = hooks

    def handle(self, req: Request):
        if req.path.rstrip(b"/") != b"/api/webhooks":
            return Fixed.error(404)
        if req.method != b"POST":
            return Fixed.error(405, "use POST")
        return self._enqueue(req)

    async def _enqueue(self, req: Request) -> Response:
        hooks = self.hooks
        auth = req.header(b"authorization") or b""
        tenant = hooks.by_key.get(auth[7:].strip().decode("latin-1")) if auth[:7].lower() == b"bearer " else None
        if tenant is None:
            hooks.refused.inc(("auth",))
            return _json(401, {"error": "missing or unknown API key (Authorization: Bearer KEY)"})
        try:
            body = json.loads(await req.body.read() if req.body is not None else b"")
        except (ValueError, RecursionError):   # (RecursionError: nested deeper than the parser goes)
            hooks.refused.inc(("bad_json",))
            return _json(400, {"error": "body is not JSON"})
        batch = isinstance(body, dict) and "deliveries" in body
        items = body.get("deliveries") if batch else [body]
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            hooks.refused.inc(("bad_request",))
            return _json(400, {"error": f"deliveries: a list of 1-{MAX_BATCH}"})
        try:
            ids = await hooks.enqueue(tenant.id, items)
        except queue.BadDelivery as e:
            hooks.refused.inc(("bad_request",))
            log.info("webhooks: enqueue refused for tenant %s: %s", tenant.id, e)
            return _json(400, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - the store failed the commit: nothing was enqueued
            hooks.refused.inc(("store",))
            log.error("webhooks: enqueue for tenant %s not committed: %s", tenant.id, e)
            return _json(503, {"error": "the queue could not commit it; nothing was enqueued, try again"})
        return _json(202, {"ids": ids} if batch else {"id": ids[0]})


class AdminHandler:
    """GET /api/webhooks: this node's role and the queue (pending and dead letters);
    POST /api/webhooks/retry/ID: a dead letter back into the queue. ``allowed``: the
    admin listener's check of admin.token (the refusal, or None)."""

    def __init__(self, hooks: Webhooks, allowed: Callable[[Request], Fixed | None] = lambda req: None) -> None:
        self.hooks = hooks
        self.allowed = allowed

    def handle(self, req: Request):
        refusal = self.allowed(req)
        if refusal is not None:
            return refusal
        path = req.path.rstrip(b"/")
        if path.startswith(b"/api/webhooks/retry/"):
            if req.method != b"POST":
                return Fixed.error(405, "use POST")
            return self._retry(path[len(b"/api/webhooks/retry/"):].decode("latin-1"))
        if path != b"/api/webhooks":
            return Fixed.error(404)
        if req.method not in (b"GET", b"HEAD"):
            return Fixed.error(405)
        return Response(200, JSON, json.dumps(self.hooks.status(), indent=1, default=str).encode() + b"\n")

    async def _retry(self, delivery_id: str) -> Response:
        state = await self.hooks.retry(delivery_id)
        return _json(404 if state == "unknown" else 200, {"id": delivery_id, "state": state})
