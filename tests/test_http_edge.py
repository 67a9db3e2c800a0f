"""The HTTP/1.1 edge against a real node: routing, tenants, every limit, bad input, metrics.

Well-formed traffic goes through real clients (curl, httpx); malformed traffic through
raw sockets, since no real client will send it.
"""
from __future__ import annotations

import json
import re
import socket
import subprocess
import time

import httpx
import pytest

ROUTES = """
[limits]
max_header_bytes = 4096
max_body_bytes = 1000
header_timeout = 1.0
idle_timeout = 2.0
max_connections = 50
max_connections_per_ip = 40
slow_request_seconds = 0.1

[http]
access_log_sample = 1.0
access_log = "{data_dir}/access.log"

[[routes]]
prefix = "/a"
kind = "static"
body = "route a\\n"

[[routes]]
prefix = "/b"
kind = "static"
body = "route b\\n"
content_type = "text/x-b"

[[routes]]
prefix = "/big"
kind = "static"
body = "big route\\n"
max_body_bytes = 100000

[[routes]]
prefix = "/only-other"
kind = "static"
body = "other tenant only\\n"
tenants = ["other"]

[[routes]]
prefix = "/healthz"
kind = "admin"
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    from conftest import start_node

    tmp = tmp_path_factory.mktemp("edge")
    n = start_node(tmp, ROUTES.replace("{data_dir}", str(tmp / "node")))
    yield n
    n.stop()


def raw(node, data: bytes | list[bytes], read_until_close=True, timeout=5.0, pause=0.0) -> bytes:
    """Sends bytes (or pieces with a pause between) and returns what the node answered."""
    s = socket.create_connection(("127.0.0.1", node.port("http")), timeout=timeout)
    try:
        for piece in data if isinstance(data, list) else [data]:
            s.sendall(piece)
            if pause:
                time.sleep(pause)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
            if not read_until_close:
                break
        return out
    finally:
        s.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def metric(node, name: str, **labels) -> float:
    text = httpx.get(node.url("admin", "/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_static_route_with_curl_and_httpx(node):
    out = subprocess.run(["curl", "-s", "-i", node.url("http", "/a")], capture_output=True, timeout=10)
    assert out.stdout.startswith(b"HTTP/1.1 200 OK\r\n")
    assert out.stdout.endswith(b"\r\n\r\nroute a\n")
    r = httpx.get(node.url("http", "/b/anything?x=1"))
    assert (r.status_code, r.text, r.headers["content-type"]) == (200, "route b\n", "text/x-b")
    assert r.headers["content-length"] == "8"


def test_head_gets_headers_without_body(node):
    out = raw(node, b"HEAD /a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK") and b"content-length: 8\r\n" in out.lower()
    assert out.endswith(b"\r\n\r\n")


def test_host_picks_the_tenant(node):
    with httpx.Client() as c:
        assert c.get(node.url("http", "/only-other"), headers={"Host": "other.test"}).status_code == 200
        assert c.get(node.url("http", "/only-other"), headers={"Host": "localhost"}).status_code == 404
        assert c.get(node.url("http", "/a"), headers={"Host": "OTHER.test:8080"}).status_code == 200
        r = c.get(node.url("http", "/a"), headers={"Host": "stranger.test"})
        assert r.status_code == 421 and "unknown host" in r.text


@pytest.mark.parametrize("path", ["/b/../only-other", "/b/%2e%2e/only-other", "/b%2F..%2Fonly-other",
                                  "/./a", "/a/.%2E"])
def test_dot_segments_are_refused_before_routing(node, path):
    # curl --path-as-is sends the path unresolved, as an attacker would.
    out = subprocess.run(["curl", "-s", "-i", "--path-as-is", node.url("http", path)], capture_output=True,
                         timeout=10)
    assert out.stdout.startswith(b"HTTP/1.1 400 ") and b"dot segments in the path" in out.stdout, out.stdout
    assert httpx.get(node.url("http", "/.well-known-ish")).status_code == 404   # a dot name is fine
    assert httpx.get(node.url("http", "/a/x%2Fy")).status_code == 200           # encoded_slashes = "pass"


def test_encoded_slashes_can_be_refused(tmp_path):
    from conftest import start_node

    n = start_node(tmp_path, '[http]\nencoded_slashes = "reject"\n[[routes]]\nprefix = "/"\nkind = "static"\nbody = "x"\n')
    try:
        r = httpx.get(n.url("http", "/a%2Fb"))
        assert r.status_code == 400 and "encoded slash" in r.text
        assert httpx.get(n.url("http", "/a/b")).status_code == 200
    finally:
        n.stop()


def test_no_route_is_404(node):
    assert httpx.get(node.url("http", "/nothing-here")).status_code == 404


def test_admin_route_on_the_public_listener_and_admin_listener(node):
    assert httpx.get(node.url("http", "/healthz")).json()["ok"] is True
    assert httpx.get(node.url("admin", "/healthz")).json()["ok"] is True
    status = httpx.get(node.url("admin", "/api/status")).json()
    assert status["node"] == "test-node" and "http" in status["listeners"]


def test_header_section_over_the_limit_is_431(node):
    before = metric(node, "farts_http_parse_errors_total", status="431")
    out = raw(node, b"GET /a HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"x" * 5000 + b"\r\n\r\n")
    assert status_of(out) == 431
    assert metric(node, "farts_http_parse_errors_total", status="431") == before + 1


def test_body_over_the_limit_is_413(node):
    out = raw(node, b"POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1001\r\n\r\n" + b"x" * 1001)
    assert status_of(out) == 413



def test_chunked_body_over_the_limit_after_an_early_answer_closes(node):
    # The static route answers at the head; a chunked body that then passes the limit
    # cannot get a 413 any more (its response is out), so the connection is closed and
    # the pipelined request behind it is not served.
    chunked = b"POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    out = raw(node, chunked + (b"190\r\n" + b"y" * 400 + b"\r\n") * 3 + b"0\r\n\r\n"
              + b"GET /b HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status_of(out) == 200 and out.endswith(b"route a\n")


def test_route_overrides_the_body_limit(node):
    body = b"z" * 50000
    out = raw(node, b"POST /big HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 50000\r\n\r\n" + body)
    assert status_of(out) == 200


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost localhost\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),  # a TLS hello on the plain port
    b"GET /a HTTP/1.1\r\nHost: localhost\r\n bad: fold\r\n\r\n",
])
def test_malformed_requests_get_400_and_close(node, request_bytes):
    out = raw(node, request_bytes)
    assert status_of(out) == 400
    assert b"connection: close" in out.lower()


def test_bad_chunk_after_an_early_answer_closes_without_a_second_answer(node):
    out = raw(node, b"POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert status_of(out) == 200 and out.endswith(b"route a\n")


def test_a_request_one_byte_at_a_time(node):
    req = b"GET /b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    out = raw(node, [req[i:i + 1] for i in range(len(req))])
    assert status_of(out) == 200 and out.endswith(b"route b\n")


def test_1000_pipelined_requests_answered_in_order(node):
    paths = [b"/a" if i % 3 else b"/b" for i in range(1000)]
    data = b"".join(b"GET " + p + b" HTTP/1.1\r\nHost: localhost\r\n\r\n" for p in paths[:-1])
    data += b"GET " + paths[-1] + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    out = raw(node, data, timeout=20)
    bodies = re.findall(rb"\r\n\r\n(route [ab])\n", out)
    assert [b[-1:] for b in bodies] == [p[-1:] for p in paths]


def test_slowloris_gets_408(node):
    s = socket.create_connection(("127.0.0.1", node.port("http")), timeout=10)
    s.sendall(b"GET /a HTTP/1.1\r\nHost: local")
    t0 = time.monotonic()
    out = b""
    while chunk := s.recv(4096):
        out += chunk
    s.close()
    assert status_of(out) == 408
    assert 0.5 < time.monotonic() - t0 < 5


def test_idle_keepalive_connection_is_closed(node):
    s = socket.create_connection(("127.0.0.1", node.port("http")), timeout=10)
    s.sendall(b"GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n")
    first = s.recv(4096)
    assert status_of(first) == 200
    t0 = time.monotonic()
    assert s.recv(4096) == b""  # closed by the node, not by us
    assert 1.5 < time.monotonic() - t0 < 6
    s.close()


def test_client_disconnecting_mid_body_leaves_the_node_serving(node):
    s = socket.create_connection(("127.0.0.1", node.port("http")))
    s.sendall(b"POST /big HTTP/1.1\r\nHost: localhost\r\nContent-Length: 90000\r\n\r\n" + b"x" * 100)
    s.close()
    assert httpx.get(node.url("http", "/a")).text == "route a\n"


def test_body_sent_after_an_early_answer_is_skipped_on_keepalive(node):
    # The static route answers at the head; the body that follows must not be read as
    # the next request.
    body = b"GET /b HTTP/1.1\r\n\r\n"  # looks like a request: must be treated as body
    req = (b"POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % len(body) + body
           + b"GET /b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    out = raw(node, req)
    assert re.findall(rb"route [ab]", out) == [b"route a", b"route b"]


def test_connection_limits(node):
    socks = []
    try:
        for _ in range(40):
            socks.append(socket.create_connection(("127.0.0.1", node.port("http"))))
        for s in socks:  # make sure each is accepted and counted
            s.sendall(b"GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert status_of(s.recv(4096)) == 200
        refused_before = metric(node, "farts_http_connections_refused_total", reason="max_connections_per_ip")
        extra = raw(node, b"GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert status_of(extra) == 503
        assert metric(node, "farts_http_connections_refused_total",
                      reason="max_connections_per_ip") == refused_before + 1
    finally:
        for s in socks:
            s.close()
    # (once the node has seen the closes: polled, bounded)
    deadline = time.monotonic() + 10
    while (status := httpx.get(node.url("http", "/a")).status_code) != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 200


def test_metrics_count_requests_by_route_and_status(node):
    before = metric(node, "farts_http_requests_total", route="/b", status="200")
    for _ in range(3):
        httpx.get(node.url("http", "/b"))
    assert metric(node, "farts_http_requests_total", route="/b", status="200") == before + 3
    # Fixed answers are counted, not timed: the histogram holds only timed requests.
    assert metric(node, "farts_http_request_duration_seconds_count", route="/b") == 0
    timed = metric(node, "farts_http_request_duration_seconds_count", route="/healthz")
    httpx.get(node.url("http", "/healthz"))
    assert metric(node, "farts_http_request_duration_seconds_count", route="/healthz") == timed + 1
    text = httpx.get(node.url("admin", "/metrics")).text
    for family in ("farts_http_connections_open", "farts_http_slow_requests_total",
                   "farts_http_received_bytes", "farts_node_info"):
        assert family in text


def test_access_log_is_json_lines(node):
    httpx.get(node.url("http", "/a?access-log-probe=1"))
    time.sleep(0.2)
    lines = (node.data_dir / "access.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    probe = [e for e in entries if e["target"] == "/a?access-log-probe=1"]
    assert probe and probe[0]["status"] == 200 and probe[0]["method"] == "GET"


def test_slow_requests_are_counted(tmp_path):
    from conftest import start_node

    # Every handled request is "slow" at a 1 µs threshold: this checks the counting and
    # the log line. (Fixed answers are not timed: they are written at once.)
    n = start_node(tmp_path, '[limits]\nslow_request_seconds = 0.000001\n'
                   '[[routes]]\nprefix = "/"\nkind = "admin"\n')
    try:
        httpx.get(n.url("http", "/healthz?slow-probe"))
        assert metric(n, "farts_http_slow_requests_total", route="/") >= 1
        assert "slow request" in n.log() and "/healthz?slow-probe" in n.log()
    finally:
        n.stop()


def test_the_node_survives_a_burst_of_garbage(node):
    import random

    rng = random.Random(7)
    for _ in range(50):
        raw(node, bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 3000))), timeout=2)
    assert node.alive()
    assert httpx.get(node.url("http", "/a")).text == "route a\n"


def test_unknown_host_status_404_and_total_connection_limit(tmp_path):
    from conftest import start_node

    n = start_node(tmp_path, '[http]\nunknown_host_status = 404\n'
                   '[limits]\nmax_connections = 3\n'
                   '[[routes]]\nprefix = "/"\nkind = "static"\nbody = "x"\n')
    socks = []
    try:
        r = httpx.get(n.url("http", "/"), headers={"Host": "stranger.test"})
        assert r.status_code == 404 and "unknown host" in r.text
        for _ in range(3):
            socks.append(socket.create_connection(("127.0.0.1", n.port("http"))))
            socks[-1].sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert status_of(socks[-1].recv(4096)) == 200
        assert status_of(raw(n, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")) == 503
        assert metric(n, "farts_http_connections_refused_total", reason="max_connections") == 1
        assert metric(n, "farts_http_connections_open", listener="http") == 3
    finally:
        for s in socks:
            s.close()
        n.stop()


def test_access_log_flag_turns_it_on(tmp_path):
    from conftest import start_node

    n = start_node(tmp_path, '[[routes]]\nprefix = "/"\nkind = "static"\nbody = "x"\n', args=())
    try:
        httpx.get(n.url("http", "/no-log-by-default"))
    finally:
        n.stop()
    assert "/no-log-by-default" not in n.log()
    n = start_node(tmp_path / "flag", '[[routes]]\nprefix = "/"\nkind = "static"\nbody = "x"\n',
                   serve_args=("--access-log", "1"))
    try:
        httpx.get(n.url("http", "/logged-by-flag"))
        time.sleep(0.2)
    finally:
        n.stop()
    (line,) = [json.loads(x) for x in n.log().splitlines() if "/logged-by-flag" in x]
    assert line["status"] == 200


def test_body_arriving_after_the_answer_in_its_own_read(node):
    s = socket.create_connection(("127.0.0.1", node.port("http")), timeout=5)
    s.sendall(b"POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\n")
    assert status_of(s.recv(4096)) == 200
    s.sendall(b"hello")  # [body, END] in one read, after the answer went out
    time.sleep(0.1)
    s.sendall(b"GET /b HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert s.recv(4096).endswith(b"route b\n")
    s.close()


def test_a_client_that_stops_sending_its_body_is_closed(node):
    s = socket.create_connection(("127.0.0.1", node.port("http")), timeout=10)
    s.sendall(b"POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nab")
    assert status_of(s.recv(4096)) == 200
    t0 = time.monotonic()
    assert s.recv(4096) == b""  # idle_timeout is 2 s in this config
    assert time.monotonic() - t0 < 6
    s.close()


def test_upgrade_requests_are_answered_then_closed(node):
    out = raw(node, b"GET /a HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n"
                    + b"x" * 100000 + b"GET /b HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status_of(out) == 200 and b"connection: close" in out.lower()
    assert b"route b" not in out


def test_transfer_codings_other_than_chunked_are_501(node):
    out = raw(node, b"POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                    b"5\r\nhello\r\n0\r\n\r\n")
    assert status_of(out) == 501


def test_expect_100_with_an_early_answer_closes(node):
    out = raw(node, b"POST /a HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 10\r\n\r\n")
    assert status_of(out) == 200 and b"connection: close" in out.lower()
    assert b"100 Continue" not in out
