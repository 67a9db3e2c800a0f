"""The pub/sub service: subscribers, publishing, history, presence, metrics.

Routes of kind "pubsub" lead here; the path picks the endpoint:

    GET  /live                 WebSocket subscriber (websocket.py)
    GET  /live/sse?channel=..  event stream subscriber (sse.py)
    POST /api/publish          {"channel","data"} or {"messages":[...]}, Bearer API key
    GET  /api/presence?channel=..   subscriber count on this node, Bearer API key

Channels are keyed ``tenant id + "\\0" + name``: the same name in two tenants is two
channels. Subscribers get their tenant from the Host they reached, publishers from
their API key.

An event is encoded once per transport (a WebSocket frame, an SSE chunk) and handed to
the fanout (fast/fanout.pyx), which queues the same bytes for every subscriber and
writes once per connection at the end of the loop iteration.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from time import perf_counter
from urllib.parse import parse_qs

from farts.config import Tenant
from farts.metrics import Metrics
from farts.pubsub.config import PubSubConfig
from farts.transport.http import Fixed, Request, Response, Takeover
from fast.fanout import Fanout, Subscriber
from fast.ws import encode_ping, encode_text

from . import sse
from .auth import Denied, check_token
from .history import BadCursor, History, decode_cursor
from .websocket import WebSocketSubscriber, accept_head, handshake_problem, reply

log = logging.getLogger("farts.pubsub")

MAX_CHANNEL_NAME = 200
JSON = [(b"content-type", b"application/json")]


class PublishError(ValueError):
    pass


def _json_response(status: int, obj) -> Response:
    return Response(status, JSON, json.dumps(obj, separators=(",", ":")).encode() + b"\n")


def _channel_problem(name) -> str | None:
    if not isinstance(name, str) or not name:
        return "channel must be a non-empty string"
    if len(name) > MAX_CHANNEL_NAME:
        return f"channel name longer than {MAX_CHANNEL_NAME}"
    if any(c in name for c in "\0\r\n"):
        return "channel name has control characters"
    return None


class PubSub:
    def __init__(self, node_id: str, cfg: PubSubConfig, tenants: list[Tenant], metrics: Metrics) -> None:
        self.node_id = node_id
        self.cfg = cfg
        self.tenants = {t.id: t for t in tenants}
        self.by_key = {k: t for t in tenants for k in t.api_keys}
        self.max_command_bytes = cfg.max_command_bytes
        self.history = History(node_id, cfg.history_size, cfg.history_seconds)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.fanout: Fanout | None = None
        self.ws: set[WebSocketSubscriber] = set()
        self.sse: set[sse.SSESubscriber] = set()
        self.now = time.monotonic()
        self._ticker: asyncio.Task | None = None
        # Called with every event published on this node (the mesh forwards it).
        self.on_local_event: Callable[[dict], None] | None = None
        self._metrics(metrics)

    def _metrics(self, m: Metrics) -> None:
        m.gauge("farts_pubsub_connections", "Open subscriber connections",
                lambda: {("websocket",): len(self.ws), ("sse",): len(self.sse)}, ("transport",))
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
        self.fanout_time = m.histogram("farts_pubsub_fanout_seconds",
                                       "Time to hand one event to all its local subscribers")

    # -- lifetime ------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.fanout = Fanout(self.loop.call_soon, self._slow, self.cfg.max_buffer_bytes)
        self._ticker = asyncio.ensure_future(self._tick())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for sub in list(self.ws):
            sub.close(1001, "node shutting down")
        for sub in list(self.sse):
            sub.close()

    async def _tick(self) -> None:
        """Server pings, SSE heartbeats, dead-peer checks and history expiry."""
        interval = self.cfg.ping_interval
        while True:
            await asyncio.sleep(interval)
            self.now = now = time.monotonic()
            ping = encode_ping(b"")
            for sub in list(self.ws):
                if now - sub.heard > 2 * interval:
                    self.errors.inc(("no_pong",))
                    sub.close(1001, "no answer to ping")
                else:
                    self.fanout.send(sub, ping)
            for sub in list(self.sse):
                self.fanout.send(sub, sse.HEARTBEAT)
            self.history.sweep(self.fanout.has)

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
        if req.head.upgrade is None:
            return Response(426, [(b"upgrade", b"websocket"), (b"content-type", b"text/plain")],
                            b"426 Upgrade Required: this is a WebSocket endpoint\n")
        problem = handshake_problem(req.head)
        if problem is not None:
            status, reason = problem
            self.errors.inc(("handshake",))
            return Response(status, [(b"sec-websocket-version", b"13"), (b"content-type", b"text/plain")],
                            f"{status} {reason}\n".encode())
        return Takeover(101, accept_head(req.head), WebSocketSubscriber(self, req.tenant))

    def _sse(self, req: Request):
        if req.method != b"GET" or req.head.version != 11:
            return Fixed.error(400, "event streams need GET over HTTP/1.1")
        query = parse_qs(req.head.query.decode("latin-1"))
        names = query.get("channel", [])
        if not names:
            return Fixed.error(400, "add ?channel=NAME (repeat for more)")
        if len(names) > self.cfg.max_subscriptions:
            return Fixed.error(400, "too many channels")
        since = query.get("since", [None])[0] or (req.head.header(b"last-event-id") or b"").decode("latin-1")
        cursor = None
        if since:
            try:
                cursor = decode_cursor(since)
            except BadCursor as e:
                return Fixed.error(400, str(e))
        token = query.get("token", [None])[0]
        for name in names:
            problem = _channel_problem(name)
            if problem:
                return Fixed.error(400, problem)
            try:
                check_token(req.tenant.secret, token, name)
            except Denied as e:
                self.errors.inc(("auth",))
                return Fixed.error(e.code, e.reason)
        # Subscribed once the connection is handed over (taken_over), not before: a
        # takeover the transport refuses leaves nothing registered.
        return Takeover(200, sse.HEAD, sse.SSESubscriber(self, req.tenant, names, cursor))

    # -- subscriber lifetime (called by the protocols) ----------------------------------
    def opened(self, sub) -> None:
        (self.sse if sub.sse else self.ws).add(sub)

    def sse_opened(self, sub: sse.SSESubscriber, names: list[str], cursor: dict | None) -> None:
        self.sse.add(sub)
        for name in names:
            self._subscribe(sub, name, cursor)

    def closed(self, sub) -> None:
        (self.sse if sub.sse else self.ws).discard(sub)
        for key in sub.channels:
            self.fanout.unsubscribe(key, sub)
        sub.channels = []

    def _slow(self, sub: Subscriber) -> None:
        self.slow_drops.inc(("sse" if sub.sse else "websocket",))
        log.warning("dropping a slow %s subscriber (over %d bytes unsent)",
                    "SSE" if sub.sse else "WebSocket", self.cfg.max_buffer_bytes)
        sub.drop_slow()

    def protocol_error(self, reason: str) -> None:
        self.errors.inc(("protocol",))
        log.info("WebSocket protocol error: %s", reason)

    # -- commands --------------------------------------------------------------------------
    def command(self, sub: WebSocketSubscriber, text: bytes) -> None:
        try:
            cmd = json.loads(text)
        except ValueError:
            self.errors.inc(("bad_json",))
            sub.error(400, "command is not JSON")
            return
        if not isinstance(cmd, dict):
            self.errors.inc(("bad_command",))
            sub.error(400, "command must be a JSON object")
            return
        op = cmd.get("op")
        if op == "subscribe":
            self._subscribe_command(sub, cmd)
        elif op == "unsubscribe":
            name = cmd.get("channel")
            key = f"{sub.tenant.id}\0{name}"
            if isinstance(name, str) and key in sub.channels:
                sub.channels.remove(key)
                self.fanout.unsubscribe(key, sub)
            self.fanout.send(sub, reply({"op": "unsubscribed", "channel": name}))
        elif op == "ping":
            self.fanout.send(sub, reply({"op": "pong"}))
        else:
            self.errors.inc(("unknown_op",))
            sub.error(400, f"unknown op {str(op)[:40]!r}")

    def _subscribe_command(self, sub: WebSocketSubscriber, cmd: dict) -> None:
        name = cmd.get("channel")
        problem = _channel_problem(name)
        if problem:
            self.errors.inc(("bad_command",))
            sub.error(400, problem, channel=name if isinstance(name, str) else None)
            return
        if len(sub.channels) >= self.cfg.max_subscriptions:
            self.errors.inc(("too_many",))
            sub.error(429, "too many subscriptions on this connection", channel=name)
            return
        try:
            check_token(sub.tenant.secret, cmd.get("token"), name)
        except Denied as e:
            self.errors.inc(("auth",))
            sub.error(e.code, e.reason, channel=name)
            return
        cursor = None
        since = cmd.get("since")
        if since is not None:
            try:
                if not isinstance(since, str):
                    raise BadCursor("since must be a string")
                cursor = decode_cursor(since)
            except BadCursor as e:
                self.errors.inc(("bad_command",))
                sub.error(400, str(e), channel=name)
                return
        self._subscribe(sub, name, cursor)

    def _subscribe(self, sub, name: str, cursor: dict | None) -> None:
        """Registers, replies (WebSocket) and replays what the cursor missed, in one go:
        no event can slip between the replay and the live stream."""
        key = f"{sub.tenant.id}\0{name}"
        self.history.channel(key)
        if self.fanout.subscribe(key, sub):
            sub.channels.append(key)
        events, recovered = self.history.since(key, cursor) if cursor else ([], False)
        if not sub.sse:
            self.fanout.send(sub, reply({"op": "subscribed", "channel": name, "recovered": recovered}))
            for ev in events:
                self.fanout.send(sub, encode_text(ev.message))
        else:
            if cursor is not None and not recovered:
                self.fanout.send(sub, sse.comment_chunk(f"not recovered: {name}"))
            for ev in events:
                self.fanout.send(sub, sse.event_chunk(ev.id, ev.message))

    # -- publishing ------------------------------------------------------------------------
    def publish(self, tenant_id: str, channel: str, data) -> str:
        """Publishes one event from this node; returns its cursor."""
        problem = _channel_problem(channel)
        if problem:
            raise PublishError(problem)
        data_json = json.dumps(data, separators=(",", ":"))
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
        if tenant not in self.tenants or _channel_problem(channel) or not isinstance(data, str):
            self.errors.inc(("bad_remote_event",))
            return False
        if not self.history.is_new(f"{tenant}\0{channel}", origin, seq):
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

    def _deliver(self, tenant_id: str, channel: str, origin: str, seq: int, data_json: str) -> str:
        start = perf_counter()
        key = f"{tenant_id}\0{channel}"
        prefix = '{"channel":' + json.dumps(channel) + ',"id":"'

        def message(event_id: str) -> bytes:
            return (prefix + event_id + '","data":' + data_json + "}").encode()

        ev = self.history.append(key, origin, seq, message)
        if self.fanout.has(key):
            self.fanout.publish(key, encode_text(ev.message),
                                sse.event_chunk(ev.id, ev.message) if self.sse else b"")
        self.fanout_time.observe(perf_counter() - start)
        return ev.id

    def _tenant_by_key(self, req: Request) -> Tenant | None:
        auth = req.head.header(b"authorization") or b""
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
            problem = _channel_problem(m.get("channel"))
            if problem:
                return _json_response(400, {"error": f"{where}.channel: {problem}"})
        ids = [self.publish(tenant.id, m["channel"], m["data"]) for m in messages]
        return _json_response(200, {"ids": ids} if batch else {"id": ids[0]})

    def _presence(self, req: Request) -> Response:
        tenant = self._tenant_by_key(req)
        if tenant is None:
            self.errors.inc(("auth",))
            return _json_response(401, {"error": "missing or unknown API key (Authorization: Bearer KEY)"})
        names = parse_qs(req.head.query.decode("latin-1")).get("channel", [])
        if not names:
            return _json_response(400, {"error": "add ?channel=NAME"})
        counts = {n: self.fanout.count(f"{tenant.id}\0{n}") for n in names}
        return _json_response(200, {"channel": names[0], "subscribers": counts[names[0]]}
                              if len(names) == 1 else {"channels": counts})
