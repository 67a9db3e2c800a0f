"""The admin listener: slow requests (/api/slow and the metric), access rules and the
page's Content-Security-Policy (with curl), and /healthz naming the part that fails.
Real nodes (`farts-edge serve`), a real upstream, real clients."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from mesh_helpers import make_ca, start_mesh_node, wait_for

TOKEN = "s3cret-admin-token-for-tests"


class DelayedUpstream(BaseHTTPRequestHandler):
    """/wait/<ms>: answers after that many milliseconds, head and body in one write (written
    apart, as http.server does, the body waits for the proxy's delayed ACK: ~40 ms more)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        ms = int(self.path.rsplit("/", 1)[1])
        time.sleep(ms / 1000)
        body = f"waited {ms} ms\n".encode()
        self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))

    def log_message(self, *args):
        pass


@pytest.fixture
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), DelayedUpstream)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def metric(node, name: str, headers=None, **labels) -> float:
    text = httpx.get(node.url("admin", "/metrics"), headers=headers).text
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and \
                all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_300_ms_upstream_is_a_slow_request_and_a_10_ms_one_is_not(node_factory, upstream):
    node = node_factory(f"""
[limits]
slow_request_seconds = 0.25
[admin]
slow_requests_kept = 5
[upstreams.app]
servers = ["127.0.0.1:{upstream}"]
[[routes]]
prefix = "/app/"
kind = "proxy"
upstream = "app"
""", base=_base_with_region("eu-test"))
    # (a threshold well above the fast request: on a loaded machine its 10 ms can take longer)
    assert httpx.get(node.url("http", "/app/wait/300"), timeout=10).text == "waited 300 ms\n"
    assert httpx.get(node.url("http", "/app/wait/10"), timeout=10).text == "waited 10 ms\n"
    labels = {"listener": "http", "route": "/app/", "tenant": "demo", "region": "eu-test"}
    assert metric(node, "farts_http_slow_requests_total", **labels) == 1
    slow = httpx.get(node.url("admin", "/api/slow")).json()
    assert slow["threshold_ms"] == 250 and slow["kept"] == 5
    assert [r["target"] for r in slow["requests"]] == ["/app/wait/300"]
    r = slow["requests"][0]
    assert (r["route"], r["tenant"], r["region"], r["status"]) == ("/app/", "demo", "eu-test", 200)
    # The upstream slept 300 ms between reading the request and answering: the first
    # byte measured from the request sent cannot be shorter, nor the total.
    assert r["upstream_first_byte_ms"] >= 300 and r["total_ms"] >= r["upstream_first_byte_ms"]
    assert r["upstream_connect_ms"] is not None and r["pooled"] is False   # a new connection
    assert r["queue_ms"] >= 0 and r["send_ms"] >= 0 and "tls_ms" in slow["timings"]
    # Kept: the last 5, newest first.
    for ms in (251, 252, 253, 254, 255, 256):
        httpx.get(node.url("http", f"/app/wait/{ms}"), timeout=10)
    targets = [r["target"] for r in httpx.get(node.url("admin", "/api/slow")).json()["requests"]]
    assert targets == [f"/app/wait/{ms}" for ms in (256, 255, 254, 253, 252)]
    later = httpx.get(node.url("admin", "/api/slow")).json()["requests"][0]
    assert later["pooled"] is True and later["upstream_connect_ms"] is None   # a pooled connection
    assert metric(node, "farts_http_slow_requests_total", **labels) == 7


def _base_with_region(region: str) -> str:
    from conftest import BASE_CONFIG
    return BASE_CONFIG.replace('id = "test-node"', f'id = "test-node"\nregion = "{region}"')


def curl(*args) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request with curl."""
    out = subprocess.run(["curl", "-sS", "-i", "-m", "10", *args], capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_page_is_served_with_a_strict_csp_and_no_outside_links(node_factory):
    node = node_factory()
    status, headers, body = curl(node.url("admin", "/"))
    assert status == 200 and headers["content-type"].startswith("text/html")
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "frame-ancestors 'none'" in csp
    assert headers["x-content-type-options"] == "nosniff"
    for path in ("/static/app.js", "/static/app.css", "/static/land.js"):
        status, headers, asset = curl(node.url("admin", path))
        assert status == 200 and "content-security-policy" in headers
        for text in (body, asset):
            assert b"http://" not in text.replace(b"http://www.w3.org/2000/svg", b"")
            assert b"https://" not in text and b"//cdn" not in text
    assert b"<script>" not in body and b"style=" not in body   # nothing inline for the CSP to allow


def test_without_a_token_the_admin_listener_is_loopback_only(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[listeners.admin]\nhost = "0.0.0.0"\n')
    r = subprocess.run([sys.executable, "-m", "farts.cli", "config", "check", str(bad)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "admin.token" in r.stderr and str(bad) in r.stderr, r.stderr
    bad.write_text(f'[listeners.admin]\nhost = "0.0.0.0"\n[admin]\ntoken = "{TOKEN}"\n')
    r = subprocess.run([sys.executable, "-m", "farts.cli", "config", "check", str(bad)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(("line", "key"), [("lat = 91.5", "node.lat"), ("lon = -181", "node.lon"),
                                           ('lat = "north"', "node.lat")])
def test_map_coordinates_are_checked_and_errors_name_key_and_file(tmp_path, line, key):
    bad = tmp_path / "coords.toml"
    bad.write_text(f'[node]\nid = "n"\n{line}\n')
    r = subprocess.run([sys.executable, "-m", "farts.cli", "config", "check", str(bad)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and f"{bad}: {key}: expected a " in r.stderr, r.stderr


def test_a_token_guards_every_admin_endpoint_but_healthz(node_factory):
    node = node_factory(f'[admin]\ntoken = "{TOKEN}"\n[[routes]]\nprefix = "/metrics"\nkind = "admin"\n')
    auth = ["-H", f"Authorization: Bearer {TOKEN}"]
    for path in ("/api/status", "/api/slow", "/metrics", "/api/history", "/api/events"):
        status, headers, _ = curl(node.url("admin", path))
        assert status == 401 and headers["www-authenticate"].startswith("Bearer"), path
        status, _, _ = curl("-H", "Authorization: Bearer wrong", node.url("admin", path))
        assert status == 401, path
    for path in ("/api/status", "/api/slow", "/metrics", "/api/history"):
        status, _, _ = curl(*auth, node.url("admin", path))
        assert status == 200, path
    status, headers, body = _events_head(node, auth)
    assert status == 200 and headers["content-type"] == "text/event-stream" and b"event: hello" in body
    assert curl(node.url("admin", "/healthz"))[0] == 200          # load balancers need no token
    assert curl(node.url("admin", "/"))[0] == 200                 # the page (no data in it) asks for it
    # On the public listener: the token, always.
    assert curl(node.url("http", "/metrics"))[0] == 401
    assert curl(*auth, node.url("http", "/metrics"))[0] == 200


def _events_head(node, auth) -> tuple[int, dict, bytes]:
    out = subprocess.run(["curl", "-sS", "-i", "-N", "-m", "2", *auth, node.url("admin", "/api/events")],
                         capture_output=True, timeout=20)   # (-m: the stream never ends)
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_public_admin_routes_without_a_token_serve_only_healthz(node_factory):
    node = node_factory('[[routes]]\nprefix = "/"\nkind = "admin"\n')
    assert curl(node.url("http", "/healthz"))[0] == 200
    for path in ("/metrics", "/api/status", "/api/slow", "/"):
        assert curl(node.url("http", path))[0] == 403, path
    assert curl(node.url("admin", "/metrics"))[0] == 200   # loopback admin listener: open


# ---- /healthz ------------------------------------------------------------------------------

def health(node) -> tuple[int, dict]:
    r = httpx.get(node.url("admin", "/healthz"), timeout=10)
    return r.status_code, r.json()


def test_healthz_is_200_when_every_part_works(node_factory):
    node = node_factory("[db]\nenabled = true\nport = 0\n")
    status, body = health(node)
    assert status == 200 and body["ok"] is True, body
    assert body["parts"] == {"listeners.http": "ok", "listeners.https": "ok", "listeners.admin": "ok",
                             "listeners.db": "ok", "store": "ok"}


def test_healthz_names_a_listener_at_its_connection_limit(node_factory):
    node = node_factory("[limits]\nmax_connections = 2\n")
    assert health(node)[0] == 200
    held = [socket.create_connection(("127.0.0.1", node.port("http"))) for _ in range(2)]
    try:
        def failing():
            status, body = health(node)
            return body if status == 503 else None
        body = wait_for(failing, 10)
        assert body and body["ok"] is False, health(node)
        assert body["parts"]["listeners.http"].startswith("not accepting: at its connection limit (2 of 2")
        assert body["failing"] == [f"listeners.http: {body['parts']['listeners.http']}"]
    finally:
        for s in held:
            s.close()
    assert wait_for(lambda: health(node)[0] == 200, 10)


def test_healthz_names_a_store_that_cannot_commit(node_factory):
    import pymongo
    from pymongo.errors import PyMongoError

    node = node_factory("[db]\nenabled = true\nport = 0\nmap_size = 1048576\nsync = false\n")
    assert health(node)[0] == 200
    client = pymongo.MongoClient(printed_url(node, "db"),
                                 serverSelectionTimeoutMS=5000)
    try:
        coll = client.app.things
        full = False
        for i in range(2000):   # 1 MiB of LMDB map fills within a few hundred of these
            try:
                coll.insert_one({"i": i, "pad": "x" * 4000})
            except PyMongoError as e:
                full = "MDB_MAP_FULL" in str(e) or "MapFull" in str(e) or "commit failed" in str(e)
                break
        assert full, "the store never filled up"
    finally:
        client.close()

    def failing():
        status, body = health(node)
        return body if status == 503 else None
    body = wait_for(failing, 10)
    assert body and body["parts"]["store"].startswith("not writable"), health(node)
    assert "MDB_MAP_FULL" in body["parts"]["store"] and body["parts"]["listeners.db"] == "ok"
    assert [f.split(":")[0] for f in body["failing"]] == ["store"]


def printed_url(node, name: str) -> str:
    """A URL the node printed that the fixture does not parse (db, mesh)."""
    text = b"".join(node.output).decode()
    return next(line.split()[1] for line in text.splitlines() if line.strip().startswith(name + " "))


def test_healthz_names_a_mesh_that_never_joined(tmp_path):
    ca = make_ca(tmp_path)
    with socket.socket() as s:   # a port nobody listens on: the only seed
        s.bind(("127.0.0.1", 0))
        dead_seed = f"127.0.0.1:{s.getsockname()[1]}"
    lonely = start_mesh_node(tmp_path, ca, "lonely", [dead_seed])
    try:
        status, body = health(lonely)
        assert status == 503 and body["parts"]["mesh"].startswith("not joined"), body
        assert dead_seed in body["parts"]["mesh"] and body["parts"]["listeners.mesh"] == "ok"
        # A peer that seeds from it: once they meet, both are healthy.
        peer = start_mesh_node(tmp_path, ca, "peer", [printed_url(lonely, "mesh").removeprefix("mesh://").rstrip("/")])
        try:
            assert wait_for(lambda: health(lonely)[0] == 200, 20), health(lonely)
            assert wait_for(lambda: health(peer)[0] == 200, 20), health(peer)
        finally:
            peer.stop()
    finally:
        lonely.stop()


def test_status_json_and_history_are_there(node_factory):
    node = node_factory()
    status = httpx.get(node.url("admin", "/api/status")).json()
    assert status["node"] == "test-node"

    def has_samples():
        h = httpx.get(node.url("admin", "/api/history")).json()
        return h if len(h["history"].get("test-node", [])) >= 2 else None
    h = wait_for(has_samples, 10)
    assert h and h["fields"][0] == "t" and h["members"][0]["id"] == "test-node"
    assert json.dumps(h)


def test_the_grafana_dashboard_reads_metrics_a_node_exports(tmp_path):
    """Every metric name in ops/grafana/farts-edge.json is one a node with every service
    on (mesh, DB, DNS, CDN, pub/sub, proxy; HTTPS on a second node) exports at /metrics."""
    import re
    from pathlib import Path

    from conftest import start_node

    dashboard = json.loads((Path(__file__).resolve().parent.parent / "ops/grafana/farts-edge.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs.append(dashboard["templating"]["list"][1]["query"]["query"])
    used = {re.sub(r"_(bucket|sum|count)$", "", n) for e in exprs for n in re.findall(r"\bfarts_[a-z_]+", e)}
    assert len(used) >= 15, used

    ca = make_ca(tmp_path)
    (tmp_path / "origin").mkdir()
    node = start_mesh_node(tmp_path, ca, "all", [], extra=f"""
[db]
enabled = true
port = 0
[dns]
enabled = true
port = 0
zone = "farts.test"
default_region = "test"
[[dns.geo]]
name = "edge"
[cdn.origins.media]
kind = "dir"
path = "{tmp_path / 'origin'}"
[upstreams.app]
servers = ["127.0.0.1:9"]
[[tenants]]
id = "demo"
hosts = ["localhost", "127.0.0.1"]
[[routes]]
prefix = "/media/"
kind = "cdn"
origin = "media"
[[routes]]
prefix = "/live"
kind = "pubsub"
[[routes]]
prefix = "/app/"
kind = "proxy"
upstream = "app"
""")
    plain = start_node(tmp_path / "plain")   # with HTTPS on (the mesh helper's node has it off)
    try:
        text = httpx.get(node.url("admin", "/metrics")).text + httpx.get(plain.url("admin", "/metrics")).text
    finally:
        node.stop()
        plain.stop()
    exported = set(re.findall(r"^# (?:HELP|TYPE) (farts_[a-z_]+)", text, re.M))
    exported |= {re.sub(r"_(bucket|sum|count|created)$", "", n) for n in re.findall(r"^(farts_[a-z_]+)", text, re.M)}
    assert used <= exported, used - exported
