"""One TOML file → frozen dataclasses.

Every error names the file and the key path (``listeners.https.port: expected an
integer 1-65535, got "x"``) because the operator reading it has only the file open.
Validation is driven by the dataclass fields themselves: each field's type says what
the TOML value must be, and ``metadata["check"]`` adds a range or a choice, so adding a
setting is adding one field.

This module holds the loader and the shared sections (node, listeners, limits, http,
tenants, routes). Each service owns its section in ``farts/<service>/config.py`` (a
``Section``: its name, its dataclass, the rules across keys, its route kinds), and
the composition root (``farts/node.py``, its table of services) registers them; a
registered section reads as ``cfg.<name>`` like a shared one.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farts.cores import usable_cores


class ConfigError(ValueError):
    """A bad config value; the message names the file and the key path."""


class Check:
    """A rule for a value beyond its type: ``ok(value)`` and the words for what is expected."""

    def __init__(self, ok, expected: str) -> None:
        self.ok, self.expected = ok, expected


def address_ok(v: str) -> bool:
    host, sep, port = v.rpartition(":")
    return bool(sep and host and port.isdigit() and 1 <= int(port) <= 65535)


PORT = Check(lambda v: 0 <= v <= 65535, "an integer 0-65535 (0: any free port)")
POSITIVE = Check(lambda v: v > 0, "a positive number")
NON_NEGATIVE = Check(lambda v: v >= 0, "a number >= 0")
FRACTION = Check(lambda v: 0 <= v <= 1, "a number between 0 and 1")
PREFIX = Check(lambda v: v.startswith("/"), "a path prefix starting with '/'")
ADDRESSES = Check(lambda v: bool(v) and all(address_ok(s) for s in v), "a non-empty list of 'host:port'")


def one_of(*choices) -> Check:
    return Check(lambda v: v in choices, "one of " + ", ".join(json.dumps(c) for c in choices))


# ---- the sections services register ----------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A service's config section: ``[name]`` parsed as ``type`` (a config dataclass, or
    ``dict[str, Dataclass]`` for named tables), ``default()`` when absent, ``cross_check(cfg)``
    for rules involving other keys, and the route kinds the service serves."""
    name: str
    type: Any
    default: Callable[[], Any]
    cross_check: Callable[[Config], None] | None = None
    route_kinds: tuple[str, ...] = ()


SHARED_ROUTE_KINDS = ("static", "admin")
_sections: dict[str, Section] = {}


def register(section: Section) -> None:
    """Called by the composition root for each service; registering the same again is a no-op."""
    known = _sections.get(section.name)
    if known is not None and known != section:
        raise ValueError(f"config section {section.name!r} registered twice")
    _sections[section.name] = section


def sections() -> dict[str, Section]:
    """The registered sections, filled by the composition root (imported here on first use,
    so a bare ``config.parse`` knows every section a node would)."""
    if not _sections:
        importlib.import_module("farts.node")
    return _sections


def route_kinds() -> tuple[str, ...]:
    kinds = [k for s in sections().values() for k in s.route_kinds]
    return (*kinds[:1], *SHARED_ROUTE_KINDS, *kinds[1:])


class _RouteKind(Check):
    """one_of the registered route kinds, read when checked (registration comes later)."""

    def __init__(self) -> None:
        self.ok = lambda v: v in route_kinds()

    @property
    def expected(self) -> str:
        return one_of(*route_kinds()).expected


def setting(default: Any = dataclasses.MISSING, check=None, **kw) -> Any:
    if default is not dataclasses.MISSING and isinstance(default, (list, dict)):
        kw["default_factory"] = (lambda d=default: type(d)(d))
    elif default is not dataclasses.MISSING:
        kw["default"] = default
    return field(metadata={"check": check} if check else {}, **kw)


@dataclass(frozen=True)
class NodeConfig:
    id: str = "node-1"
    region: str = "local"
    lat: float = setting(0.0, Check(lambda v: -90 <= v <= 90, "a latitude -90..90"))
    lon: float = setting(0.0, Check(lambda v: -180 <= v <= 180, "a longitude -180..180"))
    data_dir: str = "./farts-data"
    # The deployment this node belongs to (one master per deployment: [master]).
    deployment: str = setting("global", Check(lambda v: bool(v) and len(v) <= 128, "a name"))
    # Processes serving the public listeners (HTTP/HTTPS, DNS, MongoDB): 1 serves them in the node
    # process itself; N > 1 starts N worker processes beside it (farts/workers/);
    # "auto" (the default): one per core this process may use (farts/cores.py).
    workers: int | str = setting("auto", Check(lambda v: v == "auto" or (isinstance(v, int) and 1 <= v <= 256),
                                               'a number of processes 1-256, or "auto"'))

    @property
    def worker_count(self) -> int:
        if self.workers == "auto":
            return usable_cores()
        return self.workers


@dataclass(frozen=True)
class ListenerConfig:
    host: str = "127.0.0.1"
    port: int = setting(8080, PORT)
    enabled: bool = True
    # HTTP/2 with prior knowledge (h2c) besides HTTP/1.1: the client preface decides.
    h2c: bool = False


@dataclass(frozen=True)
class TLSListenerConfig:
    host: str = "127.0.0.1"
    port: int = setting(8443, PORT)
    enabled: bool = True
    # Directory of <name>.crt/<name>.key pairs (relative to node.data_dir); the SNI
    # name picks the pair whose certificate covers it, the first pair is the default.
    cert_dir: str = "certs"
    # Seconds between checks of cert_dir for changed files (hot reload).
    reload_interval: float = setting(2.0, POSITIVE)
    # Offer HTTP/2 by ALPN ("h2", then "http/1.1").
    http2: bool = True


@dataclass(frozen=True)
class Listeners:
    http: ListenerConfig = field(default_factory=ListenerConfig)
    https: TLSListenerConfig = field(default_factory=TLSListenerConfig)
    admin: ListenerConfig = field(default_factory=lambda: ListenerConfig(port=9100))


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = setting(16384, Check(lambda v: v >= 256, "an integer >= 256"))
    max_headers: int = setting(100, POSITIVE)
    max_body_bytes: int = setting(10 * 1024 * 1024, NON_NEGATIVE)
    header_timeout: float = setting(10.0, POSITIVE)
    idle_timeout: float = setting(75.0, POSITIVE)
    max_connections: int = setting(10000, POSITIVE)
    max_connections_per_ip: int = setting(1000, POSITIVE)
    # TLS handshakes in flight on a TLS listener, in all and from one IP: more are refused
    # at accept (each one also has header_timeout to finish).
    max_tls_handshakes: int = setting(1024, POSITIVE)
    max_tls_handshakes_per_ip: int = setting(64, POSITIVE)
    slow_request_seconds: float = setting(0.1, POSITIVE)
    # HTTP/2: streams open at once per connection (more are refused, REFUSED_STREAM).
    max_concurrent_streams: int = setting(100, POSITIVE)


@dataclass(frozen=True)
class Tenant:
    id: str
    hosts: list[str]
    api_keys: list[str] = setting([])
    secret: str = ""


@dataclass(frozen=True)
class Route:
    prefix: str = setting(check=PREFIX)
    kind: str = setting(check=_RouteKind())
    # kind = "proxy": the name of an upstream group.
    upstream: str = ""
    # kind = "static": a fixed response.
    # 1xx, 204 and 304 carry no body by definition: a fixed answer with one would be
    # read by clients as the start of the next response.
    status: int = setting(200, Check(lambda v: 200 <= v <= 599 and v not in (204, 304),
                                      "an HTTP status 200-599 other than 204 and 304"))
    body: str = ""
    content_type: str = "text/plain; charset=utf-8"
    # Only for these tenants (empty: every tenant).
    tenants: list[str] = setting([])
    # Overrides limits.max_body_bytes for requests on this route.
    max_body_bytes: int = setting(-1, Check(lambda v: v >= -1, "a number >= 0, or -1"))
    # kind = "cdn": the name of a [cdn.origins.<name>] entry.
    origin: str = ""
    # kind = "cdn": the methods answered (empty: every method; GET must be one, HEAD
    # comes with it); others get a 405 naming these.  GET and HEAD meet the cache, the
    # rest go through to the origin.
    methods: list[str] = setting([])


@dataclass(frozen=True)
class HTTPConfig:
    # Status for a Host that belongs to no tenant: 421 (Misdirected) or 404.
    unknown_host_status: int = setting(421, one_of(404, 421))
    # Percent-encoded slashes (%2F) in a path: "pass" (kept as they are: not a separator
    # for routing, handed on encoded) or "reject" (400). Dot segments ("/../", "/./",
    # encoded or not, with either slash) are always refused with 400: routing by prefix
    # must see the path the application will see.
    encoded_slashes: str = setting("pass", one_of("pass", "reject"))
    # Access log as JSON lines: fraction of requests logged (0 = off, 1 = every one).
    access_log_sample: float = setting(0.0, FRACTION)
    access_log: str = ""  # a file path; empty = standard error


@dataclass(frozen=True)
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    listeners: Listeners = field(default_factory=Listeners)
    limits: Limits = field(default_factory=Limits)
    http: HTTPConfig = field(default_factory=HTTPConfig)
    tenants: list[Tenant] = setting([])
    routes: list[Route] = setting([])
    # The registered services' sections by name (read as cfg.<name>).
    sections: dict[str, Any] = field(default_factory=dict, metadata={"internal": True})
    # Where the file was read from; relative paths in it are relative to data_dir,
    # and data_dir itself to the file's folder.
    source: str = field(default="<defaults>", metadata={"internal": True})

    @property
    def data_dir(self) -> Path:
        base = Path(self.source).parent if self.source != "<defaults>" else Path.cwd()
        return (base / self.node.data_dir).resolve()

    def path(self, relative: str) -> Path:
        return self.data_dir / relative

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: a service's section.
        if name.startswith("__"):
            raise AttributeError(name)
        built = self.__dict__.get("sections", {})
        if name in built:
            return built[name]
        section = sections().get(name)
        if section is None:
            raise AttributeError(f"Config has no section {name!r}")
        return section.default()

    def with_section(self, name: str, value: Any) -> Config:
        """A copy with one service section replaced (``dataclasses.replace`` for sections)."""
        return dataclasses.replace(self, sections={**self.sections, name: value})


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
    if origin is types.UnionType:   # the first of the types the value is
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, path, source)
            except ConfigError:
                pass
        fail(" or ".join(t.__name__ for t in typing.get_args(tp)))
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
    """Rules that involve more than one key (the shared sections'; then each service's)."""
    src = cfg.source
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
        for t in r.tenants:
            if t not in tenant_ids:
                raise ConfigError(f"{src}: routes[{i}].tenants: no tenant named {t!r}")
    for section in sections().values():
        if section.cross_check is not None:
            section.cross_check(cfg)


def parse(text: str, source: str = "<string>") -> Config:
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    registered = sections()
    shared = [f.name for f in dataclasses.fields(Config) if not f.metadata.get("internal")]
    for key in table:
        if key not in shared and key not in registered:
            raise ConfigError(f"{source}: {key}: unknown key (known: {', '.join([*shared, *registered])})")
    built = {name: _convert(table[name], s.type, name, source) if name in table else s.default()
             for name, s in registered.items()}
    cfg = dataclasses.replace(_build(Config, {k: v for k, v in table.items() if k in shared}, "", source),
                              source=source, sections=built)
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
deployment = "global"       # one master per deployment ([master])
workers = "auto"            # processes serving HTTP/HTTPS, DNS, MongoDB: "auto" (one per core), or N; see README

[listeners.http]
host = "127.0.0.1"
port = 8080
h2c = false                 # also HTTP/2 with prior knowledge (the client preface decides)

[listeners.https]
host = "127.0.0.1"
port = 8443
cert_dir = "certs"          # <name>.crt + <name>.key pairs, relative to data_dir; reloaded when changed
reload_interval = 2.0
http2 = true                # ALPN offers h2, then http/1.1

[listeners.admin]           # the status page (/), /metrics, /healthz, /api/...
host = "127.0.0.1"          # anything but loopback needs admin.token
port = 9100

[admin]
token = ""                  # when set, admin requests but /healthz need "Authorization: Bearer <token>"
slow_requests_kept = 100    # the last slow requests kept for /api/slow and the status page
sample_interval = 1.0       # seconds between the status page's samples of every node ...
history_seconds = 900.0     # ... kept this long in memory for its charts

[limits]
max_header_bytes = 16384    # larger header sections get 431
max_headers = 100
max_body_bytes = 10485760   # larger bodies get 413 (routes may override)
header_timeout = 10.0       # seconds to send a whole header section, else 408
idle_timeout = 75.0         # keep-alive idle seconds
max_connections = 10000
max_connections_per_ip = 1000
max_tls_handshakes = 1024    # TLS handshakes in flight per TLS listener; more are refused at accept
max_tls_handshakes_per_ip = 64
slow_request_seconds = 0.1  # requests slower than this are counted (by route, tenant, region), logged, kept
max_concurrent_streams = 100  # HTTP/2 streams at once per connection; more get REFUSED_STREAM

[http]
unknown_host_status = 421   # or 404
encoded_slashes = "pass"    # %2F in paths: "pass" or "reject" (400); dot segments always get 400
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
request_buffering = true    # bodies up to request_buffer_bytes are read whole before forwarding
request_buffer_bytes = 1048576   # larger ones stream from the first byte once it is full
pipeline = 1                # GETs of one loop turn sent pipelined, this many per upstream write (1: off)

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
max_variants_per_uri = 16   # answers with Vary: variants kept per URI (the oldest goes first)
request_cache_control = "ignore"  # a client's Cache-Control: "ignore" (as nginx) or "honor" (RFC 9111 §5.2.1)
range_fill_min_bytes = 0     # >0: a Range miss asks the origin for that range (at least this many bytes) and stores the 206
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
# (optionally methods = ["GET", "POST"]: others get 405; default every method, GET and HEAD
# from the cache, the rest passed on to the origin)

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

# Static records: name ("@" the apex; no final dot = relative to the zone), type, value in
# presentation form, optional ttl. Types and their values:
#   A "192.0.2.1"   AAAA "2001:db8::1"   CNAME "edge.example.com."   NS "ns1.example.com."
#   MX "10 mail.example.com."   CAA '0 issue "letsencrypt.org"'
#   TXT: the text as it is (one string), or quoted strings '"part one" "part two"' for
#   several; each string at most 255 bytes (RFC 1035), longer text split into strings.
[[dns.records]]
name = "@"
type = "MX"
value = "10 mail.example.com."

[[dns.records]]
name = "www"
type = "CNAME"
value = "edge.example.com."

[[dns.records]]
name = "@"
type = "TXT"
value = '"v=spf1 mx -all"'

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

[webhooks]                  # outbound webhooks: a queue in the database, delivered by the master node
enabled = false             # needs [db]
window = 86400.0            # seconds a delivery is retried, then dead-lettered
backoff_min = 1.0           # delay after the first failure, doubling (with jitter) ...
backoff_max = 3600.0        # ... up to this
connect_timeout = 5.0
timeout = 10.0              # seconds for the receiver's answer
max_in_flight = 512         # attempts at once, all destinations
per_destination = 32        # attempts at once to one scheme://host:port
breaker_failures = 10       # failures in a row that open a destination's circuit ...
breaker_cooldown = 30.0     # ... for this long, then one probe
allow_loopback = false      # request forgery: loopback, private, link-local, multicast and
allow_private = false       # reserved destinations are refused unless allowed here
allow_networks = []         # e.g. ["10.20.0.0/16"]
proxies = []                # HTTP CONNECT proxies ("host:port") deliveries leave through
max_payload_bytes = 262144
collection = "farts.webhooks"   # inserting {url, event, payload} here over MongoDB enqueues
scan_interval = 0.5         # seconds between the master's looks at the queue
dns_cache_seconds = 30.0

[webhooks.secrets]          # signing secret per tenant id (default: the tenant's secret)
demo = "change-me-too"

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

[master]                    # one node of the deployment runs the crons and raises the alerts
enabled = false             # needs [db] (its state is replicated there)
nodes = []                  # ids of this deployment's nodes; a majority elects (required with a mesh)
lease_seconds = 6.0         # a dead master is replaced within lease_seconds * (1 + nodes/10)
clock_drift = 0.05          # bound on how much a node's clock rate may be off (the master stops early)
history = 20                # runs kept per cron

[[master.crons]]
name = "nightly-report"     # required; the idempotency key is name@slot
schedule = "0 3 * * *"      # required: minute hour day month weekday
timezone = "Europe/Berlin"
action = "http"             # "http" (to an upstream group) or "task" (built in)
upstream = "app"
method = "POST"
path = "/cron/nightly-report"
body = ""
timeout = 30.0
retries = 2
retry_delay = 5.0
catch_up = "once"           # slots missed with no master: "once", "all" or "skip"

[master.geoip]              # the built-in task geoip_rebuild (a cron with action = "task"); off while url is ""
url = ""                    # e.g. MaxMind's permalink ...&license_key={license_key}&suffix=tar.gz
sha256_url = ""             # default: the url with suffix=tar.gz.sha256 (or + ".sha256")
license_key = ""            # or, better, in the environment:
license_key_env = "MAXMIND_LICENSE_KEY"
account_id = ""             # basic auth (MaxMind's newer URLs)
database_type = "GeoLite2-City"   # what the mmdb's metadata must say ("": any)
max_bytes = 536870912       # of the download and of the database

[master.alerts]
interval = 10.0             # seconds between evaluations
bake_seconds = 1800         # after a deploy, rules with after_deploy = true apply this long

[[master.alerts.rules]]     # default: every rule with its default threshold
rule = "replication_lag"    # node_dead, replication_lag, cert_expiring, slow_requests,
threshold = 30000           # webhook_dead_letters, disk_full, version_mismatch, cron_failed
severity = "warning"        # info, warning, critical
after_deploy = false

[[master.alerts.escalation]]   # first the room, then the floor, then the building
name = "room"
targets = ["https://chat.example.com/hooks/room"]
delay = 300                 # unacknowledged this long: the next tier is told
'''
