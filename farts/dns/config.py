"""The DNS config section ``[dns]``."""
from __future__ import annotations

from dataclasses import dataclass

from farts.config import NON_NEGATIVE, PORT, POSITIVE, Check, Section, one_of, setting


@dataclass(frozen=True)
class DNSRecord:
    # "@" is the apex; a name without a final dot is relative to the zone.
    name: str
    type: str = setting(check=one_of("A", "AAAA", "CNAME", "TXT", "MX", "CAA", "NS"))
    # Presentation form: "192.0.2.1", "10 mail.example.com.", '0 issue "letsencrypt.org"'.
    value: str = setting()
    ttl: int = setting(-1, Check(lambda v: v >= -1, "an integer >= 0, or -1 (dns.ttl)"))


@dataclass(frozen=True)
class DNSGeoName:
    # Answers A/AAAA with the nearest live nodes; "*.edge" also covers every name below it.
    name: str
    answers: int = setting(2, POSITIVE)
    ttl: int = setting(30, NON_NEGATIVE)


@dataclass(frozen=True)
class DNSNode:
    """A node the geo names may return (the static map until the mesh reports them)."""
    id: str
    region: str = ""
    lat: float = setting(0.0, Check(lambda v: -90 <= v <= 90, "a latitude -90..90"))
    lon: float = setting(0.0, Check(lambda v: -180 <= v <= 180, "a longitude -180..180"))
    addresses: list[str] = setting([])


@dataclass(frozen=True)
class DNSConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = setting(5353, PORT)
    zone: str = "farts.test"
    ttl: int = setting(300, NON_NEGATIVE)   # static records without their own ttl
    # SOA: mname defaults to the first NS, rname to hostmaster.<zone>.
    soa_mname: str = ""
    soa_rname: str = ""
    soa_serial: int = setting(1, NON_NEGATIVE)
    soa_refresh: int = setting(3600, NON_NEGATIVE)
    soa_retry: int = setting(600, NON_NEGATIVE)
    soa_expire: int = setting(604800, NON_NEGATIVE)
    soa_minimum: int = setting(30, NON_NEGATIVE)   # negative-answer TTL (RFC 2308)
    ns: list[str] = setting([])                    # default: ns1.<zone>
    records: list[DNSRecord] = setting([])
    geo: list[DNSGeoName] = setting([])
    nodes: list[DNSNode] = setting([])
    # Region whose nodes clients of unknown location get (empty: the first nodes listed).
    default_region: str = ""
    # A node whose load figure (shared through the mesh: 0 idle .. 1 at its limits) is at
    # or over this is given out only after every node with room (above 1: never).
    load_threshold: float = setting(0.9, POSITIVE)
    geoip_database: str = ""                         # empty: the bundled GeoLite2 City
    rebuild_interval: float = setting(604800.0, POSITIVE)   # seconds; file changes rebuild at once
    # Response rate limiting per client /24 (IPv4) or /56 (IPv6), UDP only.
    rrl_rate: float = setting(200.0, NON_NEGATIVE)  # responses/s (0: no limit)
    rrl_burst: float = setting(400.0, POSITIVE)
    rrl_slip: int = setting(2, NON_NEGATIVE)        # every Nth limited reply goes out truncated (0: none)
    tcp_idle_timeout: float = setting(10.0, POSITIVE)
    max_tcp_connections: int = setting(1000, POSITIVE)


def _cross_check(cfg) -> None:
    # The zone the DNS service builds at start, built here too: `config check` and
    # `serve` refuse the same records with the same error (one validation path).
    if cfg.dns.enabled:
        from farts.dns.zone import Zone
        Zone(cfg.dns, cfg.source)


SECTION = Section("dns", DNSConfig, DNSConfig, _cross_check)
