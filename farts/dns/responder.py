"""Query bytes in, response bytes out: the DNS service without sockets.

The zone says what a name is; for geo names the client's location (the ECS address
when a resolver sends one, else the source address) picks the nearest live nodes of
the member map. Answers for geo names are cached per (name, type, location) and the
cache is dropped whenever the member map or the geo index changes, so a node marked
dead is gone from the very next answer.
"""
from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from farts.dns import rrl as rrl_mod
from farts.dns.zone import GEO, META_TYPES, NODATA, REFUSED, Resolution, Zone
from farts.members import SERVING, Member, MemberMap
from farts.metrics import Metrics
from fast import dns as fd
from fast.dns import encode_response, error_response, parse_query

TYPE_NAMES = {v: k for k, v in vars(fd).items() if k.isupper() and isinstance(v, int) and k not in (
    "QUERY", "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS",
    "IN", "CH", "DEFAULT_PAYLOAD")}
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
               5: "REFUSED", 16: "BADVERS"}
EARTH_RADIUS_KM = 6371.0
CACHE_MAX = 200_000


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def _packed_addresses(m: Member) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    v4, v6 = [], []
    for a in m.addresses:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            continue
        (v4 if ip.version == 4 else v6).append(ip.packed)
    return tuple(v4), tuple(v6)


@dataclass(frozen=True)
class Choice:
    """The nodes a location gets, in the order they are given out: nearest first, but a
    node at or over the load threshold after every node with room; with distances
    (None: unknown location)."""
    nodes: tuple[Member, ...]
    distances: tuple[float | None, ...]


class Stats:
    def __init__(self, metrics: Metrics | None) -> None:
        m = metrics or Metrics()
        self.queries = m.counter("farts_dns_queries_total", "DNS queries answered, by type, rcode and transport",
                                 ("type", "rcode", "transport"))
        self.answers = m.counter("farts_dns_answers_total", "Nodes returned in geo answers", ("node", "region"))
        self.shifted = m.counter("farts_dns_load_shifted_total",
                                 "Geo answers that passed over a nearer node at or over the load threshold, by that node",
                                 ("node",))
        self.dropped = m.counter("farts_dns_dropped_total", "Messages not answered", ("reason",))
        self.rrl = m.counter("farts_dns_rrl_total", "Rate-limited UDP replies", ("action",))
        self.cached = m.counter("farts_dns_cached_replies_total",
                                "UDP replies replayed from the C reply cache (not timed: see farts_dns_query_seconds)")
        self.latency = m.histogram("farts_dns_query_seconds",
                                   "Time to answer one DNS message in Python (replies replayed from the "
                                   "C cache are counted in farts_dns_cached_replies_total, not timed)",
                                   buckets=(0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                            0.01, 0.1))
        self.metrics = m


class Responder:
    def __init__(self, zone: Zone, members: MemberMap, geo, default_region: str = "",
                 rrl: rrl_mod.RateLimiter | None = None, metrics: Metrics | None = None,
                 load_threshold: float = 0.9) -> None:
        """``geo``: anything with ``current`` (a GeoData or None) and ``version``.
        ``load_threshold``: a node whose load figure (0 idle .. 1 at its limits, from the
        mesh) is at or over it is given out only after the nodes with room."""
        self.zone = zone
        self.load_threshold = load_threshold
        self.members = members
        self.geo = geo
        self.default_region = default_region
        self.rrl = rrl
        self.stats = Stats(metrics)
        self._cache: dict = {}
        self._cache_key = (-1, -1)
        # Bumped only by changes that alter answers: the mesh also rewrites members for
        # incarnation or load updates, which must not empty the caches every heartbeat
        # (a load update alters answers only when it crosses the threshold).
        self.nodes_version = 0
        self.on_nodes_change: list = []
        self.close = members.on_change(self._member_changed)
        self._addresses: dict[str, tuple] = {}

    # ---- node choice ----

    def zone_changed(self) -> None:
        """A record changed at run time (a DNS-01 TXT): cached replies go."""
        self.nodes_version += 1
        for fn in list(self.on_nodes_change):
            fn()

    def _member_changed(self, old: Member | None, new: Member) -> None:
        if (old is not None and (old.state in SERVING) == (new.state in SERVING)
                and (old.lat, old.lon, old.region, old.addresses) == (new.lat, new.lon, new.region, new.addresses)
                and self.overloaded(old) == self.overloaded(new)):
            return
        self.nodes_version += 1
        for fn in list(self.on_nodes_change):
            fn()

    def _fresh_cache(self) -> dict:
        key = (self.nodes_version, self.geo.version)
        if key != self._cache_key:
            self._cache = {}
            self._addresses = {}
            self._cache_key = key
        elif len(self._cache) > CACHE_MAX:
            self._cache.clear()
        return self._cache

    def overloaded(self, m: Member) -> bool:
        return m.load >= self.load_threshold

    def choose(self, loc: int, weigh_load: bool = True) -> Choice:
        alive = self.members.alive()
        data = self.geo.current
        over = self.overloaded if weigh_load else lambda m: False
        if loc < 0 or data is None:
            # (sorted is stable: within each group the default region first, then config order)
            nodes = sorted(alive, key=lambda m: (over(m), m.region != self.default_region))
            return Choice(tuple(nodes), (None,) * len(alive))
        lat, lon = data.index.coords(loc)
        ranked = sorted((over(m), great_circle_km(lat, lon, m.lat, m.lon), m.id, m) for m in alive)
        return Choice(tuple(r[3] for r in ranked), tuple(r[1] for r in ranked))

    def _geo_records(self, name: bytes, qtype: int, count: int, ttl: int, loc: int):
        cache = self._fresh_cache()
        key = (name, qtype, count, ttl, loc)
        hit = cache.get(key)
        if hit is not None:
            return hit
        family = 0 if qtype == fd.A else 1
        records, chosen = [], []
        for m in self._serving(self.choose(loc), family, count):
            records.extend(fd.Record(name, qtype, ttl, a) for a in self._addresses[m.id][family])
            chosen.append((m.id, m.region))
        # The nodes the answer would have had without their load, and has not.
        given = {m for m, _ in chosen}
        shifted = tuple((m.id,) for m in self._serving(self.choose(loc, weigh_load=False), family, count)
                        if m.id not in given)
        hit = cache[key] = (tuple(records), tuple(chosen), shifted)
        return hit

    def _serving(self, choice: Choice, family: int, count: int) -> list[Member]:
        """The first ``count`` nodes of a choice with an address of the family (0: v4, 1: v6)."""
        out = []
        for m in choice.nodes:
            addrs = self._addresses.get(m.id)
            if addrs is None:
                addrs = self._addresses[m.id] = _packed_addresses(m)
            if addrs[family]:
                out.append(m)
                if len(out) == count:
                    break
        return out

    # ---- messages ----

    def locate(self, client: bytes, ecs) -> tuple[int, int]:
        """(location, ECS scope) of a client: the ECS subnet when it has a prefix."""
        data = self.geo.current
        if ecs is not None and ecs[1] > 0:
            if data is None:
                return -1, 0
            return data.locate(ecs[3])
        if data is None:
            return -1, 0
        return data.locate(client)[0], 0

    def answer(self, data: bytes, client: bytes, tcp: bool, now: float) -> bytes | None:
        """The reply to one message from ``client`` (packed address), or None to send nothing.
        UDP replies are rate limited here (the C fast path limits before calling respond);
        ``now`` is the node clock's monotonic time, for the limiter."""
        if not tcp and self.rrl is not None and self.rrl.rate > 0:
            action = self.rrl.check(rrl_mod.network_key(client), now)
            if action != rrl_mod.ALLOW:
                q = parse_query(data)
                if type(q) is fd.ParseError and q.drop:
                    return None
                if action == rrl_mod.DROP:
                    self.stats.rrl.inc(("drop",))
                    return None
                self.stats.rrl.inc(("slip",))
                out = bytearray(error_response(q, q.rcode if type(q) is fd.ParseError else 0))
                out[2] |= 0x02   # TC: retry over TCP
                return bytes(out)
        return self.respond(data, client, tcp)[0]

    def respond(self, data: bytes, client: bytes, tcp: bool) -> tuple[bytes | None, tuple | None]:
        """(reply or None, label): the label is what a replay of this reply from a cache
        must count ((type, rcode, transport), chosen nodes, nodes passed over for load),
        None when not to be cached."""
        transport = "tcp" if tcp else "udp"
        q = parse_query(data)
        stats = self.stats
        if type(q) is fd.ParseError:
            if q.drop:
                stats.dropped.inc(("unparseable",))
                return None, None
            stats.queries.inc(("-", RCODE_NAMES.get(q.rcode, str(q.rcode)), transport))
            return error_response(q), None
        qtype = q.qtype
        if q.edns_version > 0:
            stats.queries.inc((TYPE_NAMES.get(qtype, str(qtype)), "BADVERS", transport))
            return error_response(q, fd.BADVERS), None
        if q.qclass not in (fd.IN, fd.ANY) or qtype in META_TYPES:
            res = Resolution(REFUSED, rcode=fd.REFUSED)
        else:
            res = self.zone.resolve(q.qname_lower, qtype)
        answers, scope, chosen, shifted = res.answers, 0, (), ()
        if res.kind == GEO:
            loc, scope = self.locate(client, q.ecs)
            g = res.geo
            records, chosen, shifted = self._geo_records(g.name, qtype, g.answers, g.ttl, loc)
            answers = answers + records if answers else records
            for key in chosen:
                stats.answers.inc(key)
            for key in shifted:
                stats.shifted.inc(key)
            if not records:
                res = Resolution(NODATA, authority=(self.zone.soa,))
        label = (TYPE_NAMES.get(qtype, str(qtype)), RCODE_NAMES.get(res.rcode), transport)
        stats.queries.inc(label)
        return encode_response(q, res.rcode, res.kind != REFUSED, answers, res.authority, None,
                               65535 if tcp else 0, scope), (label, chosen, shifted)

    # ---- explanation (farts-edge dns lookup) ----

    def explain(self, name: str, client: str, qtype: int = fd.A, ecs_prefix: int | None = None) -> dict:
        """What a query for ``name`` from ``client`` gets, and why."""
        ip = ipaddress.ip_address(client)
        packed = ip.packed
        if ecs_prefix is not None:
            net = ipaddress.ip_network(f"{client}/{ecs_prefix}", strict=False)
            ecs = (1 if ip.version == 4 else 2, ecs_prefix, 0, net.network_address.packed)
        else:
            ecs = None
        res = self.zone.resolve(name.rstrip(".").lower().encode(), qtype)
        out = {"name": name, "client": client, "kind": res.kind, "rcode": RCODE_NAMES.get(res.rcode),
               "answers": [r.value for r in res.answers]}
        if res.kind != GEO:
            return out
        loc, scope = self.locate(packed, ecs)
        data = self.geo.current
        choice = self.choose(loc)
        out["location"] = data.describe(loc) if data is not None else "no geo index"
        out["scope"] = scope
        out["candidates"] = [(m.id, m.region, m.lat, m.lon, d, list(m.addresses))
                             for m, d in zip(choice.nodes, choice.distances, strict=True)]
        records, chosen, shifted = self._geo_records(res.geo.name, qtype, res.geo.answers, res.geo.ttl, loc)
        out["chosen"] = [c[0] for c in chosen]
        out["shifted"] = [s[0] for s in shifted]
        out["answers"] = [str(ipaddress.ip_address(r.value)) for r in records]
        return out
