"""The composition root: a table of the services of one node, and the Node that runs it.

Services never import each other; what one needs of another is handed over here as
a plain object or function. Each row of ``SERVICES`` says everything the node needs
to know about a service: its config section (registered with ``farts.config``), how
it is built from the config and the node's shared parts (metrics, clock, member map),
when it starts and stops, the route kinds it serves, the admin routes it adds, and
its peer protocols on the mesh bus. Adding a service is adding a row.
"""
from __future__ import annotations

import asyncio
import gc
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from farts import __version__, config
from farts.admin import AdminHandler
from farts.admin import config as admin_config
from farts.admin.health import PROBE_BYTES, Health, kit_state
from farts.admin.status import CertExpiry, Sampler, member_rows
from farts.cdn import CDN, CDNHandler, PurgeHandler, make_origin
from farts.cdn import config as cdn_config
from farts.cdn.peer import PurgePeer
from farts.certs import config as certs_config
from farts.certs.peer import CertsPeer
from farts.clock import LoopClock, Timer
from farts.config import Config, Route
from farts.db import config as db_config
from farts.dns import config as dns_config
from farts.dns.peer import TxtPeer
from farts.master import config as master_config
from farts.master.geoshare import GeoShare, published_database
from farts.members import Member, MemberMap
from farts.mesh import DrainHandler, MeshService, MeshStatusHandler
from farts.mesh import config as mesh_config
from farts.metrics import Metrics
from farts.proxy import ProxyHandler, ProxyStats
from farts.proxy import config as proxy_config
from farts.pubsub import PubSub
from farts.pubsub import config as pubsub_config
from farts.pubsub.peer import PubSubPeer
from farts.release import config as release_config
from farts.release.deploy import ClusterView, mesh_admin_urls
from farts.release.deploy import admin_routes as deploy_routes
from farts.release.handover import Handover
from farts.transport.client import Client
from farts.transport.http import Fixed
from farts.transport.listener import AccessLog, HTTPStats, Listener
from farts.transport.router import Router
from farts.transport.tls import ALPN, ALPN_HTTP1, CertStore
from farts.webhooks import config as webhooks_config

log = logging.getLogger("farts.node")

# The listeners close at this point of the stop order: services ranked lower stop first.
LISTENERS_STOP = 50


@dataclass(frozen=True)
class Service:
    name: str
    section: config.Section | None
    # node -> the service object, or None when the config leaves it off. It gets the
    # node's shared parts (node.cfg, node.metrics, node.clock, node.members) and what
    # it needs of another service as a plain object or function. Every service that
    # takes a `clock` gets node.clock (the mesh does; the others as their constructors
    # grow the parameter: pass clock=n.clock in their build).
    build: Callable[[Node], Any]
    start_rank: int = 100                 # lower starts first, all before the listeners
    stop_rank: int = 100                  # lower stops first (see LISTENERS_STOP)
    start: Callable[[Any], Any] | None = lambda s: s.start()   # may return an awaitable
    stop: Callable[[Any], Any] | None = lambda s: s.stop()
    # route kind -> (node, service, route) -> the handler for that route
    routes: dict[str, Callable[[Node, Any, Route], Any]] = field(default_factory=dict)
    # (node, service) -> [(route, handler)] on the admin listener
    admin_routes: Callable[[Node, Any], list] | None = None
    # (node, service) -> [(route, handler)] on the public listeners, for every tenant
    public_routes: Callable[[Node, Any], list] | None = None
    # (node, service, bus) -> the service's peer protocol objects (each subscribes itself)
    peers: Callable[[Node, Any, Any], list] | None = None


def _build_dns(node: Node):
    if not node.cfg.dns.enabled:
        return None
    from farts.dns import DNSServer  # loads the geo index builder only when used
    from farts.dns.geoindex import GeoSource
    # The GeoIP database the master published last (farts/master/geoshare.py), if any,
    # rather than the configured one.
    published = published_database(node.cfg.path("geoip")) if node.cfg.master.enabled else None
    geo = GeoSource(published, node.cfg.dns.rebuild_interval, clock=node.clock) if published else None
    # With workers, they answer (farts/workers/): this one keeps the run-time TXT records.
    return DNSServer(node.cfg.dns, node.members, node.metrics, node.cfg.source, geo=geo,
                     limits=node.cfg.limits, clock=node.clock, listen=node.workers == 1)


def _build_db(node: Node):
    cfg = node.cfg
    if not cfg.db.enabled:
        return None
    from farts.db.server import DBService  # LMDB and the query engine only when used
    return DBService(cfg.db, cfg.path("db"), cfg.node.id, node.metrics, {t.id for t in cfg.tenants} or None,
                     cfg.source, limits=cfg.limits, clock=node.clock, listen=node.workers == 1)


def _set_txt(node: Node):
    """What DNS-01 publishes with: a TXT record on every node's DNS (through the DNS
    service's peer protocol when there is a mesh), or False when this node has no DNS."""
    def set_txt(name: str, values: list[str]) -> bool:
        peer = next((p for p in node.peers.get("dns", ()) if isinstance(p, TxtPeer)), None)
        if peer is not None:
            return peer.set_everywhere(name, values)
        dns = node.services.get("dns")
        return dns.set_txt(name, values) if dns is not None else False
    return set_txt


def _build_certs(node: Node):
    cfg = node.cfg
    if not cfg.certs.enabled:
        return None
    from farts.certs.service import CertService, default_domains  # acme only when used
    certs = CertService(cfg.certs, cfg.certs.domains or default_domains(cfg.tenants),
                        cfg.path(cfg.listeners.https.cert_dir), cfg.path("acme"), node.metrics, node.clock,
                        _set_txt(node))
    if cfg.mesh.enabled:
        # One order per cluster: the master orders when [master] is on (_build_master);
        # without it the alive node with the lowest id; the others get the pair over the
        # mesh (farts/certs/peer.py). (Not before the mesh has joined: alone, every node
        # would be the lowest.)
        me = cfg.node.id
        certs.may_order = lambda: (node._mesh_state() == "ok"
                                   and me == min((m.id for m in node.members.alive()), default=me))
    return certs


def _certs_routes(node: Node, certs) -> list:
    from farts.certs.service import CHALLENGE_PREFIX
    return [(Route(prefix=CHALLENGE_PREFIX, kind="admin", max_body_bytes=0), certs.handler)]


def _certs_admin(node: Node, certs) -> list:
    from farts.certs.service import CertsAdminHandler
    return [(Route(prefix="/api/certs", kind="admin", max_body_bytes=0), CertsAdminHandler(certs))]


def _build_webhooks(node: Node):
    cfg = node.cfg
    if not cfg.webhooks.enabled:
        return None
    from farts.webhooks.service import Webhooks
    # The queue is in the DB service's store (open once the db has started: rank 20);
    # its commits are shipped to the peers as the wire endpoint's are. Delivering waits
    # for the master lease: Webhooks.master_changed(active, epoch) is its hook.
    return Webhooks(cfg.webhooks, cfg.tenants, lambda: node.db.store, node.metrics, node.clock,
                    node.http_client, on_commit=lambda: node.db.commands.on_commit())


def _webhooks_public(node: Node, hooks) -> list:
    from farts.webhooks.service import EnqueueHandler
    return [(Route(prefix="/api/webhooks", kind="admin"), EnqueueHandler(hooks))]


def _webhooks_admin(node: Node, hooks) -> list:
    from farts.webhooks.service import AdminHandler
    return [(Route(prefix="/api/webhooks", kind="admin"), AdminHandler(hooks, node.admin.allowed))]


def _close_upstreams(upstreams: dict) -> None:
    for up in upstreams.values():
        up.close()


def _purge_routes(node: Node, cdn: CDN) -> list:
    # With a mesh, a purge on this node's admin API runs on every peer with a CDN too.
    peer = next((p for p in node.peers.get("cdn", ()) if isinstance(p, PurgePeer)), None)
    return [(Route(prefix="/api/cache/", kind="admin", max_body_bytes=65536),
             PurgeHandler(cdn, peer.purge_everywhere if peer else None))]


def _build_status(n: Node) -> Sampler:
    """The status page's sampler: this node's metrics each admin.sample_interval, every
    node's ring buffer (samples travel on the mesh bus)."""
    a, me = n.cfg.admin, n.cfg.node
    sampler = Sampler(me.id, me.region, __version__, me.lat, me.lon, n.metrics, n.clock, a.sample_interval,
                      a.history_seconds,
                      members=lambda: member_rows(me.id, me.region, n.mesh.status() if n.mesh else None,
                                                  n.members.members()),
                      # (the clients' slow requests: the page's own, on the admin listener, left
                      # out as from its rates; /api/slow has them all)
                      slow=lambda: [e for e in reversed(n.stats.slow_log) if e["listener"] != "admin"])
    if n.mesh is not None:
        n.mesh.status_extra["versions"] = sampler.versions   # /api/mesh: what each member runs
    return sampler


def _build_master(n: Node):
    """The master service (every node runs it; the lease holder acts). Its state is in the
    database's store, handed over as a function (the store opens when the DB starts)."""
    if not n.cfg.master.enabled:
        return None
    from farts.master.service import MasterService
    # Built-in tasks a [[master.crons]] entry may name (action = "task"): run on the master only.
    tasks = {"certs_check": lambda: n.services["certs"].check() if n.services.get("certs") else None,
             "noop": lambda: None}
    # The GeoIP database the master publishes, on every node: handed to this node's DNS
    # (which builds its index and swaps it in, or refuses it).
    geo = GeoShare(n.cfg.node.id, n.cfg.path("geoip"), n.clock, n.metrics,
                   (lambda path: n.dns.geo.load(path)) if n.cfg.dns.enabled else None)
    if n.cfg.master.geoip.url:   # (off unless configured: nothing is downloaded by default)
        from farts.master.geoip import GeoIPRebuild
        tasks["geoip_rebuild"] = GeoIPRebuild(n.cfg.master.geoip, n.http_client, geo, n.clock).run
    hooks = n.services.get("webhooks")   # (built before: its row comes first)
    master = MasterService(n.cfg, n.metrics, n.clock, lambda: n.db.store if n.db is not None else None,
                           n.http_client, tasks, geo, version=__version__,
                           samples=lambda: n.services["admin"].latest if n.services.get("admin") else {},
                           caught_up=lambda: not _replica_behind(n),
                           dead_letters=lambda: sum(hooks.dead.totals().values()) if hooks is not None else 0)
    if hooks is not None:
        master.on_role(hooks.master_changed)   # only the master delivers, under its epoch
    certs = n.services.get("certs")
    if certs is not None:
        certs.may_order = master.acting        # one ACME order per cluster: the master's
    if n.mesh is not None:
        n.mesh.status_extra["masters"] = master.view   # /api/mesh: each deployment's master
    return master


def _replica_behind(n: Node) -> str:
    """Why the database is not caught up with the alive members (a new master waits for
    it, a bounded while, before it acts on the state it reads; a deploy's health gate
    waits for it), or "" when it is."""
    replication = n.db.replication if n.db is not None else None
    if replication is None:
        return ""
    return replication.behind({m.id for m in n.members.alive()})


def _deploy_view(n: Node) -> ClusterView:
    """What a deploy reads of the cluster on this node: for its health gate the state this
    node's mesh sees a member in and the master's alerts (read from the store); and who
    the master is, which runs the deploys."""
    def member_state(node_id: str) -> str | None:
        m = n.members.get(node_id) if n.mesh is not None else None
        return None if n.mesh is None else (m.state if m is not None else "unknown")

    def alerts() -> list[dict]:
        master = n.services.get("master")
        return master.alerts.listing() if master is not None and n.db is not None else []

    def master() -> str | None:
        service = n.services.get("master")
        return (service.view().get(service.deployment) or {}).get("master") if service is not None else None
    return ClusterView(member_state, alerts, master)


def _refused_bundle_alert(n: Node) -> Callable[[str], None]:
    """A release bundle this node refused, for the master's bundle_refused alert (recorded
    in the replicated store by this node's master service; nothing without one)."""
    def alert(reason: str) -> None:
        master = n.services.get("master")
        if master is not None:
            master.alerts.refused(reason)
    return alert


def _master_admin(n: Node, master) -> list:
    from farts.master.service import MasterAdminHandler
    return [(Route(prefix="/api/master", kind="admin", max_body_bytes=65536), MasterAdminHandler(master))]


SERVICES: tuple[Service, ...] = (
    Service("proxy", proxy_config.SECTION,
            build=lambda n: {name: ProxyHandler(name, up, n.cfg.node.id, n.proxy_stats, n.http_client,
                                                n.cfg.limits.slow_request_seconds)
                             for name, up in n.cfg.upstreams.items()},
            start=None, stop=_close_upstreams, stop_rank=60,
            routes={"proxy": lambda n, ups, r: ups[r.upstream]}),
    Service("dns", dns_config.SECTION, build=_build_dns, start_rank=10, stop_rank=10,
            peers=lambda n, dns, bus: [TxtPeer(dns, bus)]),
    Service("db", db_config.SECTION, build=_build_db, start_rank=20, stop_rank=20,
            # With a mesh the database is replicated: Store(replicated=True) and a
            # ReplicaPeer on the bus (farts/db/replication.py), started with the store.
            peers=lambda n, db, bus: [db.replicate(bus, seeded=bool(n.cfg.mesh.seeds))]),
    Service("mesh", mesh_config.SECTION,
            # The mesh writes the member map (this node included) once it runs.
            build=lambda n: (MeshService(n.cfg, n.members, n.metrics, n.load, clock=n.clock)
                             if n.cfg.mesh.enabled else None),
            start_rank=30, stop_rank=0,  # stops first: peers hear "left" while the rest shuts down
            admin_routes=lambda n, mesh: [(Route(prefix="/api/mesh", kind="admin"), MeshStatusHandler(mesh)),
                                          (Route(prefix="/api/drain", kind="admin"), DrainHandler(mesh))]),
    Service("pubsub", pubsub_config.SECTION,
            build=lambda n: PubSub(n.cfg.node.id, n.cfg.pubsub, n.cfg.tenants, n.metrics, n.clock),
            start_rank=40, stop_rank=30,
            routes={"pubsub": lambda n, ps, r: ps},
            peers=lambda n, ps, bus: [PubSubPeer(n.cfg.node.id, ps, bus, n.clock)]),
    Service("cdn", cdn_config.SECTION,
            # The CDN (its cache under data_dir/cache) only when a route uses it.
            build=lambda n: (CDN(n.cfg.cdn, n.cfg.path("cache"), n.metrics, n.clock)
                             if any(r.kind == "cdn" for r in n.cfg.routes) else None),
            start_rank=50, stop_rank=70,
            routes={"cdn": lambda n, cdn, r: CDNHandler(cdn, make_origin(n.cfg.cdn.origins[r.origin],
                                                                         n.cfg.data_dir, n.http_client),
                                                             r.prefix)},
            admin_routes=_purge_routes,
            peers=lambda n, cdn, bus: [PurgePeer(cdn, bus)]),
    Service("certs", certs_config.SECTION, build=_build_certs, start_rank=45, stop_rank=5,
            public_routes=_certs_routes, admin_routes=_certs_admin,
            peers=lambda n, certs, bus: [CertsPeer(n.cfg.node.id, certs, bus, n.clock)]),
    Service("webhooks", webhooks_config.SECTION, build=_build_webhooks, start_rank=60, stop_rank=15,
            public_routes=_webhooks_public, admin_routes=_webhooks_admin),
    Service("admin", admin_config.SECTION, build=_build_status, start_rank=90, stop_rank=5,
            peers=lambda n, sampler, bus: [sampler.peer(bus)]),
    # After the mesh and the DB (built after them: it reads n.mesh; started after them).
    Service("master", master_config.SECTION, build=_build_master, start_rank=60, stop_rank=5,
            admin_routes=_master_admin, peers=lambda n, master, bus: [master.attach(bus), master.geo.attach(bus)]),
    # [release]: the keys this node trusts for release bundles; the restart handover
    # (data_dir/handover.sock: `serve --takeover` takes this node over, farts/release/).
    Service("release", release_config.SECTION, start_rank=95, stop_rank=0,
            build=lambda n: Handover(n, n.cfg.release.reconnect_spread),
            admin_routes=lambda n, h: deploy_routes(n.cfg, n.metrics, n.clock, lambda: mesh_admin_urls(
                n.mesh.status() if n.mesh else None, n.cfg.node.id,
                n.listeners["admin"].address if "admin" in n.listeners else None), h,
                _deploy_view(n), lambda: _replica_behind(n), n.mesh.bus if n.mesh else None,
                _refused_bundle_alert(n))),
)

for _service in SERVICES:
    if _service.section is not None:
        config.register(_service.section)


async def _run(fn: Callable[[Any], Any] | None, service: Any) -> None:
    if fn is not None:
        result = fn(service)
        if inspect.isawaitable(result):
            await result


class Node:
    def __init__(self, cfg: Config, services: tuple[Service, ...] = SERVICES) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.clock = LoopClock()   # the node's one clock: services that take `clock` get it
        self.http_client = Client(self.clock)  # outbound HTTP(S): proxy upstreams, CDN origins
        self.listeners: dict[str, Listener] = {}
        self.stats = HTTPStats(self.metrics, self.listeners, cfg.node.region, cfg.admin.slow_requests_kept)
        self.started_at = self.clock.wall()
        self.certs: CertStore | None = None
        self._timers: list[Timer] = []  # periodic entries the node itself set
        self.proxy_stats = ProxyStats(self.metrics)
        # The live node map: the static list from [[dns.nodes]] until the mesh writes it.
        self.members = MemberMap([Member(n.id, n.region, n.lat, n.lon, tuple(n.addresses))
                                  for n in cfg.dns.nodes])
        self.table = services
        # Worker processes serving the public listeners (1: this process serves them).
        ls = cfg.listeners
        self.workers = cfg.node.worker_count if (ls.http.enabled or ls.https.enabled or cfg.dns.enabled
                                                 or cfg.db.enabled) else 1
        self.health = Health(self._listener_states, self._store_write if cfg.db.enabled else None,
                             self._mesh_state if cfg.mesh.enabled else None, self.clock.monotonic)
        self.services: dict[str, Any] = {}
        for row in services:
            self.services[row.name] = row.build(self)
        # With [node] workers > 1, the worker processes serve the public listeners (start).
        self.supervisor = None
        self.admin = AdminHandler(self.render_metrics, self.status, self.health.check, self.slow_requests,
                                  self.services.get("admin"), cfg.admin.token)
        self._route_kinds = {kind: (row, make) for row in services for kind, make in row.routes.items()}
        # The services' peer protocols on the mesh bus (none without a mesh).
        self.peers: dict[str, list] = {}
        bus = self.mesh.bus if self.mesh is not None else None
        for row in services:
            service = self.services[row.name]
            if bus is not None and service is not None and row.peers is not None:
                self.peers[row.name] = row.peers(self, service, bus)
        if self.mesh is not None and self.db is not None and self.db.replication is not None:
            self.mesh.status_extra["replication"] = self.db.replication.status   # /api/mesh
        self.metrics.gauge("farts_node_info", "This node", lambda: {(cfg.node.id, cfg.node.region, __version__): 1},
                           ("node", "region", "version"))

    # What other code reads of the node by name (cli, status).
    upstreams = property(lambda self: self.services.get("proxy") or {})
    pubsub = property(lambda self: self.services.get("pubsub"))
    mesh = property(lambda self: self.services.get("mesh"))
    cdn = property(lambda self: self.services.get("cdn"))
    dns = property(lambda self: self.services.get("dns"))
    db = property(lambda self: self.services.get("db"))

    def _running(self, rank: Callable[[Service], int]) -> list[tuple[Service, Any]]:
        rows = sorted(self.table, key=rank)
        return [(row, self.services[row.name]) for row in rows if self.services[row.name] is not None]

    def _handler_for(self, route: Route):
        if route.kind == "static":  # the transport writes a Fixed itself, no handler call
            return Fixed(route.status, route.body.encode(), route.content_type.encode())
        if route.kind == "admin":
            return self.admin.for_public()
        row, make = self._route_kinds[route.kind]  # config.py rejects unknown kinds first
        return make(self, self.services[row.name], route)

    async def start(self) -> None:
        cfg = self.cfg
        for row, service in self._running(lambda r: r.start_rank):
            await _run(row.start, service)
        access = AccessLog(cfg.http.access_log_sample, cfg.http.access_log)
        public_routes = [(r, self._handler_for(r)) for r in cfg.routes]
        for row, service in self._running(lambda r: r.start_rank):
            if row.public_routes is not None:
                public_routes += row.public_routes(self, service)
        public = Router(cfg.tenants, public_routes,
                        cfg.limits.max_body_bytes, cfg.http.unknown_host_status, cfg.http.encoded_slashes)
        admin_routes = [(Route(prefix="/", kind="admin"), self.admin)]
        for row, service in self._running(lambda r: r.start_rank):
            if row.admin_routes is not None:
                admin_routes += row.admin_routes(self, service)
        admin = Router(None, admin_routes, 0)
        ls = cfg.listeners
        workers = self.workers > 1
        if ls.http.enabled and not workers:
            await self._listen("http", "http", public, ls.http.host, ls.http.port, None, access,
                               h2c=ls.http.h2c)
        if ls.https.enabled:
            self.certs = CertStore(cfg.path(ls.https.cert_dir), self.clock,
                                   ALPN if ls.https.http2 else ALPN_HTTP1)
            self.metrics.gauge("farts_tls_certificate_reloads", "Times the certificate directory was loaded",
                               lambda: self.certs.reloads)
            self.metrics.gauge("farts_tls_certificate_expiry_timestamp_seconds",
                               "When each certificate of the HTTPS listener expires (notAfter)",
                               CertExpiry(self.certs), ("file",))
            self._timers.append(self.certs.watch(ls.https.reload_interval))
        if ls.https.enabled and not workers:
            await self._listen("https", "https", public, ls.https.host, ls.https.port,
                               self.certs.listening, access)
        if workers:
            from farts.workers.supervisor import Supervisor
            self.supervisor = Supervisor(self, self.workers)
            await self.supervisor.start(public, public_routes[len(cfg.routes):])
            if self.services.get("admin") is not None:   # the status page sees the workers too
                self.services["admin"].read.metrics = self.supervisor.view
        if ls.admin.enabled:
            await self._listen("admin", "http", admin, ls.admin.host, ls.admin.port, None, None,
                               h2c=ls.admin.h2c)
        # What is built by now lives as long as the node: out of the collector's reach, so that
        # a full collection walks only what requests make (one took 7-10 ms on a node of 40k
        # objects, 0 after the freeze: a pause every request in flight waits out).
        gc.freeze()

    async def _listen(self, name, scheme, router, host, port, ssl_context, access,
                      h2c: bool = False) -> None:
        listener = Listener(name, scheme, router, self.cfg.limits, self.stats, access, self.clock,
                            h2c=h2c)
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
        if self.supervisor is not None:
            out.update(self.supervisor.urls())
        if self.dns is not None and self.dns.address:   # UDP and TCP on the same port
            host, port = self.dns.address
            out["dns"] = f"dns://{f'[{host}]' if ':' in host else host}:{port}/"
        if self.db is not None:
            out["db"] = self.db.url()
        if self.mesh is not None and self.mesh.links is not None:
            host, port = self.mesh.links.address
            out["mesh"] = f"mesh://{f'[{host}]' if ':' in host else host}:{port}/"
        return out

    def load(self) -> float:
        """The load figure peers (and their DNS) see: open client connections over the limit."""
        open_ = sum(len(li.connections) for name, li in self.listeners.items() if name != "admin")
        if self.supervisor is not None:
            open_ += self.supervisor.open_connections()
        return min(1.0, open_ / self.cfg.limits.max_connections)

    def status(self) -> dict:
        return {"node": self.cfg.node.id, "region": self.cfg.node.region, "version": __version__,
                "uptime_s": round(self.clock.wall() - self.started_at, 1), "listeners": self.urls(),
                "connections": {n: len(li.connections) for n, li in self.listeners.items()}}

    def slow_requests(self) -> dict:
        """/api/slow: the last slow requests, newest first, and what their timings mean."""
        return {"node": self.cfg.node.id, "region": self.cfg.node.region,
                "threshold_ms": self.cfg.limits.slow_request_seconds * 1000,
                "kept": self.stats.slow_log.maxlen,
                "timings": {"total_ms": "measured: request head handled to response written",
                            "queue_ms": "measured for proxied requests: handler called to its task "
                                        "running (event loop queue); else null",
                            "upstream_connect_ms": "measured for proxied requests on a new upstream "
                                                   "connection (null when pooled)",
                            "upstream_first_byte_ms": "measured for proxied requests: request sent "
                                                      "(after connect) to the upstream's response head",
                            "send_ms": "measured for proxied requests: upstream head to the last "
                                       "byte written to the client",
                            "tls_ms": "not measured (the handshake happens before the request)"},
                "requests": list(reversed(self.stats.slow_log))}

    # -- /healthz ---------------------------------------------------------------------
    def _listener_states(self) -> dict[str, str]:
        out = {name: kit_state(li) for name, li in self.listeners.items()}
        for name in ("http", "https", "admin"):
            if getattr(self.cfg.listeners, name).enabled and name not in self.listeners:
                out[name] = "not listening"
        if self.db is not None:
            out["db"] = kit_state(self.db.kit) if self.db.kit is not None else "not listening"
        if self.dns is not None:
            out["dns_tcp"] = kit_state(self.dns.kit)
            out["dns_udp"] = "ok" if self.dns.address else "not listening"
        if self.supervisor is not None:   # (its listeners, DNS and MongoDB's included)
            out.update(self.supervisor.states())
        if self.mesh is not None:
            links = self.mesh.links
            out["mesh"] = kit_state(links.kit) if links is not None else "not listening"
        return out

    async def _store_write(self) -> None:
        db = self.db
        if db is None or db.store is None:
            raise RuntimeError("the store is not open")
        def probe(w) -> None:  # room for a record of PROBE_BYTES, put and taken back in one commit
            w.txn.put(b"\0healthz-probe", bytes(PROBE_BYTES), db=w.store.meta)
            w.txn.delete(b"\0healthz-probe", db=w.store.meta)
        await asyncio.wrap_future(db.store.submit(probe))

    def _mesh_state(self) -> str:
        mesh = self.mesh
        swim = mesh.swim if mesh is not None else None
        if swim is None:
            return "not running"
        if swim.leaving:
            return "leaving"
        if mesh.mc.seeds and not swim.peers:
            return f"not joined: no member reached (seeds {', '.join(mesh.mc.seeds)})"
        return "ok"

    async def stop(self) -> None:
        for t in self._timers:
            t.cancel()
        for peers in self.peers.values():
            for peer in peers:
                getattr(peer, "stop", lambda: None)()
        listeners_closed = False
        for row, service in self._running(lambda r: r.stop_rank):
            if row.stop_rank >= LISTENERS_STOP and not listeners_closed:
                await self._close_listeners()
                listeners_closed = True
            await _run(row.stop, service)
        if not listeners_closed:
            await self._close_listeners()
        self.http_client.close()

    def render_metrics(self) -> bytes | Awaitable[bytes]:
        """/metrics: this process's metrics, plus (asked at once) the workers' when there are some."""
        return self.supervisor.render_metrics() if self.supervisor is not None else self.metrics.render()

    async def _close_listeners(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop()
        for li in self.listeners.values():
            await li.close()
