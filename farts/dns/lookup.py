"""`farts-edge dns lookup`: the answer a client would get from a config, and why."""
from __future__ import annotations

import ipaddress

import maxminddb

from farts.config import Config, ConfigError
from farts.dns.geoindex import default_database, record_location
from farts.dns.responder import Responder
from farts.dns.zone import Zone
from farts.members import Member, MemberMap
from fast import dns as fd


def explain_text(cfg: Config, name: str, client: str, qtype: str = "A", subnet: int | None = None) -> str:
    try:
        ipaddress.ip_address(client)
    except ValueError:
        raise ConfigError(f"--client: expected an IP address, got {client!r}") from None
    zone = Zone(cfg.dns, cfg.source)
    members = MemberMap([Member(n.id, n.region, n.lat, n.lon, tuple(n.addresses)) for n in cfg.dns.nodes])
    path = cfg.dns.geoip_database or default_database()
    geo = _OneAddress(path, subnet_address(client, subnet))
    r = Responder(zone, members, geo, cfg.dns.default_region, load_threshold=cfg.dns.load_threshold)
    e = r.explain(name, client, fd.AAAA if qtype == "AAAA" else fd.A, subnet)
    lines = [f"{name} {qtype} for client {client}" + (f"/{subnet} (ECS)" if subnet is not None else "")]
    if e["kind"] != "geo":
        lines.append(f"  not a geo name: {e['kind']} ({e['rcode']}), answers {e['answers']}")
        return "\n".join(lines)
    lines.append(f"  database  {path}")
    lines.append(f"  location  {e['location']}" + (f", ECS scope /{e['scope']}" if subnet is not None else ""))
    if e["location"] == "unknown location":
        lines.append(f"  unknown location: nodes of the default region {cfg.dns.default_region!r} first")
    lines.append("  nodes from the config (the mesh may mark some dead), nearest first:")
    for node_id, region, lat, lon, dist, addrs in e["candidates"]:
        mark = "*" if node_id in e["chosen"] else " "
        d = "    ?   " if dist is None else f"{dist:8.0f} km"
        lines.append(f"   {mark} {node_id:12} {region:12} ({lat:7.2f}, {lon:8.2f}) {d}  {', '.join(addrs)}")
    lines.append(f"  answer    {', '.join(e['answers']) or '(none: NODATA)'}")
    return "\n".join(lines)


def subnet_address(client: str, subnet: int | None) -> str:
    if subnet is None:
        return client
    return str(ipaddress.ip_network(f"{client}/{subnet}", strict=False).network_address)


class _OneAddress:
    """The geo source interface for one address, read straight from the database: the
    server's index gives the same location, but building it takes seconds."""

    version = 1

    def __init__(self, path: str, address: str) -> None:
        with maxminddb.open_database(path) as reader:
            record, prefix = reader.get_with_prefix_len(address)
        self.where = record_location(record)
        self.prefix = prefix
        self.current = self
        self.index = self

    def locate(self, packed: bytes) -> tuple[int, int]:
        return (0 if self.where else -1), self.prefix

    def coords(self, loc: int) -> tuple[float, float]:
        return self.where[0], self.where[1]

    def describe(self, loc: int) -> str:
        if loc < 0:
            return "unknown location"
        lat, lon, label = self.where
        return f"{label} ({lat:.2f}, {lon:.2f})"
