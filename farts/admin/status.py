"""The status page's data: one sample of this node's metrics each ``admin.sample_interval``,
shared with every member through the mesh bus, kept per node in a ring buffer covering
``admin.history_seconds``, and pushed to the page's event streams.

A sample is read from the node's ``Metrics`` objects themselves (the dicts the hot paths
update, never the Prometheus text), so it costs the hot paths nothing: rates are deltas
of counters between two samples, p50/p99 come from the deltas of the request-latency
histogram over the last ``WINDOW`` samples (interpolated inside a bucket, as Prometheus'
``histogram_quantile`` does), slow requests per minute are the slow counter's increase
over the last minute. Requests to the admin listener itself (the page's own traffic) are
left out. Nothing here is a time-series database: the page gets the rings on connect and
the new samples as they come.
"""
from __future__ import annotations

import json
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from farts.clock import Clock, Timer
from farts.metrics import Counter, Gauge, Histogram, Metrics
from farts.peer import Envelope, PeerMessage, need
from farts.transport.http import frame

log = logging.getLogger("farts.admin")

WINDOW = 10          # samples the latency quantiles are taken over
MAX_ROUTES = 200     # (route, status class) rows in one sample
SLOW_SHARED = 5      # a node's newest slow requests in its sample (the page lists the cluster's)
MAX_SAMPLE_BYTES = 64 * 1024
STREAM_MAX_BUFFER = 4 * 1024 * 1024  # a page that does not read is dropped past this
# One point of a chart, in this order (the page reads the names from the hello event).
HISTORY_FIELDS = ("t", "rps", "p50_ms", "p99_ms", "slow_per_min", "connections", "deliveries_ps",
                  "dns_qps", "db_ops_ps", "cdn_hit_ratio")
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store"),
               (b"x-accel-buffering", b"no")]


@dataclass(frozen=True, slots=True)
class StatusSample(PeerMessage):
    """One node's sample for the status pages of its peers."""
    TYPE = "admin.sample"
    VERSION = 1
    value: dict

    @classmethod
    def parse(cls, body: Any) -> dict:
        need(cls, isinstance(body, dict), "a table")
        need(cls, isinstance(body.get("node"), str) and isinstance(body.get("t"), (int, float)),
             "node and t")
        need(cls, isinstance(body.get("routes", []), list) and len(body.get("routes", [])) <= MAX_ROUTES,
             f"routes: a list of at most {MAX_ROUTES}")
        for key in ("rps", "p50_ms", "p99_ms", "slow_per_min"):
            v = body.get(key)
            need(cls, v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                    and math.isfinite(v)), f"{key}: a number")
        need(cls, len(json.dumps(body, default=str)) <= MAX_SAMPLE_BYTES, "size")
        return body


def status_class(status) -> str:
    try:
        return f"{int(status) // 100}xx"
    except (TypeError, ValueError):
        return "other"


def quantile(q: float, bounds: tuple[float, ...], counts: list[float]) -> float | None:
    """The q-quantile of per-bucket counts (the last bucket is +Inf), linear inside a bucket."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    running = 0.0
    for i, n in enumerate(counts):
        if running + n >= rank and n > 0:
            if i >= len(bounds):            # in +Inf: the largest finite bound is all we know
                return bounds[-1]
            lo = bounds[i - 1] if i > 0 else 0.0
            return lo + (bounds[i] - lo) * (rank - running) / n
        running += n
    return bounds[-1]


class Reader:
    """What a sample reads of the node's metrics, by name (a metric a service did not
    register reads as absent: the page then shows the service as off)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def get(self, name: str):
        return self.metrics.get(name)

    def totals(self, name: str) -> dict[tuple, float] | None:
        m = self.get(name)
        if isinstance(m, Counter):
            return m.totals()
        if isinstance(m, Gauge):
            v = m.read()
            return v if isinstance(v, dict) else {(): v}
        return None

    def total(self, name: str, keep: Callable[[tuple], bool] = lambda k: True) -> float | None:
        t = self.totals(name)
        return None if t is None else float(sum(v for k, v in t.items() if keep(k)))

    def histogram(self, name: str, keep: Callable[[tuple], bool]) -> tuple[tuple, list[float]] | None:
        """(bounds, counts per bucket with +Inf last) summed over the kept series."""
        h = self.get(name)
        if not isinstance(h, Histogram):
            return None
        counts = [0.0] * (len(h.buckets) + 1)
        for key, s in h.series.items():
            if keep(key):
                for i in range(len(counts)):
                    counts[i] += s[i]
        return h.buckets, counts


def not_admin(key: tuple) -> bool:
    return not key or key[0] != "admin"


class Sampler:
    """Takes this node's samples and keeps every node's ring (see the module's doc)."""

    def __init__(self, node_id: str, region: str, version: str, lat: float, lon: float,
                 metrics: Metrics, clock: Clock, interval: float = 1.0, history: float = 900.0,
                 members: Callable[[], list[dict]] | None = None,
                 slow: Callable[[], list[dict]] | None = None) -> None:
        self.node_id, self.region, self.version, self.lat, self.lon = node_id, region, version, lat, lon
        self.read = Reader(metrics)
        self.clock = clock
        self.interval = interval
        self.points = max(2, int(history / interval))
        self.rings: dict[str, deque] = {}
        self.latest: dict[str, dict] = {}
        self.members = members or (lambda: [])
        self.slow = slow or (lambda: [])
        self.streams: set[EventStream] = set()
        self.bus = None
        self._timer: Timer | None = None
        self._prev: dict[str, Any] = {}
        self._prev_t: float | None = None
        self._lat_deltas: deque[list[float]] = deque(maxlen=WINDOW)
        self._slow_deltas: deque[tuple[float, float]] = deque()

    # ---- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        self._prev_t = self.clock.monotonic()
        self._snapshot_counters()
        self._timer = self.clock.every(self.interval, self.tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for s in list(self.streams):
            s.close()

    def peer(self, bus) -> Sampler:
        """The peer protocol: samples of other nodes come in, this node's go out."""
        self.bus = bus
        bus.subscribe(StatusSample, self._received)
        return self

    def _received(self, msg: StatusSample, env: Envelope) -> None:
        sample = msg.value
        if sample.get("node") != env.origin:
            return
        self.add(env.origin, sample)

    # ---- one sample -------------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        try:
            sample = self.take()
        except Exception:  # a bug in a sample must not stop the page (nor the node)
            log.exception("status sample failed")
            return
        self.add(self.node_id, sample)
        if self.bus is not None:
            self.bus.broadcast(StatusSample(sample))
        self.push()

    def _snapshot_counters(self) -> None:
        r = self.read
        self._prev = {
            "requests": r.totals("farts_http_requests_total") or {},
            "latency": r.histogram("farts_http_request_duration_seconds", not_admin),
            "slow": r.total("farts_http_slow_requests_total", not_admin) or 0.0,
            "deliveries": r.total("farts_pubsub_deliveries_total"),
            "published": r.total("farts_pubsub_events_published_total"),
            "cdn_hits": r.total("farts_cdn_hits_total"),
            "cdn_misses": r.total("farts_cdn_misses_total"),
            "dns": r.total("farts_dns_queries_total"),
            "dns_answers": r.totals("farts_dns_answers_total"),
            "db": r.total("farts_db_commands_total"),
        }

    def take(self) -> dict:
        now = self.clock.monotonic()
        dt = max(1e-6, now - (self._prev_t if self._prev_t is not None else now - self.interval))
        prev = self._prev
        self._snapshot_counters()
        cur = self._prev
        self._prev_t = now
        r = self.read

        def rate(key: str) -> float | None:
            if cur[key] is None:
                return None
            return round(max(0.0, cur[key] - (prev.get(key) or 0.0)) / dt, 3)

        routes: dict[tuple[str, str], float] = {}
        before = prev.get("requests") or {}
        for key, n in cur["requests"].items():
            if key[0] == "admin":
                continue
            d = n - before.get(key, 0)
            if d > 0:
                k = (key[1], status_class(key[2]))
                routes[k] = routes.get(k, 0.0) + d
        route_rows = sorted(([route, cls, round(n / dt, 3)] for (route, cls), n in routes.items()),
                            key=lambda row: -row[2])[:MAX_ROUTES]
        rps = round(sum(n for n in routes.values()) / dt, 3)

        p50 = p99 = None
        if cur["latency"] is not None:
            bounds, counts = cur["latency"]
            old = prev.get("latency")
            delta = [c - (old[1][i] if old else 0.0) for i, c in enumerate(counts)]
            self._lat_deltas.append(delta)
            window = [sum(d[i] for d in self._lat_deltas) for i in range(len(delta))]
            q50, q99 = quantile(0.5, bounds, window), quantile(0.99, bounds, window)
            p50 = None if q50 is None else round(q50 * 1000, 3)
            p99 = None if q99 is None else round(q99 * 1000, 3)

        self._slow_deltas.append((now, max(0.0, cur["slow"] - prev.get("slow", 0.0))))
        while self._slow_deltas and self._slow_deltas[0][0] <= now - 60:
            self._slow_deltas.popleft()
        slow_per_min = sum(d for _, d in self._slow_deltas)

        http_conns = r.totals("farts_http_connections_open") or {}
        conns = {k[0]: v for k, v in http_conns.items() if k and k[0] != "admin"}
        for name, key in (("farts_pubsub_connections", None), ("farts_db_connections", "db"),
                          ("farts_dns_tcp_connections_open", "dns_tcp"),
                          ("farts_mesh_connections_open", "mesh_in")):
            t = r.totals(name)
            if t is None:
                continue
            if key is None:   # pub/sub, by transport (websocket, sse)
                conns.update({k[0]: v for k, v in t.items() if k})
            else:
                conns[key] = sum(t.values())

        sample: dict[str, Any] = {
            "node": self.node_id, "region": self.region, "version": self.version,
            "lat": self.lat, "lon": self.lon, "t": round(self.clock.wall(), 3),
            "interval": self.interval, "rps": rps, "routes": route_rows, "p50_ms": p50, "p99_ms": p99,
            "slow_per_min": slow_per_min, "connections": conns,
        }
        if cur["deliveries"] is not None:
            sample["pubsub"] = {"channels": r.total("farts_pubsub_channels"),
                                "subscribers": r.total("farts_pubsub_subscriptions"),
                                "deliveries_ps": rate("deliveries"), "published_ps": rate("published")}
        if cur["cdn_hits"] is not None:
            hits = max(0.0, cur["cdn_hits"] - (prev.get("cdn_hits") or 0.0))
            misses = max(0.0, (cur["cdn_misses"] or 0.0) - (prev.get("cdn_misses") or 0.0))
            total_h, total_m = cur["cdn_hits"], cur["cdn_misses"] or 0.0
            sample["cdn"] = {"hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
                             "hit_ratio_all": round(total_h / (total_h + total_m), 4) if total_h + total_m else None,
                             "requests_ps": round((hits + misses) / dt, 3),
                             "disk_bytes": r.total("farts_cdn_disk_bytes")}
        if cur["dns"] is not None:
            answers: dict[str, float] = {}
            old = prev.get("dns_answers") or {}
            for key, n in (cur["dns_answers"] or {}).items():
                d = n - old.get(key, 0)
                if d > 0 and len(key) > 1:
                    answers[key[1]] = answers.get(key[1], 0.0) + d
            sample["dns"] = {"qps": rate("dns"), "answers_ps": {k: round(v / dt, 3) for k, v in answers.items()}}
        if cur["db"] is not None:
            sample["db"] = {"ops_ps": rate("db"), "store_bytes": r.total("farts_db_store_bytes")}
            lag = r.totals("farts_db_replication_lag_ms")   # (with replication on)
            if lag:
                sample["db"]["lag_ms"] = {k[0]: v for k, v in lag.items() if k}
        expiry = r.totals("farts_tls_certificate_expiry_timestamp_seconds")
        if expiry is not None:
            wall = self.clock.wall()
            sample["certs"] = {k[0]: round((v - wall) / 86400, 1) for k, v in expiry.items() if k}
        sample["slow_recent"] = self.slow()[:SLOW_SHARED]
        return sample

    # ---- every node's ring ------------------------------------------------------------
    def add(self, node: str, sample: dict) -> None:
        self.latest[node] = sample
        ring = self.rings.get(node)
        if ring is None:
            ring = self.rings[node] = deque(maxlen=self.points)
        ring.append(self.point(sample))

    @staticmethod
    def point(s: dict) -> list:
        conns = s.get("connections") or {}
        return [s.get("t"), s.get("rps"), s.get("p50_ms"), s.get("p99_ms"), s.get("slow_per_min"),
                sum(v for v in conns.values() if isinstance(v, (int, float))),
                (s.get("pubsub") or {}).get("deliveries_ps"), (s.get("dns") or {}).get("qps"),
                (s.get("db") or {}).get("ops_ps"), (s.get("cdn") or {}).get("hit_ratio")]

    # ---- what the page gets -----------------------------------------------------------
    def live(self) -> dict:
        rows = self.members()
        for row in rows:   # what the members' own samples say of them
            s = self.latest.get(row["id"]) or {}
            row["version"] = s.get("version")
            row["sample_age_s"] = round(self.clock.wall() - s["t"], 1) if "t" in s else None
            if row.get("lat") is None and "lat" in s:
                row["lat"], row["lon"] = s["lat"], s["lon"]
        return {"node": self.node_id, "t": round(self.clock.wall(), 3), "members": rows,
                "samples": self.latest, "slow": self.slow()[:20]}

    def versions(self) -> dict[str, str | None]:
        """node -> the release it runs, as its own latest sample says (each node's sample
        travels on the mesh bus every interval; a restarted node's new version shows with
        its first sample): /api/mesh's "versions", `farts-edge status`'s VERSION column."""
        return {self.node_id: self.version, **{n: s.get("version") for n, s in self.latest.items()
                                               if n != self.node_id}}

    def hello(self) -> dict:
        return {"node": self.node_id, "interval": self.interval, "fields": HISTORY_FIELDS,
                "history": {n: list(r) for n, r in self.rings.items()}, **self.live()}

    def push(self) -> None:
        if not self.streams:
            return
        data = event_bytes("tick", self.live())
        for s in list(self.streams):
            s.send(data)


def event_bytes(name: str, data: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class EventStream:
    """One page's event stream (a StreamHandler on the admin listener)."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.sink = None

    def opened(self, sink, rest: bytes) -> None:
        self.sink = sink
        self.sampler.streams.add(self)
        self.send(event_bytes("hello", self.sampler.hello()))

    def send(self, data: bytes) -> None:
        sink = self.sink
        if sink is None or sink.is_closing():
            return
        if sink.get_write_buffer_size() > STREAM_MAX_BUFFER:
            sink.abort()
            return
        sink.write(frame(sink.framing, data))

    def data_received(self, data: bytes) -> None:
        self.close()

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def close(self) -> None:
        if self.sink is not None and not self.sink.is_closing():
            self.sink.close()

    def closed(self, exc) -> None:
        self.sampler.streams.discard(self)
        self.sink = None


def member_rows(me: str, region: str, mesh_status: dict | None, members: list) -> list[dict]:
    """The members table the page shows: the mesh's view (state, incarnation, RTT, link)
    joined with the member map (coordinates, load); without a mesh, this node and the
    static node list of the config."""
    by_id = {m.id: m for m in members}
    rows = []
    if mesh_status is not None:
        for r in mesh_status["members"]:
            rows.append({k: r.get(k) for k in ("id", "region", "state", "incarnation", "rtt_ms",
                                                "last_heard_s", "link", "self")})
    else:
        rows.append({"id": me, "region": region, "state": "alive", "incarnation": 0, "rtt_ms": None,
                     "last_heard_s": 0.0, "link": None, "self": True})
        rows += [{"id": m.id, "region": m.region, "state": m.state, "incarnation": m.incarnation,
                  "rtt_ms": None, "last_heard_s": None, "link": None, "self": False}
                 for m in members if m.id != me]
    for row in rows:
        m = by_id.get(row["id"])
        row["lat"], row["lon"] = (m.lat, m.lon) if m is not None else (None, None)
        row["load"] = m.load if m is not None else None
    return rows


class CertExpiry:
    """{(certificate file stem,): notAfter as a Unix time} of a CertStore's directory, read
    again only when the store has reloaded (the gauge
    farts_tls_certificate_expiry_timestamp_seconds; the page shows days left)."""

    def __init__(self, certs) -> None:
        self.certs = certs
        self._cache: tuple[int, dict] = (-1, {})

    def __call__(self) -> dict:
        from cryptography import x509

        if self._cache[0] != self.certs.reloads:
            out = {}
            for path in sorted(self.certs.cert_dir.glob("*.crt")):
                try:
                    cert = x509.load_pem_x509_certificate(path.read_bytes())
                except (OSError, ValueError):
                    continue
                out[(path.stem,)] = cert.not_valid_after_utc.timestamp()
            self._cache = (self.certs.reloads, out)
        return self._cache[1]
