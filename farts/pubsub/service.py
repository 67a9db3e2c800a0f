"""The pub/sub service: the HTTP endpoints, the publish API and the mesh's entry points.

Routes of kind "pubsub" lead here; the path picks the endpoint:

    GET  /live                 WebSocket subscriber (websocket.py)
    GET  /live/sse?channel=..  event stream subscriber (sse.py)
    POST /api/publish          {"channel","data"} or {"messages":[...]}, Bearer API key
    GET  /api/presence?channel=..   subscriber count on this node, Bearer API key

Where the rest is:

- commands.py: the WebSocket command protocol, sans-IO (JSON command in, action out);
- channels.py: the channel registry (fanout subscriptions, connections) and the one
  encoding of each event per transport; history.py: recent events and resume cursors;
- websocket.py, sse.py: the two transports, StreamHandlers on the HTTP transport's
  ``Upgrade`` (they never build an HTTP head nor look at the HTTP version).

Subscribers get their tenant from the Host they reached, publishers from their API key.
Server pings, SSE heartbeats, dead-peer checks and history expiry run every
``ping_interval`` on the injected clock (``clock.every``).
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from time import perf_counter
from urllib.parse import parse_qs

from farts.clock import Clock, Timer
from farts.config import Tenant
from farts.metrics import Metrics
from farts.pubsub.config import PubSubConfig
from farts.transport.http import EVENTS, STREAM, Fixed, Request, Response, Upgrade
from fast.fanout import Fanout, Subscriber
from fast.ws import encode_ping

from . import sse
from .auth import Denied, check_token
from .channels import Channels, channel_key
from .commands import Refuse, Reply, Subscribe, Unsubscribe, channel_problem, decide
from .fanout import send_ring
from .history import BadCursor, History, decode_cursor
from .websocket import WebSocketSubscriber, accept_headers, event_frame, handshake_problem

log = logging.getLogger("farts.pubsub")

JSON = [(b"content-type", b"application/json")]
# How long a resume whose cursor is ahead of this node's history waits for the events it
# names (relayed from the node process to a worker, or over the mesh) before it is
# answered with what is here ("not recovered").
RESUME_WAIT = 2.0


class PublishError(ValueError):
    pass


def _json_response(status: int, obj) -> Response:
    return Response(status, JSON, json.dumps(obj, separators=(",", ":")).encode() + b"\n")


class PubSub:
    def __init__(self, node_id: str, cfg: PubSubConfig, tenants: list[Tenant], metrics: Metrics,
                 clock: Clock) -> None:
        self.node_id = node_id
        self.cfg = cfg
        self.clock = clock
        self.tenants = {t.id: t for t in tenants}
        self.by_key = {k: t for t in tenants for k in t.api_keys}
        self.max_command_bytes = cfg.max_command_bytes
        self.history = History(node_id, cfg.history_size, cfg.history_seconds, clock)
        self.channels = Channels(self.history)
        self.fanout: Fanout | None = None
        self.now = clock.monotonic()   # as of the last tick: when a WebSocket client was heard
        self._ticker: Timer | None = None
        # Called with every event published on this node (the mesh forwards it).
        self.on_local_event: Callable[[dict], None] | None = None
        # Called with every event delivered here, in order: with worker processes
        # (farts/workers/), the node process relays them to its workers; in a restart
        # (farts/release/handover.py), the next process forwards them to the old one.
        self.on_delivered: list[Callable[[dict], None]] = []
        # In a worker: what POST /api/publish hands its messages to ((tenant id,
        # [(channel, data JSON)]) -> their ids), so that the node process numbers them.
        # Resumes ahead of the history: (subscriber, cursor, deadline, subscribe), and the
        # timer of the first deadline
        self.waiting: list[tuple[Subscriber, dict, float, Callable[[], None]]] = []
        self._waiting_timer: Timer | None = None
        self.forward_publish: Callable[[str, list], Awaitable[list[str]]] | None = None
        # ... and what /api/presence asks for the subscriber counts of every worker.
        self.count_everywhere: Callable[[list[str]], Awaitable[list[int]]] | None = None
        self._metrics(metrics)

    def _metrics(self, m: Metrics) -> None:
        ch = self.channels
        m.gauge("farts_pubsub_connections", "Open subscriber connections",
                lambda: {("websocket",): len(ch.websockets), ("sse",): len(ch.streams)}, ("transport",))
        m.gauge("farts_pubsub_subscriptions", "Channel subscriptions on this node",
                lambda: self.fanout.subscriptions() if self.fanout else 0)
        m.gauge("farts_pubsub_channels", "Channels with subscribers or history",
                lambda: len(self.history.channels))
        self.published = m.counter("farts_pubsub_events_published_total",
                                   "Events accepted, by where they were published", ("source",))
        deliveries = m.counter("farts_pubsub_deliveries_total", "Events queued to subscribers")
        deliveries.sources.append(lambda: {(): self.fanout.deliveries} if self.fanout else {})
        self.slow_drops = m.counter("farts_pubsub_slow_consumer_drops_total",
                                    "Subscribers disconnected for not reading", ("transport",))
        self.errors = m.counter("farts_pubsub_errors_total",
                                "Commands and frames refused, by reason", ("reason",))
        m.counter("farts_pubsub_flushes_total", "Fanout flushes (one write per queued subscriber)").sources.append(
            lambda: {(): self.fanout.flushes} if self.fanout else {})
        m.gauge("farts_pubsub_io_uring", "1 while the fanout sends through io_uring, 0 on send()",
                lambda: int(self.fanout is not None and self.fanout.ring is not None))
        m.counter("farts_pubsub_io_uring_failures_total",
                  "io_uring rings given up mid-flush (their subscribers reconnected)").sources.append(
            lambda: {(): self.fanout.ring_failures} if self.fanout else {})
        self.fanout_time = m.histogram("farts_pubsub_fanout_seconds",
                                       "Time to hand one event to all its local subscribers")

    # -- lifetime ------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.fanout = self.channels.fanout = Fanout(loop.call_soon, self._slow, self.cfg.max_buffer_bytes,
                                                    send_ring(self.cfg.io_uring))
        self.send, self.flush = self.fanout.send, self.fanout.flush
        self._ticker = self.clock.every(self.cfg.ping_interval, self._tick)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._waiting_timer is not None:
            self._waiting_timer.cancel()
        for sub in list(self.channels.websockets):
            sub.close(1001, "node shutting down")
        for sub in list(self.channels.streams):
            sub.close()
        if self.fanout is not None and self.fanout.ring is not None:
            # The closes above flush later: through send() once the ring is gone.
            ring, self.fanout.ring = self.fanout.ring, None
            ring.close()

    # -- a restart: handing over to the node's next process (farts/release/handover.py) -----
    def ask_to_reconnect(self, sub) -> None:
        """Tells one subscriber to come back (to the next process, on the same socket):
        WebSocket close 1012, SSE a reconnect event and the end of the stream. Either
        resumes with its last event id as cursor."""
        if sub.closing or sub.transport is None:
            return
        if sub.sse:
            self.send(sub, sse.RECONNECT)
            sub.close()
        else:
            sub.close(1012, "service restart: reconnect with your cursor")

    def snapshot(self) -> dict:
        """The history as the next process takes it over (History.snapshot)."""
        return self.history.snapshot()

    def restore(self, snap: dict) -> None:
        """Takes over the history of the process before this one (before any subscriber)."""
        self.history.restore(snap)

    def rename_origin(self, origin: str) -> None:
        """From now on this process stamps its events ``origin``: while it drains, the next
        process publishes as the node, and one origin's sequence must come from one place."""
        self.node_id = self.history.node_id = origin

    def _tick(self, now: float) -> None:
        """Server pings, SSE heartbeats, dead-peer checks and history expiry."""
        self.now = now
        interval = self.cfg.ping_interval
        ping = encode_ping(b"")
        for sub in list(self.channels.websockets):
            if now - sub.heard > 2 * interval:
                self.errors.inc(("no_pong",))
                sub.close(1001, "no answer to ping")
            else:
                self.send(sub, ping)
        for sub in list(self.channels.streams):
            self.send(sub, sse.HEARTBEAT)
        self.channels.sweep()

    # -- the HTTP handler -----------------------------------------------------------------
    def handle(self, req: Request):
        path = req.path
        if path == b"/live":
            return self._websocket(req)
        if path == b"/live/sse":
            return self._sse(req)
        if path == b"/api/publish":
            if req.method != b"POST":
                return Fixed.error(405, "use POST")
            return self._publish_request(req)
        if path == b"/api/presence":
            return self._presence(req)
        return Fixed.error(404)

    def _websocket(self, req: Request):
        if req.upgrade is None:
            return Response(426, [(b"upgrade", b"websocket"), (b"content-type", b"text/plain")],
                            b"426 Upgrade Required: this is a WebSocket endpoint\n")
        problem = handshake_problem(req)
        if problem is not None:
            status, reason = problem
            self.errors.inc(("handshake",))
            return Response(status, [(b"sec-websocket-version", b"13"), (b"content-type", b"text/plain")],
                            f"{status} {reason}\n".encode())
        return Upgrade(101, accept_headers(req), WebSocketSubscriber(self, req.tenant), STREAM)

    def _sse(self, req: Request):
        if req.method != b"GET":
            return Fixed.error(400, "event streams need GET over HTTP/1.1")
        query = parse_qs(req.query.decode("latin-1"))
        names = query.get("channel", [])
        if not names:
            return Fixed.error(400, "add ?channel=NAME (repeat for more)")
        if len(names) > self.cfg.max_subscriptions:
            return Fixed.error(400, "too many channels")
        since = query.get("since", [None])[0] or (req.header(b"last-event-id") or b"").decode("latin-1")
        cursor = None
        if since:
            try:
                cursor = decode_cursor(since)
            except BadCursor as e:
                return Fixed.error(400, str(e))
        token = query.get("token", [None])[0]
        for name in names:
            problem = channel_problem(name)
            if problem:
                return Fixed.error(400, problem)
            try:
                check_token(req.tenant.secret, token, name)
            except Denied as e:
                self.errors.inc(("auth",))
                return Fixed.error(e.code, e.reason)
        # Subscribed once the stream is open (opened), not before: an upgrade the
        # transport refuses leaves nothing registered.
        return Upgrade(200, sse.HEADERS, sse.SSESubscriber(self, req.tenant, names, cursor), EVENTS)

    # -- subscribers (called by the transports) -------------------------------------------
    def stream_opened(self, sub: sse.SSESubscriber, names: list[str], cursor: dict | None) -> None:
        self.channels.opened(sub)
        self._when_caught_up(sub, cursor, lambda: self._stream_subscribe(sub, names, cursor))

    def _stream_subscribe(self, sub: sse.SSESubscriber, names: list[str], cursor: dict | None) -> None:
        for name in names:
            events, recovered = self.channels.subscribe(sub, channel_key(sub.tenant.id, name), cursor)
            if cursor is not None and not recovered:
                self.send(sub, sse.comment_chunk(f"not recovered: {name}"))
            for ev in events:
                self.send(sub, sse.event_chunk(ev))

    def _slow(self, sub: Subscriber) -> None:
        self.slow_drops.inc(("sse" if sub.sse else "websocket",))
        log.warning("dropping a slow %s subscriber (over %d bytes unsent)",
                    "SSE" if sub.sse else "WebSocket", self.cfg.max_buffer_bytes)
        sub.drop_slow()

    def protocol_error(self, reason: str) -> None:
        self.errors.inc(("protocol",))
        log.info("WebSocket protocol error: %s", reason)

    def command(self, sub: WebSocketSubscriber, text: bytes) -> None:
        """Carries out what the command protocol decides for one command."""
        action = decide(text, sub.tenant.secret, len(sub.channels), self.cfg.max_subscriptions)
        t = type(action)
        if t is Subscribe:
            self._when_caught_up(sub, action.cursor, lambda: self._ws_subscribe(sub, action))
        elif t is Unsubscribe:
            if isinstance(action.channel, str):
                self.channels.unsubscribe(sub, channel_key(sub.tenant.id, action.channel))
            sub.send_message({"op": "unsubscribed", "channel": action.channel})
        elif t is Reply:
            sub.send_message(action.message)
        elif t is Refuse:
            self.errors.inc((action.metric,))
            sub.send_message(action.message())

    def _ws_subscribe(self, sub: WebSocketSubscriber, action: Subscribe) -> None:
        events, recovered = self.channels.subscribe(
            sub, channel_key(sub.tenant.id, action.channel), action.cursor)
        sub.send_message({"op": "subscribed", "channel": action.channel, "recovered": recovered})
        for ev in events:
            self.send(sub, event_frame(ev))

    # -- resumes ahead of the history ------------------------------------------------------
    # A cursor may name events this history has not received yet: the client saw them on
    # another worker (relayed here a moment later) or another node (the mesh). Subscribed
    # now, it would hear "not recovered" and then get the events it already has again, live;
    # so its subscription waits until they are here (or RESUME_WAIT), then replays what follows.
    def _when_caught_up(self, sub, cursor: dict | None, subscribe: Callable[[], None]) -> None:
        if not cursor or not self.history.behind(cursor):
            subscribe()
            return
        self.waiting.append((sub, cursor, self.clock.monotonic() + RESUME_WAIT, subscribe))
        self._resume_waiting()

    def _resume_waiting(self, timer: Timer | None = None) -> None:
        """Subscribes the waiting resumes whose events are here, or whose wait is over (one
        whose subscriber went away meanwhile is forgotten); after each delivered event, and
        at the first deadline."""
        if timer is not None and timer is self._waiting_timer:
            self._waiting_timer = None
        now = self.clock.monotonic()
        waiting, self.waiting = self.waiting, []
        for sub, cursor, deadline, subscribe in waiting:
            if sub.transport is None:
                continue
            if deadline <= now or not self.history.behind(cursor):
                subscribe()
            else:
                self.waiting.append((sub, cursor, deadline, subscribe))
        if self.waiting and self._waiting_timer is None:
            first = min(d for _, _, d, _ in self.waiting)
            self._waiting_timer = t = self.clock.call_at(first, lambda: self._resume_waiting(t))
        elif not self.waiting and self._waiting_timer is not None:
            self._waiting_timer.cancel()
            self._waiting_timer = None

    # -- publishing ------------------------------------------------------------------------
    def publish(self, tenant_id: str, channel: str, data) -> str:
        """Publishes one event from this node; returns its cursor."""
        return self.publish_json(tenant_id, channel, json.dumps(data, separators=(",", ":")))

    def publish_json(self, tenant_id: str, channel: str, data_json: str) -> str:
        problem = channel_problem(channel)
        if problem:
            raise PublishError(problem)
        seq = self.history.next_seq()
        event_id = self._deliver(tenant_id, channel, self.node_id, seq, data_json)
        self.published.inc(("local",))
        if self.on_local_event is not None:
            self.on_local_event({"tenant": tenant_id, "channel": channel, "origin": self.node_id,
                                 "seq": seq, "data": data_json})
        return event_id

    def apply_remote(self, event: dict) -> bool:
        """An event published on another node (from the mesh); False if seen already.

        ``event`` is what ``on_local_event`` got on its origin: tenant, channel, origin,
        seq, data (JSON text)."""
        try:
            tenant, channel, origin, seq, data = (event["tenant"], event["channel"], event["origin"],
                                                  int(event["seq"]), event["data"])
        except (KeyError, TypeError, ValueError):
            self.errors.inc(("bad_remote_event",))
            return False
        if tenant not in self.tenants or channel_problem(channel) or not isinstance(data, str):
            self.errors.inc(("bad_remote_event",))
            return False
        if not self.history.is_new(channel_key(tenant, channel), origin, seq):
            return False
        self._deliver(tenant, channel, origin, seq, data)
        self.published.inc(("remote",))
        return True

    def have(self) -> dict[str, int]:
        """Origin -> newest seq applied here: what a peer's catch-up starts after."""
        return dict(self.history.last_seq)

    def events_after(self, have: dict, limit: int = 2000) -> list[dict]:
        """The events held here that a peer with ``have`` lacks (for its catch-up)."""
        out = []
        for key, ev in self.history.after(have, limit):
            tenant, _, channel = key.partition("\0")
            data = json.dumps(json.loads(ev.message)["data"], separators=(",", ":"))
            out.append({"tenant": tenant, "channel": channel, "origin": ev.origin, "seq": ev.seq, "data": data})
        return out

    def gone_after(self, have: dict) -> dict[str, dict[str, int]]:
        """Per channel key, origin -> newest seq of the events a peer with ``have`` lacks
        and this node can no longer send (evicted, or missing here too)."""
        return self.history.gone_after(have)

    def mark_missing(self, gone: dict[str, dict[str, int]]) -> None:
        """What a peer's catch-up could no longer send: a resume from before it is answered
        "not recovered" here (a channel of a tenant this node does not have is skipped)."""
        self.history.mark_missing({key: origins for key, origins in gone.items()
                                   if key.partition("\0")[0] in self.tenants})

    def apply_relayed(self, event: dict) -> None:
        """In a worker: an event the node process applied (it checked, deduplicated and
        counted it), in the node's order."""
        self._deliver(event["tenant"], event["channel"], event["origin"], event["seq"], event["data"])

    def _deliver(self, tenant_id: str, channel: str, origin: str, seq: int, data_json: str) -> str:
        start = perf_counter()
        event_id = self.channels.deliver(channel_key(tenant_id, channel), channel, origin, seq, data_json)
        self.fanout_time.observe(perf_counter() - start)
        if self.on_delivered:
            event = {"tenant": tenant_id, "channel": channel, "origin": origin, "seq": seq, "data": data_json}
            for listener in self.on_delivered:
                listener(event)
        if self.waiting:
            self._resume_waiting()
        return event_id

    def _tenant_by_key(self, req: Request) -> Tenant | None:
        auth = req.header(b"authorization") or b""
        if auth[:7].lower() != b"bearer ":
            return None
        return self.by_key.get(auth[7:].strip().decode("latin-1"))

    async def _publish_request(self, req: Request) -> Response:
        tenant = self._tenant_by_key(req)
        if tenant is None:
            self.errors.inc(("auth",))
            return _json_response(401, {"error": "missing or unknown API key (Authorization: Bearer KEY)"})
        raw = await req.body.read() if req.body is not None else b""
        try:
            body = json.loads(raw)
        except ValueError:
            self.errors.inc(("bad_json",))
            return _json_response(400, {"error": "body is not JSON"})
        batch = isinstance(body, dict) and "messages" in body
        messages = body.get("messages") if batch else [body]
        if not isinstance(messages, list) or not messages or len(messages) > self.cfg.max_batch:
            return _json_response(400, {"error": f"messages must be a list of 1-{self.cfg.max_batch}"})
        for i, m in enumerate(messages):
            where = f"messages[{i}]" if batch else "body"
            if not isinstance(m, dict) or "data" not in m:
                return _json_response(400, {"error": f"{where}: expected {{\"channel\": ..., \"data\": ...}}"})
            problem = channel_problem(m.get("channel"))
            if problem:
                return _json_response(400, {"error": f"{where}.channel: {problem}"})
        if self.forward_publish is not None:
            ids = await self.forward_publish(tenant.id, [(m["channel"], json.dumps(m["data"], separators=(",", ":")))
                                                         for m in messages])
        else:
            ids = [self.publish(tenant.id, m["channel"], m["data"]) for m in messages]
        return _json_response(200, {"ids": ids} if batch else {"id": ids[0]})

    def _presence(self, req: Request) -> Response:
        tenant = self._tenant_by_key(req)
        if tenant is None:
            self.errors.inc(("auth",))
            return _json_response(401, {"error": "missing or unknown API key (Authorization: Bearer KEY)"})
        names = parse_qs(req.query.decode("latin-1")).get("channel", [])
        if not names:
            return _json_response(400, {"error": "add ?channel=NAME"})
        keys = [channel_key(tenant.id, n) for n in names]
        if self.count_everywhere is not None:
            return self._presence_everywhere(names, keys)
        return _presence_answer(names, [self.fanout.count(k) for k in keys])

    async def _presence_everywhere(self, names: list[str], keys: list[str]) -> Response:
        return _presence_answer(names, await self.count_everywhere(keys))


def _presence_answer(names: list[str], counts: list[int]) -> Response:
    return _json_response(200, {"channel": names[0], "subscribers": counts[0]}
                          if len(names) == 1 else {"channels": dict(zip(names, counts, strict=True))})
