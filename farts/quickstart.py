"""What `farts-edge up` needs on first run: a CA, a localhost certificate, a config file.

Everything is written under the data dir and reused by later runs, so the API key
and the CA a developer trusted once stay the same.
"""
from __future__ import annotations

import secrets
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


def prepare(data_dir: Path) -> Path:
    """Creates what is missing under data_dir and returns the config file's path."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ca_dir = data_dir / "ca"
    pki.make_ca(ca_dir)
    crt, key = data_dir / "certs" / "localhost.crt", data_dir / "certs" / "localhost.key"
    if not (crt.exists() and key.exists()):
        pki.issue(ca_dir, crt, key, ["localhost", "127.0.0.1", "::1"])
    origin = data_dir / "origin"  # the built-in CDN origin's files
    if not origin.exists():
        origin.mkdir()
        (origin / "hello.txt").write_text("hello from the farts-edge CDN (cached under cache/)\n")
    config = data_dir / CONFIG_NAME
    if not config.exists():
        config.write_text(TEMPLATE.format(api_key=secrets.token_urlsafe(24),
                                          secret=secrets.token_urlsafe(32)))
    return config
