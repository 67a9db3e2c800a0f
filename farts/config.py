"""One TOML file → frozen dataclasses.

Every error names the file and the key path (``listeners.https.port: expected an
integer 1-65535, got "x"``) because the operator reading it has only the file open.
Validation is driven by the dataclass fields themselves: each field's type says what
the TOML value must be, and ``metadata["check"]`` adds a range or a choice, so adding a
setting is adding one field.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad config value; the message names the file and the key path."""


class Check:
    """A rule for a value beyond its type: ``ok(value)`` and the words for what is expected."""

    def __init__(self, ok, expected: str) -> None:
        self.ok, self.expected = ok, expected


def _address_ok(v: str) -> bool:
    host, sep, port = v.rpartition(":")
    return bool(sep and host and port.isdigit() and 1 <= int(port) <= 65535)


PORT = Check(lambda v: 0 <= v <= 65535, "an integer 0-65535 (0: any free port)")
POSITIVE = Check(lambda v: v > 0, "a positive number")
NON_NEGATIVE = Check(lambda v: v >= 0, "a number >= 0")
FRACTION = Check(lambda v: 0 <= v <= 1, "a number between 0 and 1")
PREFIX = Check(lambda v: v.startswith("/"), "a path prefix starting with '/'")
ADDRESSES = Check(lambda v: bool(v) and all(_address_ok(s) for s in v), "a non-empty list of 'host:port'")


def _one_of(*choices) -> Check:
    return Check(lambda v: v in choices, "one of " + ", ".join(json.dumps(c) for c in choices))


def _checked(default: Any = dataclasses.MISSING, check=None, **kw) -> Any:
    if default is not dataclasses.MISSING and isinstance(default, (list, dict)):
        kw["default_factory"] = (lambda d=default: type(d)(d))
    elif default is not dataclasses.MISSING:
        kw["default"] = default
    return field(metadata={"check": check} if check else {}, **kw)


@dataclass(frozen=True)
class NodeConfig:
    id: str = "node-1"
    region: str = "local"
    lat: float = _checked(0.0, Check(lambda v: -90 <= v <= 90, "a latitude -90..90"))
    lon: float = _checked(0.0, Check(lambda v: -180 <= v <= 180, "a longitude -180..180"))
    data_dir: str = "./farts-data"


@dataclass(frozen=True)
class ListenerConfig:
    host: str = "127.0.0.1"
    port: int = _checked(8080, PORT)
    enabled: bool = True


@dataclass(frozen=True)
class TLSListenerConfig:
    host: str = "127.0.0.1"
    port: int = _checked(8443, PORT)
    enabled: bool = True
    # Directory of <name>.crt/<name>.key pairs (relative to node.data_dir); the SNI
    # name picks the pair whose certificate covers it, the first pair is the default.
    cert_dir: str = "certs"
    # Seconds between checks of cert_dir for changed files (hot reload).
    reload_interval: float = _checked(2.0, POSITIVE)


@dataclass(frozen=True)
class Listeners:
    http: ListenerConfig = field(default_factory=ListenerConfig)
    https: TLSListenerConfig = field(default_factory=TLSListenerConfig)
    admin: ListenerConfig = field(default_factory=lambda: ListenerConfig(port=9100))


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = _checked(16384, Check(lambda v: v >= 256, "an integer >= 256"))
    max_headers: int = _checked(100, POSITIVE)
    max_body_bytes: int = _checked(10 * 1024 * 1024, NON_NEGATIVE)
    header_timeout: float = _checked(10.0, POSITIVE)
    idle_timeout: float = _checked(75.0, POSITIVE)
    max_connections: int = _checked(10000, POSITIVE)
    max_connections_per_ip: int = _checked(1000, POSITIVE)
    slow_request_seconds: float = _checked(0.1, POSITIVE)


@dataclass(frozen=True)
class Tenant:
    id: str
    hosts: list[str]
    api_keys: list[str] = _checked([])
    secret: str = ""


@dataclass(frozen=True)
class Route:
    prefix: str = _checked(check=PREFIX)
    kind: str = _checked(check=_one_of("proxy", "static", "admin", "pubsub", "cdn"))
    # kind = "proxy": the name of an upstream group.
    upstream: str = ""
    # kind = "static": a fixed response.
    # 1xx, 204 and 304 carry no body by definition: a fixed answer with one would be
    # read by clients as the start of the next response.
    status: int = _checked(200, Check(lambda v: 200 <= v <= 599 and v not in (204, 304),
                                      "an HTTP status 200-599 other than 204 and 304"))
    body: str = ""
    content_type: str = "text/plain; charset=utf-8"
    # Only for these tenants (empty: every tenant).
    tenants: list[str] = _checked([])
    # Overrides limits.max_body_bytes for requests on this route.
    max_body_bytes: int = _checked(-1, Check(lambda v: v >= -1, "a number >= 0, or -1"))
    # kind = "cdn": the name of a [cdn.origins.<name>] entry.
    origin: str = ""


@dataclass(frozen=True)
class Upstream:
    servers: list[str] = _checked(check=ADDRESSES)
    connect_timeout: float = _checked(2.0, POSITIVE)
    read_timeout: float = _checked(30.0, POSITIVE)
    # Connect failures in a row that mark a server down, and for how long.
    max_fails: int = _checked(2, POSITIVE)
    fail_timeout: float = _checked(10.0, POSITIVE)
    # Idle keep-alive connections kept per server. Below the number of requests in
    # flight, connections churn: a connect per request costs more than the request.
    pool_size: int = _checked(128, NON_NEGATIVE)


@dataclass(frozen=True)
class HTTPConfig:
    # Status for a Host that belongs to no tenant: 421 (Misdirected) or 404.
    unknown_host_status: int = _checked(421, _one_of(404, 421))
    # Access log as JSON lines: fraction of requests logged (0 = off, 1 = every one).
    access_log_sample: float = _checked(0.0, FRACTION)
    access_log: str = ""  # a file path; empty = standard error


# ---- service sections: each service owns its dataclass below (one per service) ----


@dataclass(frozen=True)
class PubSubConfig:
    # Events kept per channel for resume: the last history_size, at most history_seconds old.
    history_size: int = _checked(100, POSITIVE)
    history_seconds: float = _checked(300.0, POSITIVE)
    # A subscriber whose unsent bytes pass this is disconnected (close 1008).
    max_buffer_bytes: int = _checked(1024 * 1024, POSITIVE)
    # Largest client→server WebSocket message (a command); bigger ones close with 1009.
    max_command_bytes: int = _checked(65536, Check(lambda v: v >= 125, "an integer >= 125"))
    max_subscriptions: int = _checked(256, POSITIVE)     # per connection
    max_batch: int = _checked(1000, POSITIVE)            # messages in one publish request
    # Seconds between server pings (WebSocket) and heartbeats (SSE); a WebSocket client
    # silent for two intervals is closed.
    ping_interval: float = _checked(20.0, POSITIVE)


@dataclass(frozen=True)
class CDNOrigin:
    # "http": url is the base URL the path after the route prefix is appended to;
    # "s3": url is the endpoint, objects are path-style <url>/<bucket>/<key>, signed with
    # AWS Signature V4 when access_key_id is set; "dir": files under path (relative to
    # data_dir), the built-in origin of `farts-edge up`.
    kind: str = _checked("http", _one_of("http", "s3", "dir"))
    url: str = _checked("", Check(lambda v: v == "" or v.startswith(("http://", "https://")),
                                  "an http:// or https:// URL"))
    bucket: str = ""
    region: str = "us-east-1"
    access_key_id: str = ""
    secret_access_key: str = ""
    path: str = "origin"
    connect_timeout: float = _checked(2.0, POSITIVE)
    read_timeout: float = _checked(30.0, POSITIVE)


@dataclass(frozen=True)
class CDNConfig:
    # Bytes of object bodies kept under data_dir/cache; least recently used go first.
    capacity_bytes: int = _checked(1024 * 1024 * 1024, POSITIVE)
    # Larger objects are passed through to the client, not stored.
    max_object_bytes: int = _checked(256 * 1024 * 1024, POSITIVE)
    # Objects up to this size are also kept in memory as a ready response (0: none), up
    # to memory_capacity_bytes in all.
    memory_object_bytes: int = _checked(16 * 1024, NON_NEGATIVE)
    memory_capacity_bytes: int = _checked(64 * 1024 * 1024, NON_NEGATIVE)
    # Seconds to keep origin 404/410 answers (0: not cached); 5xx are never cached.
    negative_ttl: float = _checked(0.0, NON_NEGATIVE)
    # Seconds between flushes of the recency order to LMDB (what a restart keeps).
    flush_interval: float = _checked(2.0, POSITIVE)
    origins: dict[str, CDNOrigin] = _checked({})


@dataclass(frozen=True)
class DNSRecord:
    # "@" is the apex; a name without a final dot is relative to the zone.
    name: str
    type: str = _checked(check=_one_of("A", "AAAA", "CNAME", "TXT", "MX", "CAA", "NS"))
    # Presentation form: "192.0.2.1", "10 mail.example.com.", '0 issue "letsencrypt.org"'.
    value: str = _checked()
    ttl: int = _checked(-1, Check(lambda v: v >= -1, "an integer >= 0, or -1 (dns.ttl)"))


@dataclass(frozen=True)
class DNSGeoName:
    # Answers A/AAAA with the nearest live nodes; "*.edge" also covers every name below it.
    name: str
    answers: int = _checked(2, POSITIVE)
    ttl: int = _checked(30, NON_NEGATIVE)


@dataclass(frozen=True)
class DNSNode:
    """A node the geo names may return (the static map until the mesh reports them)."""
    id: str
    region: str = ""
    lat: float = _checked(0.0, Check(lambda v: -90 <= v <= 90, "a latitude -90..90"))
    lon: float = _checked(0.0, Check(lambda v: -180 <= v <= 180, "a longitude -180..180"))
    addresses: list[str] = _checked([])


@dataclass(frozen=True)
class DNSConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = _checked(5353, PORT)
    zone: str = "farts.test"
    ttl: int = _checked(300, NON_NEGATIVE)   # static records without their own ttl
    # SOA: mname defaults to the first NS, rname to hostmaster.<zone>.
    soa_mname: str = ""
    soa_rname: str = ""
    soa_serial: int = _checked(1, NON_NEGATIVE)
    soa_refresh: int = _checked(3600, NON_NEGATIVE)
    soa_retry: int = _checked(600, NON_NEGATIVE)
    soa_expire: int = _checked(604800, NON_NEGATIVE)
    soa_minimum: int = _checked(30, NON_NEGATIVE)   # negative-answer TTL (RFC 2308)
    ns: list[str] = _checked([])                    # default: ns1.<zone>
    records: list[DNSRecord] = _checked([])
    geo: list[DNSGeoName] = _checked([])
    nodes: list[DNSNode] = _checked([])
    # Region whose nodes clients of unknown location get (empty: the first nodes listed).
    default_region: str = ""
    geoip_database: str = ""                         # empty: the bundled GeoLite2 City
    rebuild_interval: float = _checked(604800.0, POSITIVE)   # seconds; file changes rebuild at once
    # Response rate limiting per client /24 (IPv4) or /56 (IPv6), UDP only.
    rrl_rate: float = _checked(200.0, NON_NEGATIVE)  # responses/s (0: no limit)
    rrl_burst: float = _checked(400.0, POSITIVE)
    rrl_slip: int = _checked(2, NON_NEGATIVE)        # every Nth limited reply goes out truncated (0: none)
    tcp_idle_timeout: float = _checked(10.0, POSITIVE)
    max_tcp_connections: int = _checked(1000, POSITIVE)


@dataclass(frozen=True)
class DBUser:
    name: str
    password: str
    tenant: str   # the user sees only this tenant's databases


@dataclass(frozen=True)
class DBConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = _checked(27017, PORT)
    # false: no authentication needed (MongoDB's localhost exception); true: SCRAM-SHA-256 first.
    auth: bool = False
    users: list[DBUser] = _checked([])
    # fsync every commit before acknowledging a write (group commit shares one fsync).
    sync: bool = True
    max_message_bytes: int = _checked(48_000_000, Check(lambda v: 1024 <= v <= 48_000_000,
                                                          "an integer 1024-48000000"))
    # The largest the LMDB file may grow to (address space; the file grows as used).
    map_size: int = _checked(4 << 30, Check(lambda v: v >= 1 << 20, "an integer >= 1048576"))
    # Connections beyond this are closed on accept (drivers keep pools of them open).
    max_connections: int = _checked(10000, POSITIVE)
    # Secondary indexes over all collections and tenants (each is an LMDB sub-database,
    # and every read transaction costs more the more of them are allowed).
    max_indexes: int = _checked(500, Check(lambda v: 1 <= v <= 30000, "an integer 1-30000"))


@dataclass(frozen=True)
class MeshConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = _checked(7946, PORT)
    seeds: list[str] = _checked([], Check(lambda v: all(_address_ok(s) for s in v), "a list of 'host:port'"))
    # "host:port" peers dial to reach this node (empty: host:port above).
    advertise: str = _checked("", Check(lambda v: not v or _address_ok(v), "'host:port' or empty"))
    # Addresses clients are sent to (the DNS answers with them); empty: the HTTP listener's host.
    public_addresses: list[str] = _checked([])
    # The cluster CA and this node's certificate (CN and URI SAN farts-node:<node.id>),
    # relative to data_dir; `farts-edge ca init/issue` writes them.
    ca: str = "mesh/ca.crt"
    cert: str = "mesh/node.crt"
    key: str = "mesh/node.key"
    # SWIM: one probe per interval, an ack within probe_timeout or k indirect probes,
    # then suspicion for suspicion_timeout (x log10(members) past 10 members, up to
    # suspicion_max_mult times more while no other member confirms) before "dead".
    probe_interval: float = _checked(1.0, POSITIVE)
    probe_timeout: float = _checked(0.5, POSITIVE)
    indirect_probes: int = _checked(3, NON_NEGATIVE)
    suspicion_timeout: float = _checked(1.5, POSITIVE)
    suspicion_max_mult: float = _checked(2.0, Check(lambda v: v >= 1, "a number >= 1"))
    retransmit_mult: int = _checked(4, POSITIVE)
    push_pull_interval: float = _checked(15.0, POSITIVE)
    # Links: redial backoff (doubling, with jitter), handshake limit, frame and queue limits.
    reconnect_min: float = _checked(0.1, POSITIVE)
    reconnect_max: float = _checked(5.0, POSITIVE)
    handshake_timeout: float = _checked(5.0, POSITIVE)
    max_frame_bytes: int = _checked(1024 * 1024, Check(lambda v: v >= 1024, "an integer >= 1024"))
    queue_max_bytes: int = _checked(8 * 1024 * 1024, POSITIVE)


@dataclass(frozen=True)
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    listeners: Listeners = field(default_factory=Listeners)
    limits: Limits = field(default_factory=Limits)
    http: HTTPConfig = field(default_factory=HTTPConfig)
    tenants: list[Tenant] = _checked([])
    routes: list[Route] = _checked([])
    upstreams: dict[str, Upstream] = _checked({})
    pubsub: PubSubConfig = field(default_factory=PubSubConfig)
    cdn: CDNConfig = field(default_factory=CDNConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    db: DBConfig = field(default_factory=DBConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    # Where the file was read from; relative paths in it are relative to data_dir,
    # and data_dir itself to the file's folder.
    source: str = field(default="<defaults>", metadata={"internal": True})

    @property
    def data_dir(self) -> Path:
        base = Path(self.source).parent if self.source != "<defaults>" else Path.cwd()
        return (base / self.node.data_dir).resolve()

    def path(self, relative: str) -> Path:
        return self.data_dir / relative


def _show(value: Any) -> str:
    """A value as it would look in TOML, so the message quotes what the file says."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "a table"
    return json.dumps(value, default=str)


def _convert(value: Any, tp: Any, path: str, source: str, check: Check | None = None) -> Any:
    def fail(expected: str) -> typing.NoReturn:
        if check is not None:  # "an integer 1-65535" says more than "an integer"
            expected = check.expected
        raise ConfigError(f"{source}: {path}: expected {expected}, got {_show(value)}")

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            fail("a table")
        return _build(tp, value, path, source)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            fail("a list")
        return [_convert(v, item, f"{path}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            fail("a table")
        return {k: _convert(v, item, f"{path}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            fail("a string")
        return value
    raise TypeError(f"unsupported config type {tp!r}")  # a bug here, not in the file


def _build(cls: type, table: dict, path: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    prefix = f"{path}." if path else ""
    for key in table:
        if key not in fields:
            raise ConfigError(f"{source}: {prefix}{key}: unknown key (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        key_path = prefix + name
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: {key_path}: required key is missing")
            continue
        check = f.metadata.get("check")
        value = _convert(table[name], hints[name], key_path, source, check)
        if check is not None and not check.ok(value):
            raise ConfigError(f"{source}: {key_path}: expected {check.expected}, got {_show(table[name])}")
        kwargs[name] = value
    return cls(**kwargs)


def _cross_check(cfg: Config) -> None:
    """Rules that involve more than one key."""
    src = cfg.source
    for name, o in cfg.cdn.origins.items():
        if o.kind in ("http", "s3") and not o.url:
            raise ConfigError(f"{src}: cdn.origins.{name}.url: required for kind = \"{o.kind}\"")
        if o.kind == "s3" and not o.bucket:
            raise ConfigError(f"{src}: cdn.origins.{name}.bucket: required for kind = \"s3\"")
    tenant_ids = set()
    hosts: dict[str, str] = {}
    for i, t in enumerate(cfg.tenants):
        if t.id in tenant_ids:
            raise ConfigError(f"{src}: tenants[{i}].id: duplicate tenant id {t.id!r}")
        tenant_ids.add(t.id)
        for host in t.hosts:
            if host.lower() in hosts:
                raise ConfigError(f"{src}: tenants[{i}].hosts: {host!r} already belongs to tenant {hosts[host.lower()]!r}")
            hosts[host.lower()] = t.id
    for i, r in enumerate(cfg.routes):
        if r.kind == "proxy":
            if not r.upstream:
                raise ConfigError(f"{src}: routes[{i}].upstream: required for kind = \"proxy\"")
            if r.upstream not in cfg.upstreams:
                raise ConfigError(f"{src}: routes[{i}].upstream: no upstream named {r.upstream!r} (known: {', '.join(cfg.upstreams) or 'none'})")
        if r.kind == "cdn" and r.origin not in cfg.cdn.origins:
            raise ConfigError(f"{src}: routes[{i}].origin: no CDN origin named {r.origin!r} (known: {', '.join(cfg.cdn.origins) or 'none'})")
        for t in r.tenants:
            if t not in tenant_ids:
                raise ConfigError(f"{src}: routes[{i}].tenants: no tenant named {t!r}")


def parse(text: str, source: str = "<string>") -> Config:
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    cfg = dataclasses.replace(_build(Config, table, "", source), source=source)
    _cross_check(cfg)
    return cfg


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return parse(text, str(path.resolve()))


# Kept next to the dataclasses so a new setting gets its line here in the same change;
# a test parses it, so it cannot drift from what load() accepts.
EXAMPLE = '''\
# farts-edge node configuration. Every key is optional unless marked required.

[node]
id = "node-1"               # unique in the deployment
region = "eu-central"
lat = 50.11                 # coordinates, used by the geo DNS
lon = 8.68
data_dir = "./farts-data"   # relative to this file; certs, caches and the DB live here

[listeners.http]
host = "127.0.0.1"
port = 8080

[listeners.https]
host = "127.0.0.1"
port = 8443
cert_dir = "certs"          # <name>.crt + <name>.key pairs, relative to data_dir; reloaded when changed
reload_interval = 2.0

[listeners.admin]           # /metrics, /healthz
host = "127.0.0.1"
port = 9100

[limits]
max_header_bytes = 16384    # larger header sections get 431
max_headers = 100
max_body_bytes = 10485760   # larger bodies get 413 (routes may override)
header_timeout = 10.0       # seconds to send a whole header section, else 408
idle_timeout = 75.0         # keep-alive idle seconds
max_connections = 10000
max_connections_per_ip = 1000
slow_request_seconds = 0.1  # requests slower than this are counted and logged

[http]
unknown_host_status = 421   # or 404
access_log_sample = 0.0     # 0 = off, 1 = every request, 0.01 = one in a hundred
access_log = ""             # file path; empty = standard error

[[tenants]]
id = "demo"                 # required
hosts = ["localhost", "127.0.0.1"]   # required
api_keys = ["demo-key"]
secret = "change-me"

[upstreams.app]
servers = ["127.0.0.1:3000"]   # required
connect_timeout = 2.0
read_timeout = 30.0
max_fails = 2               # connect failures in a row that mark a server down
fail_timeout = 10.0         # for this many seconds
pool_size = 128             # idle keep-alive connections per server

[[routes]]
prefix = "/widget/"         # required
kind = "proxy"              # required: proxy, static or admin
upstream = "app"

[[routes]]
prefix = "/hello"
kind = "static"
status = 200
body = "hello from farts-edge\\n"
content_type = "text/plain; charset=utf-8"
tenants = []                # empty: every tenant
max_body_bytes = -1         # -1: limits.max_body_bytes

[pubsub]
history_size = 100          # events kept per channel for resume ...
history_seconds = 300.0     # ... and at most this old
max_buffer_bytes = 1048576  # a subscriber with more unsent bytes is dropped (close 1008)
max_command_bytes = 65536   # largest WebSocket command from a client (else close 1009)
max_subscriptions = 256     # channels per connection
max_batch = 1000            # messages per publish request
ping_interval = 20.0        # seconds between pings/heartbeats; silent clients go after two

[cdn]
capacity_bytes = 1073741824 # bytes of cached bodies under data_dir/cache (LRU eviction)
max_object_bytes = 268435456  # larger objects are passed through, not stored
memory_object_bytes = 16384 # objects up to this size are also served from memory ...
memory_capacity_bytes = 67108864  # ... up to this many bytes in all
negative_ttl = 0.0          # seconds to cache origin 404/410 (0: never); 5xx never
flush_interval = 2.0        # seconds between flushes of the recency order (kept by restarts)

[cdn.origins.media]         # routes of kind "cdn" name one of these
kind = "http"               # http (url = base URL), s3 (url = endpoint, path-style) or dir (path)
url = "http://127.0.0.1:9000/media/"
connect_timeout = 2.0       # seconds; a failed connect answers 502
read_timeout = 30.0         # seconds without a byte from the origin answers 504

[cdn.origins.assets]
kind = "s3"
url = "http://127.0.0.1:9001"
bucket = "assets"
region = "us-east-1"
access_key_id = ""          # empty: unsigned requests (a public bucket)
secret_access_key = ""
# and a route to an origin:  [[routes]]  prefix = "/media/"  kind = "cdn"  origin = "media"

[dns]
enabled = false
host = "127.0.0.1"
port = 5353                 # UDP and TCP (53 in production)
zone = "example.com"        # authoritative for this zone only; other names get REFUSED
ttl = 300                   # static records without a ttl
ns = ["ns1.example.com"]
soa_rname = "hostmaster.example.com"
soa_serial = 1
soa_minimum = 30            # TTL of NXDOMAIN/NODATA answers
default_region = "eu-central"   # clients the database cannot place get this region's nodes
geoip_database = ""         # a GeoIP2/GeoLite2 City or Country .mmdb; empty: the bundled GeoLite2 City
rebuild_interval = 604800.0 # seconds; a changed file is picked up within seconds anyway
rrl_rate = 200.0            # responses/s per client /24 or /56 over UDP (0: unlimited) ...
rrl_burst = 400.0
rrl_slip = 2                # ... every 2nd limited reply is sent truncated (TC) instead of dropped

[[dns.geo]]                 # answered with the nearest live nodes
name = "edge"               # edge.example.com; "*.edge" covers names below it too
answers = 2
ttl = 30

[[dns.records]]
name = "@"
type = "MX"
value = "10 mail.example.com."

[[dns.records]]
name = "www"
type = "CNAME"
value = "edge.example.com."

[[dns.nodes]]               # until the mesh runs: the nodes geo names may return
id = "node-1"
region = "eu-central"
lat = 50.11
lon = 8.68
addresses = ["192.0.2.10", "2001:db8::10"]

[db]
enabled = false
host = "127.0.0.1"
port = 27017                # MongoDB wire protocol
auth = false                # true: every client authenticates (SCRAM-SHA-256) as a user below
sync = true                 # fsync before acknowledging writes
max_message_bytes = 48000000
map_size = 4294967296       # upper bound of the LMDB file under data_dir/db
max_connections = 10000
max_indexes = 500           # secondary indexes, all tenants together

[[db.users]]                # each user sees only its tenant's databases
name = "app"                # required
password = "change-me"      # required
tenant = "demo"             # required

[mesh]
enabled = false
host = "127.0.0.1"
port = 7946
seeds = []                  # "host:port" of other nodes (one is enough)
advertise = ""              # "host:port" peers dial; empty: host:port above
public_addresses = []       # what the DNS answers with; empty: the HTTP listener's host
ca = "mesh/ca.crt"          # cluster CA (`farts-edge ca init`), relative to data_dir
cert = "mesh/node.crt"      # this node's certificate, id in it (`farts-edge ca issue NODE_ID`)
key = "mesh/node.key"
probe_interval = 1.0        # seconds between probes (SWIM protocol period)
probe_timeout = 0.5         # direct ack wait before indirect probes
indirect_probes = 3         # members asked to probe for us when the direct probe fails
suspicion_timeout = 1.5     # suspect -> dead (x log10(members) past 10 members)
suspicion_max_mult = 2.0    # ... up to this many times longer while nobody confirms
retransmit_mult = 4         # each change is piggybacked retransmit_mult x log10(members) times
push_pull_interval = 15.0   # full state exchange with one random member
reconnect_min = 0.1         # link redial backoff: doubling from here ...
reconnect_max = 5.0         # ... up to here, with jitter
handshake_timeout = 5.0     # TLS + HELLO must finish within this
max_frame_bytes = 1048576   # a larger frame closes the link
queue_max_bytes = 8388608   # a peer with more unsent bytes is disconnected
'''
