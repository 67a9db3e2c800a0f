"""The GeoIP rebuild on real nodes: three `farts-edge serve` processes (mesh, [db],
[master], [dns] with a geo name), a cron running the built-in task every two seconds
against a loopback server. A bad download (checksum mismatch) is a failed run: the
cron_failed alert fires and every node's DNS keeps answering from the old database;
once the server has a good one, every node's DNS answers from it (dnspython, with an
ECS client subnet) and the alert resolves. node-3 runs two workers, whose DNS answers too:
the published database reaches them through the node process."""
from __future__ import annotations

import json
import urllib.request

import dns.edns
import dns.message
import dns.query
import mesh_helpers
import pytest
from mesh_helpers import make_ca, mesh_address, metric, start_mesh_node, states, wait_for
from test_certs_acme import dns_port
from test_master_cluster import IDS, master_config
from test_master_geoip import ASIA, EU, Files, mmdb, targz

# The node whose DNS answers from its workers' sockets ([node] workers = 2)
WORKERS = {"node-3": 2}

# node id -> (lat, lon, the address its DNS gives out)
PLACES = {"node-1": (*EU, "127.0.0.11"), "node-2": (*ASIA, "127.0.0.12"), "node-3": (45.52, -122.68, "127.0.0.13")}


def answer(node) -> list[str]:
    """What this node's DNS answers for edge.farts.test to a client in 10.1.0.0/24."""
    q = dns.message.make_query("edge.farts.test", "A", use_edns=0, options=[dns.edns.ECSOption("10.1.0.0", 24)])
    try:
        r = dns.query.udp(q, "127.0.0.1", port=dns_port(node), timeout=2)
    except dns.exception.Timeout:
        return []
    return sorted(rr.address for rrset in r.answer for rr in rrset)


def get(node, path: str) -> dict:
    with urllib.request.urlopen(node.url("admin", path), timeout=5) as r:
        return json.load(r)


def open_alerts(node) -> list[str]:
    return [a["key"] for a in get(node, "/api/master/alerts")["alerts"] if a.get("resolved") is None]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_bad_download_alerts_and_a_good_one_reaches_every_nodes_dns(tmp_path, monkeypatch):
    first = tmp_path / "first.mmdb"
    first.write_bytes(mmdb(EU, "GeoLite2-City"))
    files = Files({})
    files.serve(targz({"GeoLite2-City_20261205/GeoLite2-City.mmdb": mmdb(ASIA)}), b"0" * 64 + b"  x.tar.gz\n")
    extra = f"""
[master.geoip]
url = "{files.url}/db?edition_id=GeoLite2-City&license_key={{license_key}}&suffix=tar.gz"
license_key = "test-key"
[master.alerts]
interval = 1.0
[[master.crons]]
name = "geoip"
schedule = "* * * * * */2"
action = "task"
task = "geoip_rebuild"
timeout = 60
retries = 0

[dns]
enabled = true
port = 0
zone = "farts.test"
geoip_database = "{first}"
[[dns.geo]]
name = "edge"
answers = 1
"""
    ca = make_ca(tmp_path)
    nodes = {}
    template = mesh_helpers.MESH
    try:
        for i, node_id in enumerate(IDS):
            lat, lon, addr = PLACES[node_id]
            monkeypatch.setattr(mesh_helpers, "MESH", template.replace(
                'region = "{region}"\n', f'region = "{{region}}"\nlat = {lat}\nlon = {lon}\n'))
            seeds = [mesh_address(nodes[IDS[i - 1]])] if i else []
            nodes[node_id] = start_mesh_node(tmp_path, ca, node_id, seeds,
                                             extra=f'public_addresses = ["{addr}"]\n' + master_config(IDS, extra),
                                             workers=WORKERS.get(node_id, 1))
        assert wait_for(lambda: all(sorted(states(n)) == IDS for n in nodes.values()), 60)
        # Every node: the configured database (10/8 in Europe: node-1's address).
        assert wait_for(lambda: all(answer(n) == ["127.0.0.11"] for n in nodes.values()), 60), \
            {i: answer(n) for i, n in nodes.items()}
        master = wait_for(lambda: next((i for i, n in nodes.items() if get(n, "/api/master")["acting"]), None), 60)
        assert master, "no master"
        # The bad download: a failed run recorded, the alert open, the old answers kept.
        assert wait_for(lambda: "cron_failed:geoip" in open_alerts(nodes[master]), 60), \
            get(nodes[master], "/api/master/crons")
        runs = get(nodes[master], "/api/master/crons")["crons"][0]["history"]
        assert runs[0]["state"] == "failed" and "checksum file says" in runs[0]["error"]
        assert "test-key" not in json.dumps(runs)
        assert all(answer(n) == ["127.0.0.11"] for n in nodes.values())
        assert all(get(n, "/api/master")["geoip"] is None for n in nodes.values())
        # A good one: on every node (10/8 in Asia: node-2), and the alert resolves.
        files.serve(targz({"GeoLite2-City_20261205/GeoLite2-City.mmdb": mmdb(ASIA)}))
        assert wait_for(lambda: all(answer(n) == ["127.0.0.12"] for n in nodes.values()), 90), \
            {i: answer(n) for i, n in nodes.items()}
        # (every worker: each query comes from another port, so the kernel spreads them)
        assert wait_for(lambda: all(answer(nodes["node-3"]) == ["127.0.0.12"] for _ in range(20)), 30)
        published = {json.dumps(get(n, "/api/master")["geoip"], sort_keys=True) for n in nodes.values()}
        assert len(published) == 1 and json.loads(published.pop())["database_type"] == "GeoLite2-City"
        assert wait_for(lambda: "cron_failed:geoip" not in open_alerts(nodes[master]), 60)
        for node_id, n in nodes.items():
            assert metric(n, "farts_master_geoip_total", 'event="installed"') == 1, node_id
            assert metric(n, "farts_dns_index_builds", 'result="failed"') == 0, node_id
        # A restarted node starts on the published database, not the configured one.
        other = next(i for i in IDS if i != master)
        nodes[other].stop()
        lat, lon, addr = PLACES[other]
        monkeypatch.setattr(mesh_helpers, "MESH", template.replace(
            'region = "{region}"\n', f'region = "{{region}}"\nlat = {lat}\nlon = {lon}\n'))
        nodes[other] = start_mesh_node(tmp_path, ca, other, [mesh_address(nodes[master])],
                                       extra=f'public_addresses = ["{addr}"]\n' + master_config(IDS, extra),
                                       workers=WORKERS.get(other, 1))
        assert wait_for(lambda: sorted(states(nodes[other])) == IDS
                        and {s for s, _ in states(nodes[other]).values()} == {"alive"}, 60)
        assert wait_for(lambda: answer(nodes[other]) == ["127.0.0.12"], 30), answer(nodes[other])
    finally:
        for n in nodes.values():
            n.stop()
        files.close()
