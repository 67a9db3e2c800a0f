"""`farts-edge up --nodes 3`: a local cluster, one process per node on 127.0.0.i, and the
`ca` commands an operator uses to make the same certificates by hand."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from mesh_helpers import start_up_cluster, wait_for


def _cmdline(proc_dir: Path) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:
        return b""


def cli(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "farts.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_ca_init_and_issue_put_the_node_id_in_the_certificate(tmp_path):
    r = cli("ca", "init", "--dir", str(tmp_path / "ca"))
    assert r.returncode == 0, r.stderr
    r = cli("ca", "issue", "node-7", "--dir", str(tmp_path / "ca"), "--out", str(tmp_path / "n7"),
            "--name", "10.0.0.7")
    assert r.returncode == 0, r.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "n7" / "node-7.crt").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-7"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["farts-node:node-7"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    r = cli("ca", "issue", "node-8", "--dir", str(tmp_path / "no-ca"))
    assert r.returncode == 2 and "ca init" in r.stderr


@pytest.mark.usefixtures("default_ports")
def test_up_three_nodes_forms_a_cluster_and_ctrl_c_stops_it(tmp_path):
    data = tmp_path / "cluster"
    # Run as an installed user would (the console script), from a folder that holds
    # another farts/ source tree: the nodes must import what the command imports.
    checkout = tmp_path / "checkout"
    (checkout / "farts").mkdir(parents=True)
    (checkout / "farts" / "__init__.py").write_text('raise ImportError("the checkout\'s farts was imported")\n')
    proc, out = start_up_cluster(data, args=("--access-log", "0.5"), cwd=checkout,
                                 command=[str(Path(sys.executable).parent / "farts-edge")])
    try:
        assert b"Ctrl-C stops the cluster." in out, out.decode(errors="replace")
        assert b"  status page: http://127.0.0.1:9100/" in out
        for i in (1, 2, 3):
            assert f"[node-{i}]   https  https://127.0.0.{i}:8443/".encode() in out
            node_cfg = tomllib.loads((data / f"node-{i}" / "farts.toml").read_text())
            assert node_cfg["http"]["access_log_sample"] == 0.5   # up's flags are in every node's config

        def table():
            r = cli("status", "--admin", "http://127.0.0.2:9100/")
            return r.stdout if r.returncode == 0 and r.stdout.count(" alive ") == 3 else ""
        text = wait_for(table, 20)
        assert text, cli("status", "--admin", "http://127.0.0.2:9100/")
        for region in ("us-west", "eu-central", "ap-southeast"):
            assert region in text
        assert "node-2 *" in text

        ca = data / "ca" / "ca.crt"
        https = subprocess.run(["curl", "-sS", "--cacert", str(ca), "https://127.0.0.3:8443/"],
                               capture_output=True, timeout=10)
        assert https.returncode == 0 and https.stdout.startswith(b"farts-edge is up"), https.stderr
        # Each node's CDN has the built-in origin's file (a cluster once answered 404 here).
        media = httpx.get("http://127.0.0.2:8080/media/hello.txt")
        assert media.status_code == 200 and media.text.startswith("hello from the farts-edge CDN")
        mesh = httpx.get("http://127.0.0.1:9100/api/mesh").json()
        assert {m["id"]: m["mesh"] for m in mesh["members"]} == {
            f"node-{i}": f"127.0.0.{i}:7946" for i in (1, 2, 3)}

        # The geo DNS answers from the member map the mesh writes: a London client gets
        # Frankfurt (node-2) until node-2 is killed, then no longer.
        dns = tomllib.loads((data / "node-1" / "farts.toml").read_text())["dns"]
        name = f"{dns['geo'][0]['name']}.{dns['zone']}"

        def answer():
            r = subprocess.run(["dig", "+short", "@127.0.0.1", "-p", str(dns["port"]), name,
                                "+subnet=81.2.69.0/24"], capture_output=True, text=True, timeout=10)
            return r.stdout.split()
        assert wait_for(lambda: "127.0.0.2" in answer(), 20), answer()  # once the geo index is built
        node2 = next(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                     and str(data / "node-2" / "farts.toml").encode() in _cmdline(p))
        os.kill(node2, signal.SIGKILL)
        assert wait_for(lambda: "127.0.0.2" not in answer(), 15), answer()
        assert answer()  # still the live nodes
        status = cli("status", "--admin", "http://127.0.0.1:9100/").stdout
        assert any(line.startswith("node-2 ") and " dead " in line for line in status.splitlines()), status
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, rest.decode(errors="replace")
    assert (out + rest).count(b"exited (0)") == 2 and b"[node-2] exited (-9)" in out + rest
    for i in (1, 2, 3):  # nothing is left listening
        assert subprocess.run(["curl", "-sS", "-m", "2", f"http://127.0.0.{i}:9100/healthz"],
                              capture_output=True).returncode != 0
