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

import httpx


def start_up(data_dir) -> tuple[subprocess.Popen, bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "farts.cli", "up", "--data-dir", str(data_dir)],
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


def stop(proc) -> tuple[int, bytes]:
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=15)
    return proc.returncode, rest


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
        key = re.search(rb"API key (\S+)", out).group(1).decode()
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
