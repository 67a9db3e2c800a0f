"""One ACME order per cluster: three mesh nodes with [certs] (DNS-01 on their own DNS,
pebble -strict started here); exactly one node orders, all three serve the certificate
(openssl s_client -servername on each), and a node that joins later gets it over the
mesh without ordering. The pair a node receives is installed only when valid for it."""
from __future__ import annotations

import datetime
import os
import shutil
import signal

import pytest
from mesh_helpers import make_ca, mesh_address, start_mesh_node, states, wait_for
from test_certs_acme import metric, pebble_ca, served_issuer, start_pebble

from farts import pki

NAMES = ["www.farts.test", "api.farts.test"]


def certs_config(acme_port: int, ca) -> str:
    return f"""
[dns]
enabled = true
port = 0
zone = "farts.test"
[[dns.records]]
name = "www"
type = "A"
value = "127.0.0.1"
[[dns.records]]
name = "api"
type = "A"
value = "127.0.0.1"

[[tenants]]
id = "site"
hosts = {NAMES!r}

[certs]
enabled = true
challenge = "dns-01"
directory_url = "https://127.0.0.1:{acme_port}/dir"
ca_bundle = "{ca}"
retry_min = 2.0
retry_max = 4.0
order_timeout = 90.0

[[routes]]
prefix = "/"
kind = "static"
body = "hello\\n"
"""


def serves_pebble(node) -> bool:
    return "Pebble" in served_issuer(node.port("https"), "www.farts.test")


@pytest.mark.skipif(shutil.which("pebble") is None, reason="pebble is not installed; ci/setup installs it")
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_one_order_for_the_cluster_and_every_node_serves_it(tmp_path):
    ca = make_ca(tmp_path)
    pebble_ca_file, acme_port = pebble_ca(tmp_path)
    extra = certs_config(acme_port, pebble_ca_file)
    nodes, pebble = {}, None
    try:
        for i, node_id in enumerate(["a", "b", "c"]):
            seeds = [mesh_address(nodes["a"])] if i else []
            nodes[node_id] = start_mesh_node(tmp_path, ca, node_id, seeds, extra=extra, https=True)
        assert wait_for(lambda: all(sorted(states(n)) == ["a", "b", "c"] for n in nodes.values()), 30)
        pebble = start_pebble(tmp_path, nodes["a"], acme_port)
        served = wait_for(lambda: all(serves_pebble(n) for n in nodes.values()), 200, 1.0)
        log = (tmp_path / "pebble.log").read_text(errors="replace")
        assert served, f"a:\n{nodes['a'].log()[-3000:]}\nb:\n{nodes['b'].log()[-2000:]}\npebble:\n{log[-2000:]}"
        issued = {i: metric(n, "farts_certs_orders_total", 'outcome="issued"') for i, n in nodes.items()}
        assert issued == {"a": 1, "b": 0, "c": 0}, issued   # the lowest id orders, once
        for i in ("b", "c"):
            assert metric(nodes[i], "farts_certs_received_total", 'outcome="installed"') >= 1
            key = nodes[i].data_dir / "certs" / "acme.key"
            assert oct(key.stat().st_mode & 0o777) == "0o600"
        chain = (nodes["a"].data_dir / "certs" / "acme.crt").read_bytes()
        assert all((n.data_dir / "certs" / "acme.crt").read_bytes() == chain for n in nodes.values())

        # A node that joins later gets the certificate from the others, without ordering.
        nodes["d"] = start_mesh_node(tmp_path, ca, "d", [mesh_address(nodes["b"])], extra=extra, https=True)
        assert wait_for(lambda: serves_pebble(nodes["d"]), 60, 1.0), nodes["d"].log()[-3000:]
        assert metric(nodes["d"], "farts_certs_orders_total", 'outcome="issued"') == 0
        assert (nodes["d"].data_dir / "certs" / "acme.crt").read_bytes() == chain
    finally:
        if pebble is not None and pebble.poll() is None:
            os.killpg(pebble.pid, signal.SIGKILL)
        for n in nodes.values():
            n.stop()


def test_a_received_pair_is_installed_only_when_valid_here_and_newer(tmp_path):
    from farts.certs.config import CertsConfig
    from farts.certs.service import CertService
    from farts.clock import FakeClock
    from farts.metrics import Metrics

    ca = tmp_path / "ca"
    pki.make_ca(ca)

    def pair(name: str, names=NAMES, days: int = 30):
        crt, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        pki.issue(ca, crt, key, names, days=days)
        return crt.read_bytes(), key.read_bytes()

    certs = CertService(CertsConfig(), NAMES, tmp_path / "certs", tmp_path / "acme", Metrics(), FakeClock())
    certs.cert_dir.mkdir()
    first, other, short = pair("first", days=30), pair("other", days=60), pair("short", days=10)
    assert certs.receive(*first, "a") == "installed"
    assert certs.current_pair() == first
    assert certs.receive(*short, "a") == "not_newer"                      # expires sooner
    assert certs.receive(other[0], first[1], "a") == "refused"            # key of another cert
    assert certs.receive(*pair("narrow", names=["www.farts.test"], days=90), "a") == "refused"  # api missing
    assert certs.receive(b"not pem", first[1], "a") == "refused"
    from cryptography.hazmat.primitives import serialization
    locked = serialization.load_pem_private_key(other[1], None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"))
    assert certs.receive(other[0], locked, "a") == "refused"             # an encrypted key: not usable
    assert certs.current_pair() == first                                  # all of those left it alone
    assert certs.receive(*other, "a") == "installed"
    assert certs.current_pair() == other
    assert datetime.datetime.now(datetime.UTC).timestamp() < certs.expiry()[1]
    # A pair that cannot be written (here: cert_dir is not a directory) is counted, not raised.
    (tmp_path / "not-a-dir").write_text("")
    stuck = CertService(CertsConfig(), NAMES, tmp_path / "not-a-dir", tmp_path / "acme", Metrics(), FakeClock())
    assert stuck.receive(*other, "a") == "failed"


@pytest.mark.skipif(shutil.which("pebble") is None, reason="pebble is not installed; ci/setup installs it")
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_with_a_master_the_master_orders(tmp_path):
    from test_master_cluster import agreed, master_config
    ca = make_ca(tmp_path)
    pebble_ca_file, acme_port = pebble_ca(tmp_path)
    ids = ["a", "b", "c"]
    extra = master_config(ids) + certs_config(acme_port, pebble_ca_file)
    nodes, pebble = {}, None
    try:
        # (c first: it likely wins the lease, so the master is not the lowest id, which
        # is who would order without one.)
        for i, node_id in enumerate(reversed(ids)):
            seeds = [mesh_address(nodes["c"])] if i else []
            nodes[node_id] = start_mesh_node(tmp_path, ca, node_id, seeds, extra=extra, https=True)
        assert wait_for(lambda: agreed(nodes), 60), {i: n.log()[-1500:] for i, n in nodes.items()}
        master, _ = agreed(nodes)
        pebble = start_pebble(tmp_path, nodes["a"], acme_port)
        assert wait_for(lambda: all(serves_pebble(n) for n in nodes.values()), 200, 1.0), nodes[master].log()[-3000:]
        issued = {i: metric(n, "farts_certs_orders_total", 'outcome="issued"') for i, n in nodes.items()}
        assert issued == {i: (1 if i == master else 0) for i in ids}, (master, issued)
    finally:
        if pebble is not None and pebble.poll() is None:
            os.killpg(pebble.pid, signal.SIGKILL)
        for n in nodes.values():
            n.stop()
