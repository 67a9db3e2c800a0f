"""Certificates from an ACME CA: Debian's pebble (the test CA, in -strict mode, with its
validation delays and nonce rejections left on) started here on loopback, resolving the
names through the node's own DNS, validating HTTP-01 against the node's HTTP listener.
The node orders, installs and serves the certificate (openssl s_client -servername),
keeps it when the CA is down for a renewal, and counts both outcomes."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import free_port, start_node

from farts import pki
from farts.certs.service import default_domains, due

pytestmark = pytest.mark.skipif(shutil.which("pebble") is None, reason="pebble is not installed; ci/setup installs it")


def test_due_is_two_thirds_into_the_lifetime():
    assert due(None, None, 100.0, 1 / 3)                     # no certificate yet
    assert not due(0.0, 90.0, 59.0, 1 / 3)                   # 31 of 90 left
    assert due(0.0, 90.0, 61.0, 1 / 3)                       # 29 of 90 left


def test_default_domains_are_the_tenants_dns_names():
    class T:
        def __init__(self, *hosts):
            self.hosts = hosts
    assert default_domains([T("localhost", "127.0.0.1", "www.example.com"), T("api.example.com", "WWW.example.com")]) \
        == ["www.example.com", "api.example.com"]


def served_issuer(port: int, name: str) -> str:
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name],
                         input=b"", capture_output=True, timeout=20)
    cert = subprocess.run(["openssl", "x509", "-noout", "-issuer", "-ext", "subjectAltName"], input=out.stdout,
                          capture_output=True, timeout=20)
    return cert.stdout.decode()


def admin_json(node, path: str, method: str = "GET") -> dict:
    req = urllib.request.Request(node.url("admin", path), method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def metric(node, name: str, label: str) -> float:
    with urllib.request.urlopen(node.url("admin", "/metrics"), timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + "{") and label in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for(check, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def pebble_ca(tmp_path):
    """pebble's own HTTPS certificate, from a CA the node is told to trust; its ports."""
    ca_dir = tmp_path / "pebble-ca"
    pki.make_ca(ca_dir)
    pki.issue(ca_dir, tmp_path / "pebble.crt", tmp_path / "pebble.key", ["localhost", "127.0.0.1"])
    return ca_dir / "ca.crt", free_port()


def dns_port(node) -> int:
    return int(re.search(rb"dns://127\.0\.0\.1:(\d+)/", b"".join(node.output)).group(1))


def start_pebble(tmp_path, node, acme_port: int) -> subprocess.Popen:
    """pebble -strict, its DNS the node's, its HTTP-01 port the node's HTTP listener."""
    config = tmp_path / "pebble.json"
    config.write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{acme_port}", "managementListenAddress": f"127.0.0.1:{free_port()}",
        "certificate": str(tmp_path / "pebble.crt"), "privateKey": str(tmp_path / "pebble.key"),
        "httpPort": node.port("http"), "tlsPort": free_port(), "ocspResponderURL": "",
        "externalAccountBindingRequired": False}}))
    return subprocess.Popen(["pebble", "-config", str(config), "-dnsserver", f"127.0.0.1:{dns_port(node)}", "-strict"],
                            stdout=open(tmp_path / "pebble.log", "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, start_new_session=True)


@contextlib.contextmanager
def acme_node(tmp_path, names: dict[str, str], hosts: list[str], certs: str):
    """A node serving zone farts.test (``names``: A records) for one tenant of ``hosts``,
    with [certs] ordering from a pebble started for it; yields (node, pebble) and stops both."""
    ca, acme_port = pebble_ca(tmp_path)
    records = "".join(f'[[dns.records]]\nname = "{n}"\ntype = "A"\nvalue = "{v}"\n' for n, v in names.items())
    node = start_node(tmp_path, f"""
[dns]
enabled = true
port = 0
zone = "farts.test"
{records}
[[tenants]]
id = "site"
hosts = {json.dumps(hosts)}

[certs]
enabled = true
directory_url = "https://127.0.0.1:{acme_port}/dir"
ca_bundle = "{ca}"
{certs}
[[routes]]
prefix = "/"
kind = "static"
body = "hello\\n"
""")
    pebble = None
    try:
        pebble = start_pebble(tmp_path, node, acme_port)
        yield node, pebble
    finally:
        if pebble is not None and pebble.poll() is None:
            os.killpg(pebble.pid, signal.SIGKILL)
        node.stop()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_node_orders_serves_and_keeps_its_certificate(tmp_path):
    with acme_node(tmp_path, {"www": "127.0.0.1", "api": "127.0.0.1"}, ["www.farts.test", "api.farts.test"],
                   'domains = ["www.farts.test", "api.farts.test"]\nretry_min = 2.0\nretry_max = 4.0\norder_timeout = 90.0\n') as (node, pebble):
        https = node.port("https")
        issued = wait_for(lambda: "Pebble" in served_issuer(https, "www.farts.test"), 150)
        log = (tmp_path / "pebble.log").read_text(errors="replace")
        assert issued, f"node log:\n{node.log()[-3000:]}\npebble log:\n{log[-3000:]}"
        both = served_issuer(https, "api.farts.test")
        assert "Pebble" in both and "DNS:www.farts.test" in both and "DNS:api.farts.test" in both
        key = next((node.data_dir / "certs").glob("acme.key"))
        assert oct(key.stat().st_mode & 0o777) == "0o600"
        status = admin_json(node, "/api/certs")
        assert status["not_after"] and status["domains"] == ["www.farts.test", "api.farts.test"]
        assert metric(node, "farts_certs_orders_total", 'outcome="issued"') == 1
        first = (node.data_dir / "certs" / "acme.crt").read_bytes()
        listed = subprocess.run([sys.executable, "-m", "farts.cli", "certs", "list", "--config",
                                 str(node.data_dir / "farts.toml")], capture_output=True, text=True, timeout=30)
        assert "acme.crt" in listed.stdout and "Pebble" in listed.stdout, listed.stderr
        status_cli = subprocess.run([sys.executable, "-m", "farts.cli", "certs", "status", "--admin",
                                     node.url("admin", "/")], capture_output=True, text=True, timeout=30)
        assert '"www.farts.test"' in status_cli.stdout, status_cli.stderr

        # The CA goes down; a renewal fails; the certificate served stays the one it had.
        os.killpg(pebble.pid, signal.SIGTERM)
        pebble.wait(10)
        admin_json(node, "/api/certs/renew", "POST")
        assert wait_for(lambda: metric(node, "farts_certs_orders_total", 'outcome="failed"') >= 1, 60)
        assert (node.data_dir / "certs" / "acme.crt").read_bytes() == first
        assert "Pebble" in served_issuer(https, "www.farts.test")
        assert admin_json(node, "/api/certs")["last_error"]
        assert node.alive()


def test_config_errors_name_the_key():
    from farts import config
    with pytest.raises(config.ConfigError, match=r"t.toml: certs.directory_url: required"):
        config.parse("[certs]\nenabled = true\n", "t.toml")
    with pytest.raises(config.ConfigError, match=r"certs.directory_url: expected an https:// URL"):
        config.parse('[certs]\ndirectory_url = "http://x"\n', "t.toml")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_wildcard_certificate_by_dns01_on_the_nodes_own_dns(tmp_path):
    with acme_node(tmp_path, {"@": "127.0.0.1"}, ["farts.test", "shop.farts.test"],
                   'challenge = "dns-01"\ndomains = ["farts.test", "*.farts.test"]\nretry_min = 2.0\nretry_max = 4.0\n') as (node, pebble):
        https = node.port("https")
        issued = wait_for(lambda: "Pebble" in served_issuer(https, "shop.farts.test"), 150)
        log = (tmp_path / "pebble.log").read_text(errors="replace")
        assert issued, f"node log:\n{node.log()[-3000:]}\npebble log:\n{log[-3000:]}"
        names = served_issuer(https, "farts.test")
        assert "DNS:*.farts.test" in names and "DNS:farts.test" in names
        # The challenge's TXT records are withdrawn once the order is done.
        out = subprocess.run(["dig", "+short", "@127.0.0.1", "-p", str(dns_port(node)), "TXT",
                              "_acme-challenge.farts.test"], capture_output=True, text=True, timeout=10)
        assert out.returncode == 0 and out.stdout.strip() == ""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_refused_order_is_counted_retried_and_installs_nothing(tmp_path):
    with acme_node(tmp_path, {"www": "127.0.0.1"}, ["www.farts.test", "gone.farts.test"],
                   'domains = ["www.farts.test", "gone.farts.test"]\nretry_min = 1.0\nretry_max = 2.0\n') as (node, pebble):
        # gone.farts.test has no address in the zone: the CA cannot validate it, and the
        # order fails (then again, after the backoff).
        assert wait_for(lambda: metric(node, "farts_certs_orders_total", 'outcome="failed"') >= 2, 120), \
            node.log()[-3000:]
        status = admin_json(node, "/api/certs")
        assert status["failures_in_a_row"] >= 2 and status["last_error"] and status["not_after"] is None
        assert not (node.data_dir / "certs" / "acme.crt").exists()
        assert "Pebble" not in served_issuer(node.port("https"), "www.farts.test")


