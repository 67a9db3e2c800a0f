"""The zone from the config: what each (name, type) gets, without any notion of clients.

Sans-IO and pure: ``Zone.resolve(qname_lower, qtype)`` returns a ``Resolution``; the
geo part (which nodes) is decided by the server from the client's location.
"""
from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, field

from farts.config import ConfigError
from farts.dns.config import DNSConfig
from fast import dns as fd

TYPES = {"A": fd.A, "AAAA": fd.AAAA, "CNAME": fd.CNAME, "TXT": fd.TXT, "MX": fd.MX,
         "CAA": fd.CAA, "NS": fd.NS}

# Kinds of resolution
REFUSED, NXDOMAIN, NODATA, ANSWER, GEO = "refused", "nxdomain", "nodata", "answer", "geo"
# Zone transfers and other meta queries are not served.
META_TYPES = frozenset({251, 252, 253, 254})   # IXFR, AXFR, MAILB, MAILA


@dataclass(frozen=True)
class GeoName:
    name: bytes        # the owner the answers carry (the query name for wildcards)
    answers: int
    ttl: int


@dataclass(frozen=True)
class Resolution:
    kind: str
    answers: tuple = ()
    authority: tuple = ()
    geo: GeoName | None = None
    rcode: int = fd.NOERROR


@dataclass
class _Node:
    records: dict[int, list] = field(default_factory=dict)
    geo: tuple[int, int] | None = None      # (answers, ttl)


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


class Zone:
    def __init__(self, cfg: DNSConfig, source: str = "<config>") -> None:
        self.apex = _norm(cfg.zone).encode()
        if not self.apex:
            raise ConfigError(f"{source}: dns.zone: expected a domain name, got \"\"")
        self._suffix = b"." + self.apex
        self._source = source
        self._names: dict[bytes, _Node] = {}
        self._geo_wildcards: list[tuple[bytes, int, int]] = []
        apex = self.apex.decode()
        ns = [_norm(n) for n in cfg.ns] or [f"ns1.{apex}"]
        mname = _norm(cfg.soa_mname) or ns[0]
        rname = _norm(cfg.soa_rname) or f"hostmaster.{apex}"
        self.soa = fd.Record(apex, fd.SOA, cfg.soa_minimum,
                             (mname, rname, cfg.soa_serial, cfg.soa_refresh, cfg.soa_retry,
                              cfg.soa_expire, cfg.soa_minimum))
        top = self._node(self.apex)
        top.records[fd.SOA] = [self.soa]
        top.records[fd.NS] = [fd.Record(apex, fd.NS, cfg.ttl, n) for n in ns]
        for i, r in enumerate(cfg.records):
            key = f"dns.records[{i}]"
            owner = self._owner(r.name, f"{key}.name")
            rtype = TYPES[r.type]
            ttl = cfg.ttl if r.ttl < 0 else r.ttl
            try:
                rec = fd.Record(owner, rtype, ttl, _value(rtype, r.value))
            except (ValueError, TypeError) as e:
                raise ConfigError(f"{source}: {key}.value: {r.type} {r.value!r}: {e}") from None
            node = self._node(owner)
            if rtype == fd.CNAME or fd.CNAME in node.records:
                if node.records or node.geo:
                    raise ConfigError(f"{source}: {key}: {r.name!r} has a CNAME and other data")
            node.records.setdefault(rtype, []).append(rec)
        for i, g in enumerate(cfg.geo):
            key = f"dns.geo[{i}].name"
            if g.name.startswith("*."):
                base = self._owner(g.name[2:], key)
                self._geo_wildcards.append((b"." + base, g.answers, g.ttl))
                self._node(base)   # the base name exists (NODATA unless it has data)
                continue
            owner = self._owner(g.name, key)
            node = self._node(owner)
            if fd.CNAME in node.records:
                raise ConfigError(f"{source}: {key}: {g.name!r} is also a CNAME")
            node.geo = (g.answers, g.ttl)
        # Longest wildcard base first: the most specific one wins.
        self._geo_wildcards.sort(key=lambda w: -len(w[0]))
        # Empty non-terminals: parents of names that exist, which exist too (NODATA).
        self._ents = {parent for n in self._names for parent in _parents(n, self.apex)}

    def _owner(self, name: str, key: str) -> bytes:
        n = name.strip()
        if n in ("@", ""):
            return self.apex
        if n.endswith("."):
            full = _norm(n).encode()
            if full != self.apex and not full.endswith(self._suffix):
                raise ConfigError(f"{self._source}: {key}: {name!r} is outside the zone {self.apex.decode()}")
            return full
        low = _norm(n).encode()
        if low == self.apex or low.endswith(self._suffix):
            return low
        return low + self._suffix

    def _node(self, owner: bytes) -> _Node:
        node = self._names.get(owner)
        if node is None:
            node = self._names[owner] = _Node()
        return node

    def set_txt(self, name: str, values: list[str], ttl: int = 0) -> bool:
        """Sets (or with no values, removes) the TXT records of ``name``, a name inside
        the zone, at run time: what a DNS-01 challenge publishes. False if outside."""
        owner = _norm(name).encode()
        if not self.contains(owner):
            return False
        if values:
            node = self._node(owner)
            node.records[fd.TXT] = [fd.Record(owner, fd.TXT, ttl, [v.encode()]) for v in values]
        else:
            node = self._names.get(owner)
            if node is not None:
                node.records.pop(fd.TXT, None)
                if not node.records and not node.geo:
                    del self._names[owner]
        self._ents = {parent for n in self._names for parent in _parents(n, self.apex)}
        return True

    def contains(self, qname_lower: bytes) -> bool:
        return qname_lower == self.apex or qname_lower.endswith(self._suffix)

    def geo_names(self) -> list[bytes]:
        return [n for n, node in self._names.items() if node.geo] + [b"*" + w[0] for w in self._geo_wildcards]

    def resolve(self, qname_lower: bytes, qtype: int) -> Resolution:
        if not self.contains(qname_lower):
            return Resolution(REFUSED, rcode=fd.REFUSED)
        neg = (self.soa,)
        node = self._names.get(qname_lower)
        geo = node.geo if node is not None else None
        if geo is None and node is None:
            for base, answers, ttl in self._geo_wildcards:
                if qname_lower.endswith(base):
                    geo = (answers, ttl)
                    break
        if node is None and geo is None:
            if qname_lower in self._ents:
                return Resolution(NODATA, authority=neg)
            return Resolution(NXDOMAIN, authority=neg, rcode=fd.NXDOMAIN)
        if qtype == fd.ANY:   # RFC 8482: one synthesized record, not everything we have
            return Resolution(ANSWER, answers=(fd.Record(qname_lower, fd.HINFO, 3600, (b"RFC8482", b"")),))
        if geo is not None and qtype in (fd.A, fd.AAAA):
            return Resolution(GEO, geo=GeoName(qname_lower, *geo))
        records = node.records if node is not None else {}
        found = records.get(qtype)
        if found:
            return Resolution(ANSWER, answers=tuple(found))
        cname = records.get(fd.CNAME)
        if cname:
            return self._follow(cname[0], qtype)
        return Resolution(NODATA, authority=neg)

    def _follow(self, cname, qtype: int) -> Resolution:
        """The CNAME plus, for a target inside the zone with static data, that data."""
        target = _norm(cname.value.decode() if isinstance(cname.value, bytes) else cname.value).encode()
        node = self._names.get(target)
        if node is not None and not node.geo:
            extra = node.records.get(qtype, ())
            if extra:
                return Resolution(ANSWER, answers=(cname, *extra))
        if node is not None and node.geo and qtype in (fd.A, fd.AAAA):
            ans, ttl = node.geo
            return Resolution(GEO, answers=(cname,), geo=GeoName(target, ans, ttl))
        return Resolution(ANSWER, answers=(cname,))


def _parents(name: bytes, apex: bytes):
    while name != apex:
        name = name.split(b".", 1)[1]
        yield name


def _value(rtype: int, text: str):
    """Presentation form → what fast.dns.Record takes."""
    if rtype == fd.A:
        return ipaddress.IPv4Address(text.strip()).packed
    if rtype == fd.AAAA:
        return ipaddress.IPv6Address(text.strip()).packed
    if rtype in (fd.CNAME, fd.NS):
        return _norm(text.strip())
    if rtype == fd.MX:
        pref, host = text.split()
        return int(pref), _norm(host)
    if rtype == fd.TXT:
        parts = shlex.split(text) if text.strip().startswith('"') else [text]
        return [p.encode() for p in parts]
    if rtype == fd.CAA:
        flags, tag, value = shlex.split(text)
        return int(flags), tag.encode(), value.encode()
    raise ValueError(f"unsupported type {rtype}")
