"""MeshService: runs the SWIM machine over the TLS links and keeps the member map.

Probes travel over the same mutual-TLS TCP links as the bus, not over UDP: every
message is then authenticated by the link's certificate (no second, unauthenticated
UDP channel to secure), the full mesh of up to ~100 nodes keeps those links open
anyway, and a partition made with `ip link set down` or DROP rules cuts probes and
bus alike. The cost is that TCP retransmits hide single lost packets from probes
(a loss shows up as latency); indirect probes through other members' links still
tell a broken link from a dead node, and a link that drops (a peer killed: the
kernel resets the connection) triggers an immediate probe of that peer rather than
waiting its turn.

The machine gets the injected clock's ``monotonic()`` (``LoopClock`` reads
``time.monotonic()``: uvloop's loop clock has millisecond steps, too coarse for
loopback RTTs); a clock timer wakes it at its next deadline, and each received message
or link change is handed to it at once, then its outbox goes out on the links.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from farts.clock import Clock, LoopClock, Timer, pack, unpack
from farts.config import Config, ConfigError
from farts.members import ALIVE, DEAD, DRAINING, LEFT, SUSPECT, Member, MemberMap
from farts.mesh.bus import Bus
from farts.mesh.frames import BUS, SWIM, Hello, encode
from farts.mesh.link import Link, LinkManager, LinkStats, tls_contexts
from farts.mesh.swim import Peer, Swim, SwimConfig
from farts.metrics import Metrics
from farts.peer import Envelope, PeerMessage, need
from farts.transport.http import Request, Response

log = logging.getLogger("farts.mesh")

LOAD_INTERVAL = 5.0
RTT_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True, slots=True)
class Load(PeerMessage):
    """A node's load figure (0 = idle, 1 = at its limits), for the DNS to weigh."""
    TYPE = "mesh.load"
    VERSION = 1
    value: float

    @classmethod
    def parse(cls, body: Any) -> float:
        need(cls, isinstance(body, (int, float)) and not isinstance(body, bool) and math.isfinite(body),
             "a number")
        return float(body)


class MeshService:
    def __init__(self, cfg: Config, members: MemberMap, metrics: Metrics,
                 load: Callable[[], float] | None = None, clock: Clock | None = None) -> None:
        self.cfg, self.mc, self.members, self.metrics = cfg, cfg.mesh, members, metrics
        self.clock = clock or LoopClock()
        # This node's load figure (0 = idle, 1 = at its limits), shared with every member
        # every LOAD_INTERVAL for the DNS to weigh; it rides the bus, not SWIM.
        self.load = load or (lambda: 0.0)
        self._load_timer: Timer | None = None
        self.me = cfg.node.id
        mc = self.mc
        self.swim_cfg = SwimConfig(mc.probe_interval, mc.probe_timeout, mc.indirect_probes,
                                   mc.suspicion_timeout, mc.suspicion_max_mult, mc.retransmit_mult,
                                   mc.push_pull_interval)
        self.hlc = self.clock.hlc   # the process's one HLC, shared with the store
        self.epoch = self.clock.wall_ms()
        self.swim: Swim | None = None
        self.links: LinkManager | None = None
        self.bus = Bus(self.me, self.epoch, members, self.hlc,
                       lambda: self.links.links if self.links else {}, metrics)
        self._timer: Timer | None = None
        # More sections of /api/mesh: name -> a function of nothing returning JSON
        # (node.py adds the database's replication view).
        self.status_extra: dict[str, Callable[[], Any]] = {}
        self._timer_at = float("inf")
        self.stats = LinkStats(metrics)
        self.rtt = metrics.histogram("farts_mesh_probe_rtt_seconds", "Direct probe round trips", ("peer",),
                                     buckets=RTT_BUCKETS)
        self.bad_messages = self.bus.bad
        metrics.gauge("farts_mesh_members", "Members by state, as this node sees them",
                      self._by_state, ("state",))
        metrics.gauge("farts_mesh_local_health", "Lifeguard local health (0: healthy; each step "
                      "adds a probe period of patience)", lambda: self.swim.health if self.swim else 0)
        for name, key, help in (("farts_mesh_suspicions_total", "suspicions", "Members this node started suspecting"),
                                ("farts_mesh_refutations_total", "refutations",
                                 "Suspicions of this node it refuted (incarnation bumped)"),
                                ("farts_mesh_deaths_total", "deaths", "Members this node saw declared dead"),
                                ("farts_mesh_probes_total", "probes", "Direct probes sent"),
                                ("farts_mesh_indirect_probes_total", "indirect_probes",
                                 "Ping-requests sent to other members after a direct probe got no ack"),
                                ("farts_mesh_probe_failures_total", "probe_failures",
                                 "Probes with no ack, direct or indirect")):
            c = metrics.counter(name, help)
            c.sources.append(lambda key=key: {(): self.swim.stats[key]} if self.swim else {})

    def _by_state(self) -> dict:
        out = {(s,): 0 for s in (ALIVE, SUSPECT, DEAD, LEFT)}
        for m in self.members.members():
            out[(m.state,)] = out.get((m.state,), 0) + 1
        return out

    # ---- lifecycle -------------------------------------------------------------------

    def _hello(self) -> Hello:
        n, mc = self.cfg.node, self.mc
        host, port = self.links.address
        mesh = mc.advertise or f"{host}:{port}"
        public = tuple(mc.public_addresses) or (self.cfg.listeners.http.host,)
        return Hello(self.me, n.region, n.lat, n.lon, public, mesh, unpack(self.hlc.now()),
                     self.swim.incarnation if self.swim else 0)

    async def start(self) -> None:
        mc = self.mc
        paths = {k: self.cfg.path(getattr(mc, k)) for k in ("ca", "cert", "key")}
        for key, path in paths.items():
            if not path.exists():
                raise ConfigError(f"{self.cfg.source}: mesh.{key}: {path} does not exist "
                                  f"(farts-edge ca init / ca issue {self.me} write it)")
        try:
            server_ctx, client_ctx = tls_contexts(paths["ca"], paths["cert"], paths["key"])
        except (OSError, ValueError) as e:
            raise ConfigError(f"{self.cfg.source}: mesh.cert: cannot load the mesh certificate: {e}") from None
        self.links = LinkManager(self.me, server_ctx, client_ctx, self._hello, self.stats,
                                 max_frame_bytes=mc.max_frame_bytes, queue_max_bytes=mc.queue_max_bytes,
                                 handshake_timeout=mc.handshake_timeout, reconnect_min=mc.reconnect_min,
                                 reconnect_max=mc.reconnect_max, on_up=self._up, on_down=self._down,
                                 on_frame=self._frame)
        try:
            await self.links.listen(mc.host, mc.port)
        except OSError as e:
            raise OSError(e.errno, f"mesh: cannot listen on {mc.host}:{mc.port}: {e.strerror}") from None
        hello = self._hello()
        self.swim = Swim(self.me, hello.meta(), self.swim_cfg, self.clock.monotonic())
        me = self.members.get(self.me)
        self.members.update(Member(self.me, hello.region, hello.lat, hello.lon, hello.addresses, ALIVE, 0,
                                   me.load if me else 0.0, {"mesh": hello.mesh}))
        for seed in mc.seeds:
            if seed != hello.mesh:
                self.links.dial("seed:" + seed, seed, None)
        self.share_load()
        self._wake()

    def share_load(self) -> None:
        """This node's load goes to every member now and each LOAD_INTERVAL; theirs comes in."""
        self.bus.subscribe(Load, self._peer_load)
        self._load_timer = self.clock.every(LOAD_INTERVAL, self._share_load, first=0.0)

    def _share_load(self, now: float) -> None:
        value = round(float(self.load()), 3)
        me = self.members.get(self.me)
        if me is not None and me.load != value:
            self.members.update(dataclasses.replace(me, load=value))
        self.bus.broadcast(Load(value))

    def _peer_load(self, msg: Load, env: Envelope) -> None:
        m = self.members.get(env.origin)
        if m is not None and m.load != msg.value:
            self.members.update(dataclasses.replace(m, load=msg.value))

    def drain(self) -> bool:
        """Takes this node out of the answers of every node's DNS while it keeps serving
        (``draining`` in its gossiped metadata; members show DRAINING). False if it was."""
        if self.swim is None or self.swim.meta.get("draining"):
            return False
        log.info("mesh: draining: peers stop sending clients here")
        self.swim.announce(self.clock.monotonic(), {**self.swim.meta, "draining": True})
        me = self.members.get(self.me)
        if me is not None:
            self.members.update(dataclasses.replace(me, state=DRAINING))
        self._flush()
        return True

    @property
    def draining(self) -> bool:
        return bool(self.swim is not None and self.swim.meta.get("draining"))

    async def stop(self) -> None:
        if self.swim is None:
            return
        # Drain first: peers stop answering with this node while it still serves, for
        # mesh.drain_seconds (a DNS TTL's worth lets resolvers' caches move on), then leave.
        if self.drain() and self.mc.drain_seconds > 0:
            await asyncio.sleep(self.mc.drain_seconds)
        self.swim.leave(self.clock.monotonic())
        self._flush()
        if self._timer:
            self._timer.cancel()
        if self._load_timer:
            self._load_timer.cancel()
        await asyncio.sleep(0.05)  # let the "left" frames reach the kernel's buffers
        await self.links.close()

    # ---- the machine, driven -------------------------------------------------------------

    def _wake(self) -> None:
        self._timer_at = float("inf")
        self.swim.tick(self.clock.monotonic())
        self._flush()

    def _flush(self) -> None:
        swim, links = self.swim, self.links.links
        for dest, msg in swim.outbox:
            link = links.get(dest)
            if link is not None:
                link.send(encode(SWIM, msg))
        swim.outbox.clear()
        for peer, old in swim.changes:
            self._changed(peer, old)
        swim.changes.clear()
        for peer_id, rtt in swim.rtt_samples:
            self.rtt.observe(rtt, (peer_id,))
        swim.rtt_samples.clear()
        for peer_id in swim.forgotten:  # long dead: stop redialing it
            self.links.undial(peer_id)
        swim.forgotten.clear()
        me = self.members.get(self.me)
        if me is not None and me.incarnation != swim.incarnation:
            self.members.update(dataclasses.replace(me, incarnation=swim.incarnation))
        if swim.leaving:
            return
        at = swim.next_wakeup()
        if at < self._timer_at:
            if self._timer:
                self._timer.cancel()
            self._timer_at = at
            self._timer = self.clock.call_at(at, self._wake)

    def _changed(self, p: Peer, old: str | None) -> None:
        m = p.meta
        if old != p.state:
            log.info("mesh: %s is %s (incarnation %d, was %s)", p.id, p.state, p.incarnation, old or "unknown")
        prev = self.members.get(p.id)
        state = DRAINING if m.get("draining") and p.state in (ALIVE, SUSPECT) else p.state
        self.members.update(Member(p.id, str(m.get("region", "")), float(m.get("lat", 0.0)),
                                   float(m.get("lon", 0.0)), tuple(m.get("addresses", ())), state,
                                   p.incarnation, prev.load if prev else 0.0, {"mesh": m.get("mesh", "")}))
        # A link to a member declared dead is closed: if the member lives after all (a
        # healed partition), a fresh connection finds it at once instead of a TCP
        # connection stuck in retransmission backoff.
        if p.state in (DEAD, LEFT) and p.id in self.links.links:
            self.links.links[p.id].close(p.state)
        # The smaller id dials; a left member is not redialed (it comes back through its seeds).
        if p.state == LEFT:
            self.links.undial(p.id)
        elif self.me < p.id and m.get("mesh"):
            self.links.dial(p.id, m["mesh"], p.id)

    def _up(self, link: Link) -> None:
        now = self.clock.monotonic()
        h = link.hello
        self.hlc.observe(pack(*h.hlc))
        self.swim.add_peer(now, h.id, h.incarnation, h.meta())
        self.swim.connected(now, h.id)
        self._flush()
        me = self.members.get(self.me)
        if me is not None:  # a new peer gets our load now, not at the next round
            self.bus.send(h.id, Load(me.load))

    def _down(self, link: Link) -> None:
        if self.swim.leaving:
            return
        self.swim.link_lost(self.clock.monotonic(), link.peer)
        self._flush()

    def _frame(self, link: Link, kind: int, payload) -> None:
        try:
            if kind == SWIM:
                self.swim.receive(self.clock.monotonic(), link.peer, payload)
                self._flush()
            elif kind == BUS:
                self.bus.deliver(link.peer, payload)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
            name = "swim" if kind == SWIM else "bus"
            self.bad_messages.inc((name,))
            log.warning("mesh: bad %s message from %s (%r), closing the link", name, link.peer, e)
            link.close("bad_" + name)

    # ---- operator view ---------------------------------------------------------------------

    def status(self) -> dict:
        """The members table (`farts-edge status`, /api/mesh)."""
        now = self.clock.monotonic()
        rows = [{"id": self.me, "region": self.cfg.node.region, "state": LEFT if self.swim and self.swim.leaving
                 else DRAINING if self.draining else ALIVE, "incarnation": self.swim.incarnation if self.swim else 0, "rtt_ms": None,
                 "last_heard_s": 0.0, "link": None, "self": True,
                 "mesh": self.swim.meta.get("mesh") if self.swim else None}]
        links = self.links.links if self.links else {}
        for p in sorted(self.swim.peers.values() if self.swim else (), key=lambda p: p.id):
            state = DRAINING if p.meta.get("draining") and p.state in (ALIVE, SUSPECT) else p.state
            rows.append({"id": p.id, "region": p.meta.get("region", ""), "state": state,
                         "incarnation": p.incarnation, "rtt_ms": None if p.rtt is None else round(p.rtt * 1000, 3),
                         "last_heard_s": None if p.last_heard is None else round(now - p.last_heard, 2),
                         "link": p.id in links, "self": False, "mesh": p.meta.get("mesh")})
        counts = {s: sum(1 for r in rows if r["state"] == s) for s in (ALIVE, SUSPECT, DRAINING, DEAD, LEFT)}
        return {"node": self.me, "members": rows, "counts": counts,
                **{name: fn() for name, fn in self.status_extra.items()}}


class DrainHandler:
    """POST /api/drain on the admin listener (`farts-edge drain`): see MeshService.drain."""

    def __init__(self, mesh: MeshService) -> None:
        self.mesh = mesh

    def handle(self, request: Request) -> Response:
        if request.method != b"POST":
            return Response(405, [(b"allow", b"POST"), (b"content-type", b"text/plain")], b"POST only\n")
        changed = self.mesh.drain()
        return Response(200, [(b"content-type", b"application/json")],
                        json.dumps({"node": self.mesh.me, "draining": True, "changed": changed}).encode() + b"\n")


class MeshStatusHandler:
    """GET /api/mesh on the admin listener: the members table as JSON."""

    def __init__(self, mesh: MeshService) -> None:
        self.mesh = mesh

    def handle(self, request: Request) -> Response:
        return Response(200, [(b"content-type", b"application/json")],
                        json.dumps(self.mesh.status(), indent=1).encode() + b"\n")
