"""`farts-edge up`: a node on embedded defaults, on the documented ports, from nothing."""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import tomllib

import httpx
import pytest


def started(*args: str) -> tuple[subprocess.Popen, bytes]:
    """`farts-edge ARGS` started, and its output up to the line that says it is up."""
    proc = subprocess.Popen([sys.executable, "-m", "farts.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = b""
    deadline = time.monotonic() + 30
    while b"Ctrl-C stops the node." not in out and time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
    assert b"Ctrl-C stops the node." in out, out.decode(errors="replace")
    return proc, out


def start_up(data_dir) -> tuple[subprocess.Popen, bytes]:
    return started("up", "--data-dir", str(data_dir))


def stop(proc) -> tuple[int, bytes]:
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=15)
    return proc.returncode, rest


def test_up_flags_go_into_the_config_and_serve_runs_the_same_node(tmp_path):
    data = tmp_path / "d"
    proc, out = started("up", "--data-dir", str(data), "--http-port", "0", "--https-port", "0",
                        "--admin-port", "0", "--dns-port", "0", "--db-port", "0",
                        "--cdn-origin", "http://127.0.0.1:9/", "--access-log", "0.25")
    stop(proc)
    assert b":8080/" not in out and re.search(rb"http +http://127\.0\.0\.1:\d+/", out)
    cfg = tomllib.loads((data / "farts.toml").read_text())
    assert cfg["cdn"]["origins"]["media"] == {"kind": "http", "url": "http://127.0.0.1:9/"}
    assert all(cfg["listeners"][n]["port"] == 0 for n in ("http", "https", "admin"))
    assert cfg["dns"]["port"] == 0 and cfg["db"]["port"] == 0 and cfg["http"]["access_log_sample"] == 0.25
    # serve reads the same file: the same node (free ports again, the HTTP origin).
    served, out = started("serve", "--config", str(data / "farts.toml"))
    stop(served)
    assert b":8080/" not in out, out.decode(errors="replace")


@pytest.mark.usefixtures("default_ports")
def test_up_writes_its_defaults_serves_and_stops_cleanly(tmp_path):
    data = tmp_path / "farts-data"
    proc, out = start_up(data)
    try:
        for url in (b"http://127.0.0.1:8080/", b"https://127.0.0.1:8443/", b"http://127.0.0.1:9100/"):
            assert url in out
        assert b"  status page http://127.0.0.1:9100/\n" in out
        ca = data / "ca" / "ca.crt"
        assert ca.exists() and (data / "certs" / "localhost.crt").exists() and (data / "farts.toml").exists()
        https = subprocess.run(["curl", "-sS", "--cacert", str(ca), "https://localhost:8443/"],
                               capture_output=True, timeout=10)
        assert https.returncode == 0, https.stderr
        assert https.stdout.startswith(b"farts-edge is up")
        assert httpx.get("http://127.0.0.1:8080/healthz").json()["ok"] is True
        assert "farts_http_requests_total" in httpx.get("http://127.0.0.1:9100/metrics").text
        # The proxy route exists; nothing listens on the app port, so the answer is 502.
        assert httpx.get("http://localhost:8080/widget/x").status_code == 502
        # Live pub/sub for the demo tenant with the generated API key: an SSE subscriber
        # gets what is published.
        key = tomllib.loads((data / "farts.toml").read_text())["tenants"][0]["api_keys"][0]
        assert key.encode() not in out   # a secret: where it is, not what it is
        with httpx.Client(timeout=10) as client, \
                client.stream("GET", "http://127.0.0.1:8080/live/sse", params={"channel": "demo"}) as stream:
            lines = stream.iter_lines()
            published = client.post("http://127.0.0.1:8080/api/publish", json={"channel": "demo", "data": "hi"},
                                     headers={"authorization": f"Bearer {key}"})
            assert published.status_code == 200, published.text
            event = next(line for line in lines if line.startswith("data: "))
            assert json.loads(event[6:])["data"] == "hi"
    finally:
        code, rest = stop(proc)
    assert code == 0 and b"stopping" in rest
    check = subprocess.run([sys.executable, "-m", "farts.cli", "config", "check", str(data / "farts.toml")],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr

    # A second run reuses the CA, the certificate and the config (same API key).
    config_before, ca_before = (data / "farts.toml").read_text(), (data / "ca" / "ca.crt").read_bytes()
    proc, out = start_up(data)
    code, _ = stop(proc)
    assert code == 0
    assert (data / "farts.toml").read_text() == config_before
    assert (data / "ca" / "ca.crt").read_bytes() == ca_before
