"""Starting real mesh nodes (`farts-edge serve` processes) on loopback, one CA for all."""
from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from conftest import RunningNode, start_node

from farts import pki

# Tight enough to keep the tests short, loose enough for a shared 2-core machine.
MESH = """
[node]
id = "{node_id}"
region = "{region}"
data_dir = "{{data_dir}}"

[listeners.http]
port = 0
[listeners.https]
enabled = false
[listeners.admin]
port = 0

[mesh]
enabled = true
host = "127.0.0.1"
port = 0
seeds = {seeds}
ca = "{ca}"
cert = "{cert}"
key = "{key}"
probe_interval = 0.5
probe_timeout = 0.25
suspicion_timeout = 1.5
reconnect_min = 0.05
reconnect_max = 0.5
push_pull_interval = 5.0
"""


def make_ca(root: Path) -> Path:
    ca_dir = root / "ca"
    pki.make_ca(ca_dir)
    return ca_dir


def start_mesh_node(root: Path, ca_dir: Path, node_id: str, seeds: list[str], region: str = "test",
                    sub: str | None = None, extra: str = "", https: bool = False, **kw) -> RunningNode:
    """extra: more lines for the [mesh] table (the last one of the config); https: the
    HTTPS listener on (a free port, certificates reloaded every 0.2 s); kw: start_node's."""
    mesh_dir = root / (sub or node_id) / "node" / "mesh"
    if not (mesh_dir / "node.crt").exists():
        pki.issue(ca_dir, mesh_dir / "node.crt", mesh_dir / "node.key", ["127.0.0.1"], node_id=node_id)
    base = MESH.format(node_id=node_id, region=region, seeds=json.dumps(seeds), ca=ca_dir / "ca.crt",
                       cert=mesh_dir / "node.crt", key=mesh_dir / "node.key")
    if https:
        base = base.replace("[listeners.https]\nenabled = false\n", "[listeners.https]\nport = 0\nreload_interval = 0.2\n")
    return start_node(root / (sub or node_id), extra, base=base, **kw)


def mesh_view(node: RunningNode) -> dict:
    with urllib.request.urlopen(node.url("admin", "/api/mesh"), timeout=5) as r:
        return json.load(r)


def states(node: RunningNode) -> dict[str, tuple[str, int]]:
    """id -> (state, incarnation) as node sees the mesh."""
    return {m["id"]: (m["state"], m["incarnation"]) for m in mesh_view(node)["members"]}


def mesh_address(node: RunningNode) -> str:
    return next(m["mesh"] for m in mesh_view(node)["members"] if m["self"])


def metric(node: RunningNode, name: str, labels: str = "") -> float:
    with urllib.request.urlopen(node.url("admin", "/metrics"), timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():  # the sum over every series of name whose labels include `labels`
        if line.startswith((name + "{", name + " ")) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(check, timeout: float, interval: float = 0.1):
    """Polls check() until it returns something truthy; returns it, or the last value at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def start_up_cluster(data: Path, n: int = 3, args: tuple = (), command: list[str] | None = None,
                     cwd: Path | None = None):
    """`farts-edge up --nodes n --data-dir data ARGS` as a subprocess (``command``: how to
    run farts-edge, by default this interpreter's -m farts.cli); returns (proc, its output
    up to the line that says the cluster is up). The caller stops it (SIGINT)."""
    import os
    import select
    import subprocess
    import sys

    command = command or [sys.executable, "-m", "farts.cli"]
    proc = subprocess.Popen([*command, "up", "--nodes", str(n), "--data-dir", str(data), *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = b""
    deadline = time.monotonic() + 60
    while b"Ctrl-C stops the cluster." not in out and time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            out += os.read(proc.stdout.fileno(), 65536)
    return proc, out
