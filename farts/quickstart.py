"""What `farts-edge up` needs on first run: a CA, a localhost certificate, a config file.

Everything is written under the data dir and reused by later runs, so the API key
and the CA a developer trusted once stay the same.
"""
from __future__ import annotations

import re
import secrets
import tomllib
from pathlib import Path

from farts import pki

CONFIG_NAME = "farts.toml"

TEMPLATE = '''\
# Written by `farts-edge up` on first run; edit freely, `farts-edge serve --config` reads it.
[node]
id = "node-1"
region = "local"
data_dir = "."              # this folder

[listeners.http]
host = "127.0.0.1"
port = 8080

[listeners.https]
host = "127.0.0.1"
port = 8443
cert_dir = "certs"          # localhost.crt/.key, signed by ca/ca.crt

[listeners.admin]
host = "127.0.0.1"
port = 9100

[dns]                       # try: dig @127.0.0.1 -p 5353 edge.farts.test
enabled = true
host = "127.0.0.1"
port = 5353                 # UDP and TCP
zone = "farts.test"
default_region = "local"

[[dns.geo]]                 # edge.farts.test: the nearest live nodes for each client
name = "edge"
answers = 2
ttl = 30

[[dns.nodes]]               # one table per node: what edge.farts.test may return
id = "node-1"
region = "local"
lat = 50.11
lon = 8.68
addresses = ["127.0.0.1"]

[db]                        # MongoDB wire protocol: mongodb://127.0.0.1:27017/ (no auth on loopback)
enabled = true
host = "127.0.0.1"
port = 27017

[webhooks]                  # POST /api/webhooks (Bearer API key), or insert into farts.webhooks over MongoDB
enabled = true
allow_loopback = true       # a local playground: receivers on 127.0.0.1 are allowed (a hand-written config must say so)

[master]                    # one node runs the crons and raises the alerts (farts-edge crons/alerts)
enabled = true

[[master.crons]]            # an example that only shows up: `farts-edge crons list` lists its runs
name = "heartbeat"
schedule = "* * * * *"      # every minute (5 fields, read in `timezone`, UTC by default)
action = "task"
task = "noop"               # built-in tasks: noop, certs_check, geoip_rebuild (with [master.geoip])

# [[master.crons]]          # a request to your app, once per slot, with Idempotency-Key: nightly@<slot>
# name = "nightly"
# schedule = "0 3 * * *"
# timezone = "Europe/Paris"
# upstream = "app"
# path = "/cron/nightly"
#
# [master.geoip]            # the weekly GeoIP rebuild (nothing is downloaded unless this is set), and its cron:
# url = "https://download.maxmind.com/app/geoip_download?edition_id=GeoLite2-City&license_key={{license_key}}&suffix=tar.gz"
# license_key_env = "MAXMIND_LICENSE_KEY"
# [[master.crons]]
# name = "geoip"
# schedule = "0 4 * * 3"
# action = "task"
# task = "geoip_rebuild"
# timeout = 600

[[master.alerts.escalation]] # alerts: first the room, then the floor, then the building (JSON POSTs)
name = "room"
targets = ["http://127.0.0.1:3000/alerts/room"]
delay = 300                 # seconds unacknowledged (farts-edge alerts ack ID) before the next tier

[[master.alerts.escalation]]
name = "floor"
targets = ["http://127.0.0.1:3000/alerts/floor"]
delay = 900

[[master.alerts.escalation]]
name = "building"
targets = ["http://127.0.0.1:3000/alerts/building"]

[[tenants]]
id = "demo"
hosts = ["localhost", "127.0.0.1"]
api_keys = ["{api_key}"]
secret = "{secret}"

[upstreams.app]             # your application servers
servers = ["127.0.0.1:3000"]

[cdn.origins.media]         # `up --cdn-origin URL` replaces this with an HTTP origin
kind = "dir"
path = "origin"             # files under this folder, served as /media/<file>

[[routes]]
prefix = "/media/"          # cached on disk under cache/ (purge: POST admin /api/cache/purge)
kind = "cdn"
origin = "media"

[[routes]]
prefix = "/widget/"
kind = "proxy"
upstream = "app"

[[routes]]                  # live pub/sub: WebSocket /live, SSE /live/sse
prefix = "/live"
kind = "pubsub"

[[routes]]                  # POST /api/publish, GET /api/presence (Bearer API key)
prefix = "/api/publish"
kind = "pubsub"

[[routes]]
prefix = "/api/presence"
kind = "pubsub"

[[routes]]
prefix = "/healthz"
kind = "admin"

[[routes]]
prefix = "/"
kind = "static"
body = "farts-edge is up. Try /healthz, /widget/ (proxied to 127.0.0.1:3000), and the admin listener's /metrics.\\n"
'''


def _origin(data_dir: Path) -> None:
    origin = data_dir / "origin"  # the built-in CDN origin's files
    if not origin.exists():
        origin.mkdir()
        (origin / "hello.txt").write_text("hello from the farts-edge CDN (cached under cache/)\n")


def prepare(data_dir: Path) -> Path:
    """Creates what is missing under data_dir and returns the config file's path."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ca_dir = data_dir / "ca"
    pki.make_ca(ca_dir)
    crt, key = data_dir / "certs" / "localhost.crt", data_dir / "certs" / "localhost.key"
    if not (crt.exists() and key.exists()):
        pki.issue(ca_dir, crt, key, ["localhost", "127.0.0.1", "::1"])
    _origin(data_dir)
    config = data_dir / CONFIG_NAME
    if not config.exists():
        config.write_text(TEMPLATE.format(api_key=secrets.token_urlsafe(24),
                                          secret=secrets.token_urlsafe(32)))
    return config


def set_keys(text: str, table: str, values: dict[str, object]) -> str:
    """``text`` (a TOML document) with ``key = value`` set in ``[table]`` (added at the end
    when missing) for each of ``values``; a value of None removes the key. Only those
    lines change: the comments and the rest of the file stay as they are."""
    header = re.compile(rf"(?m)^\[{re.escape(table)}\][ \t]*(#.*)?$")
    m = header.search(text)
    if m is None:
        text = text.rstrip("\n") + f"\n\n[{table}]\n"
        m = header.search(text)
    start = m.end() + 1
    nxt = re.compile(r"(?m)^\[").search(text, start)
    end = nxt.start() if nxt else len(text)
    body = text[start:end]
    for key, value in values.items():
        line = re.compile(rf"(?m)^{re.escape(key)}[ \t]*=.*\n?")
        new = "" if value is None else f"{key} = {_toml(value)}\n"
        body, n = line.subn(new, body, count=1)
        if not n and new:
            body = new + body
    return text[:start] + body + text[end:]


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def apply_flags(path: Path, *, cdn_origin: str | None = None, access_log: float | None = None,
                ports: dict[str, int] | None = None) -> None:
    """Writes `up`'s flags into the config file, so that `serve --config` runs the same
    node: ``ports`` by listener (http, https, admin) or service (dns, db)."""
    text = original = path.read_text()
    if cdn_origin is not None:
        text = set_keys(text, "cdn.origins.media", {"kind": "http", "url": cdn_origin, "path": None})
    if access_log is not None:
        text = set_keys(text, "http", {"access_log_sample": access_log})
    for name, port in (ports or {}).items():
        table = name if name in ("dns", "db") else f"listeners.{name}"
        text = set_keys(text, table, {"port": port})
    if text != original:
        tomllib.loads(text)   # (never write a file serve cannot read)
        path.write_text(text)


# `up --nodes N`: node i on 127.0.0.i, the same ports on each address (a clone per
# address, as in production), its data under DATA_DIR/node-i, certificates from one CA.
# Three nodes stand in for three continents, so the geo DNS has something to choose.
SITES = [("us-west", 45.52, -122.68), ("eu-central", 50.11, 8.68), ("ap-southeast", 1.35, 103.82)]
MESH_PORT = 7946


def node_config(text: str, i: int, n: int) -> str:
    """The single-node config `text` (TEMPLATE, filled in) turned into node i of n.

    Only the lines that differ per node are rewritten, so blocks other services add
    to TEMPLATE come along unchanged (their listeners move to 127.0.0.i with the rest).
    """
    host = f"127.0.0.{i}"
    region, lat, lon = SITES[(i - 1) % len(SITES)]
    text = re.sub(r'(?m)^id = "node-1"', f'id = "node-{i}"', text, count=1)
    text = re.sub(r'(?m)^region = "local"', f'region = "{region}"\nlat = {lat}\nlon = {lon}', text, count=1)
    text = re.sub(r'(?m)^(host\s*=\s*)"127\.0\.0\.1"', rf'\g<1>"{host}"', text)
    if i != 1:
        text = re.sub(r'(?m)^(hosts = \[.*)\]', rf'\1, "{host}"]', text, count=1)
    seeds = ", ".join(f'"127.0.0.{j}:{MESH_PORT}"' for j in range(1, n + 1) if j != i)
    nodes = ", ".join(f'"node-{j}"' for j in range(1, n + 1))   # the deployment: a majority elects its master
    text = re.sub(r'(?m)^(\[master\].*\n)', rf'\g<1>nodes = [{nodes}]\n', text, count=1)
    return text + f'''
[mesh]                      # written by `farts-edge up --nodes {n}`
enabled = true
host = "{host}"
port = {MESH_PORT}
seeds = [{seeds}]
public_addresses = ["{host}"]
ca = "../ca/ca.crt"
cert = "mesh/node.crt"
key = "mesh/node.key"

[release]                   # `farts-edge deploy` takes bundles signed with ../release/release.key
trusted_keys = ["../release/release.pub"]
'''


def prepare_cluster(data_dir: Path, n: int) -> list[Path]:
    """Creates what is missing for an n-node local cluster; returns the config paths."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ca_dir = data_dir / "ca"
    pki.make_ca(ca_dir)
    if not (data_dir / "release" / "release.pub").exists():   # a local cluster's own release key
        from farts.release import bundle
        bundle.keygen(data_dir / "release")
    first = data_dir / "node-1" / CONFIG_NAME
    if first.exists():  # one deployment: the nodes share the tenant's key and secret
        tenant = tomllib.loads(first.read_text())["tenants"][0]
        api_key, secret = tenant["api_keys"][0], tenant["secret"]
    else:
        api_key, secret = secrets.token_urlsafe(24), secrets.token_urlsafe(32)
    paths = []
    for i in range(1, n + 1):
        d, host = data_dir / f"node-{i}", f"127.0.0.{i}"
        d.mkdir(exist_ok=True)
        crt, key = d / "certs" / "localhost.crt", d / "certs" / "localhost.key"
        if not (crt.exists() and key.exists()):
            pki.issue(ca_dir, crt, key, ["localhost", host])
        if not (d / "mesh" / "node.crt").exists():
            pki.issue(ca_dir, d / "mesh" / "node.crt", d / "mesh" / "node.key", [host], node_id=f"node-{i}")
        _origin(d)   # each node's /media/ reads DATA_DIR/node-i/origin
        config = d / CONFIG_NAME
        if not config.exists():
            config.write_text(node_config(TEMPLATE.format(api_key=api_key, secret=secret), i, n))
        paths.append(config)
    return paths
