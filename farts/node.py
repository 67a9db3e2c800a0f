"""The composition root: builds the services of one node and wires them together.

Services never import each other; what one needs of another is handed over here as
a plain object or function.
"""
from __future__ import annotations

import asyncio
import logging
import time

from farts import __version__
from farts.admin import AdminHandler
from farts.cdn import CDN, CDNHandler, PurgeHandler, make_origin
from farts.cdn import purge as cdn_purge
from farts.clock import LoopClock
from farts.config import Config, Route
from farts.members import Member, MemberMap
from farts.mesh import MeshService, MeshStatusHandler
from farts.metrics import Metrics
from farts.proxy import ProxyHandler, ProxyStats
from farts.pubsub import PubSub
from farts.transport.http import Fixed
from farts.transport.listener import AccessLog, HTTPStats, Listener
from farts.transport.router import Router
from farts.transport.tls import CertStore

log = logging.getLogger("farts.node")


class Node:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.listeners: dict[str, Listener] = {}
        self.stats = HTTPStats(self.metrics, self.listeners)
        self.started_at = time.time()
        self.certs: CertStore | None = None
        self._tasks: list[asyncio.Task] = []
        self.admin = AdminHandler(self.metrics.render, self.status)
        proxy_stats = ProxyStats(self.metrics)
        self.upstreams = {name: ProxyHandler(name, up, cfg.node.id, proxy_stats)
                          for name, up in cfg.upstreams.items()}
        self.pubsub = PubSub(cfg.node.id, cfg.pubsub, cfg.tenants, self.metrics)
        # The live node map: the static list from [[dns.nodes]] until the mesh writes it.
        self.members = MemberMap([Member(n.id, n.region, n.lat, n.lon, tuple(n.addresses))
                                  for n in cfg.dns.nodes])
        self.dns = None
        self.db = None
        # The mesh writes the member map (this node included) once it runs.
        self.mesh = MeshService(cfg, self.members, self.metrics, self._load) if cfg.mesh.enabled else None
        if self.mesh is not None:
            self._bridge_pubsub(self.mesh.bus)
        # The CDN (its cache under data_dir/cache) only when a route uses it.
        self.cdn = (CDN(cfg.cdn, cfg.path("cache"), self.metrics, LoopClock())
                    if any(r.kind == "cdn" for r in cfg.routes) else None)
        self.metrics.gauge("farts_node_info", "This node", lambda: {(cfg.node.id, cfg.node.region, __version__): 1},
                           ("node", "region", "version"))

    def _purge_everywhere(self):
        """With a mesh, a purge on this node's admin API is broadcast and every peer with
        a CDN runs it too (a peer without one ignores it)."""
        if self.mesh is None:
            return None
        bus, cdn = self.mesh.bus, self.cdn

        def on_remote(msg) -> None:
            spec = msg.body
            if (isinstance(spec, dict) and isinstance(spec.get("tenant"), str)
                    and all(isinstance(spec.get(k), (str, type(None))) for k in ("prefix", "key"))):
                cdn_purge.apply(cdn, spec)

        bus.subscribe("cdn.purge", on_remote)
        return lambda spec: bus.broadcast("cdn.purge", spec)

    def _bridge_pubsub(self, bus) -> None:
        """Cross-node pub/sub over the mesh bus: every local publish is broadcast; peers
        apply it (deduplicated by origin and seq). A peer that comes back alive, or a
        gap in an origin's broadcasts, triggers a catch-up: this node sends what it has
        (origin -> newest seq) and the peer answers with the events it lacks."""
        ps, me = self.pubsub, self.cfg.node.id
        ps.on_local_event = lambda ev: bus.broadcast("pubsub.event", ev)

        def on_event(msg) -> None:
            ps.apply_remote(msg.body)
            if msg.gap:
                bus.send(msg.origin, "pubsub.catchup", ps.have())

        def on_catchup(msg) -> None:
            if isinstance(msg.body, dict):
                events = ps.events_after(msg.body)
                for i in range(0, len(events), 200):  # frames well under mesh.max_frame_bytes
                    bus.send(msg.origin, "pubsub.events", events[i:i + 200])

        def on_events(msg) -> None:
            for ev in msg.body if isinstance(msg.body, list) else ():
                ps.apply_remote(ev)

        def ask_catchup(node_id: str, tries: int) -> None:
            # A member can be alive (heard through gossip) before its link is up: the
            # send fails until then, so it is tried again for a few seconds.
            if not bus.send(node_id, "pubsub.catchup", ps.have()) and tries > 1:
                asyncio.get_running_loop().call_later(0.5, ask_catchup, node_id, tries - 1)

        def on_member(old, new) -> None:
            if new.id != me and new.state == "alive" and (old is None or old.state != "alive"):
                ask_catchup(new.id, 20)

        bus.subscribe("pubsub.event", on_event)
        bus.subscribe("pubsub.catchup", on_catchup)
        bus.subscribe("pubsub.events", on_events)
        bus.on_member_change(on_member)

    def _handler_for(self, route: Route):
        if route.kind == "static":  # the transport writes a Fixed itself, no handler call
            return Fixed(route.status, route.body.encode(), route.content_type.encode())
        if route.kind == "proxy":
            return self.upstreams[route.upstream]
        if route.kind == "admin":
            return self.admin
        if route.kind == "cdn":
            return CDNHandler(self.cdn, make_origin(self.cfg.cdn.origins[route.origin], self.cfg.data_dir),
                              route.prefix)
        if route.kind == "pubsub":
            return self.pubsub
        raise ValueError(f"route kind {route.kind!r} has no handler")  # config.py rejects it first

    async def start(self) -> None:
        cfg = self.cfg
        if cfg.dns.enabled:
            from farts.dns import DNSServer  # loads the geo index builder only when used
            self.dns = DNSServer(cfg.dns, self.members, self.metrics, cfg.source)
            await self.dns.start()
        if cfg.db.enabled:
            from farts.db.server import DBService  # LMDB and the query engine only when used
            self.db = DBService(cfg.db, cfg.path("db"), cfg.node.id, self.metrics,
                                {t.id for t in cfg.tenants} or None, cfg.source)
            await self.db.start()
        if self.mesh is not None:
            await self.mesh.start()
        await self.pubsub.start()
        access = AccessLog(cfg.http.access_log_sample, cfg.http.access_log)
        public = Router(cfg.tenants, [(r, self._handler_for(r)) for r in cfg.routes],
                        cfg.limits.max_body_bytes, cfg.http.unknown_host_status)
        admin_routes = [(Route(prefix="/", kind="admin"), self.admin)]
        if self.mesh is not None:
            admin_routes.append((Route(prefix="/api/mesh", kind="admin"), MeshStatusHandler(self.mesh)))
        if self.cdn is not None:
            self.cdn.start()
            admin_routes.append((Route(prefix="/api/cache/", kind="admin", max_body_bytes=65536),
                                 PurgeHandler(self.cdn, self._purge_everywhere())))
        admin = Router(None, admin_routes, 0)
        ls = cfg.listeners
        if ls.http.enabled:
            await self._listen("http", "http", public, ls.http.host, ls.http.port, None, access)
        if ls.https.enabled:
            self.certs = CertStore(cfg.path(ls.https.cert_dir))
            self.metrics.gauge("farts_tls_certificate_reloads", "Times the certificate directory was loaded",
                               lambda: self.certs.reloads)
            self._tasks.append(asyncio.ensure_future(self.certs.watch(ls.https.reload_interval)))
            await self._listen("https", "https", public, ls.https.host, ls.https.port,
                               self.certs.listening, access)
        if ls.admin.enabled:
            await self._listen("admin", "http", admin, ls.admin.host, ls.admin.port, None, None)

    async def _listen(self, name, scheme, router, host, port, ssl_context, access) -> None:
        listener = Listener(name, scheme, router, self.cfg.limits, self.stats, access)
        try:
            await listener.start(host, port, ssl_context)
        except OSError as e:
            raise OSError(e.errno, f"listeners.{name}: cannot listen on {host}:{port}: {e.strerror}") from None
        self.listeners[name] = listener

    def urls(self) -> dict[str, str]:
        out = {}
        for name, li in self.listeners.items():
            host, port = li.address
            host = f"[{host}]" if ":" in host else host
            out[name] = f"{li.scheme}://{host}:{port}/"
        if self.dns is not None and self.dns.address:   # UDP and TCP on the same port
            host, port = self.dns.address
            out["dns"] = f"dns://{f'[{host}]' if ':' in host else host}:{port}/"
        if self.db is not None:
            out["db"] = self.db.url()
        if self.mesh is not None and self.mesh.links is not None:
            host, port = self.mesh.links.address
            out["mesh"] = f"mesh://{f'[{host}]' if ':' in host else host}:{port}/"
        return out

    def _load(self) -> float:
        """The load figure peers (and their DNS) see: open client connections over the limit."""
        open_ = sum(len(li.connections) for name, li in self.listeners.items() if name != "admin")
        return min(1.0, open_ / self.cfg.limits.max_connections)

    def status(self) -> dict:
        return {"node": self.cfg.node.id, "region": self.cfg.node.region, "version": __version__,
                "uptime_s": round(time.time() - self.started_at, 1), "listeners": self.urls(),
                "connections": {n: len(li.connections) for n, li in self.listeners.items()}}

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self.mesh is not None:  # first: peers hear "left" while the rest shuts down
            await self.mesh.stop()
        if self.dns is not None:
            await self.dns.stop()
        if self.db is not None:
            await self.db.stop()
        await self.pubsub.stop()
        for li in self.listeners.values():
            await li.close()
        for up in self.upstreams.values():
            up.close()
        if self.cdn is not None:
            await self.cdn.stop()
