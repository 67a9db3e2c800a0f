"""DNS with worker processes: every worker answers on its SO_REUSEPORT sockets (UDP and
TCP), from its own copy of the zone, the geo index and the member map.

Many queries, each from a new socket (a new source port: the kernel spreads them over
the workers by hash; the chance that 60 all land on one of three is 3 * 3^-60), get the
same answers from a node with ``workers = 3`` as from one with ``workers = 1``; a member
that dies on the mesh is gone from every worker's answers (the node process sends the
member map's changes to the workers).
"""
from __future__ import annotations

import asyncio
import os
import re
import signal

import dns.query
import pytest
from conftest import BASE_CONFIG
from mesh_helpers import make_ca, mesh_address, mesh_view, wait_for
from test_certs_ari import wait_until
from test_dns_server import EXACT, NODES, ZONE, addresses, query, write_mmdb
from test_workers_mesh import start

from farts import config
from farts.node import Node

QUERIES = 60
NAMES = [("edge.farts.test", "A", "10.1.0.0/24"), ("edge.farts.test", "A", "10.2.0.0/24"),
         ("one.farts.test", "A", "10.3.0.0/24"), ("edge.farts.test", "AAAA", "2001:db8:1::/48"),
         ("www.farts.test", "A", None), ("nothing.farts.test", "A", None), ("farts.test", "SOA", None),
         ("big.farts.test", "TXT", None), ("x.ws.farts.test", "A", "10.2.0.0/24")]


@pytest.fixture(scope="module")
def exact_db(tmp_path_factory):
    return write_mmdb(tmp_path_factory.mktemp("geo") / "exact.mmdb", EXACT)


def zone(db: str) -> str:
    return ZONE.format(db=db, rrl_rate=0, rrl_burst=1)


def dns_port(node) -> int:
    m = re.search(rb"dns://127\.0\.0\.1:(\d+)/", b"".join(node.output))
    assert m, node.output
    return int(m.group(1))


def answer(port: int, name: str, rdtype: str, subnet: str | None, tcp: bool = False) -> str:
    """The reply as text, its id left out (dnspython: a new socket per query)."""
    msg = query(name, rdtype, subnet)
    resp = (dns.query.tcp if tcp else dns.query.udp)(msg, "127.0.0.1", port=port, timeout=5)
    resp.id = 0
    return resp.to_text()


def all_answers(port: int) -> list[str]:
    return [answer(port, *NAMES[i % len(NAMES)], tcp=i % 4 == 3) for i in range(QUERIES)]


def test_every_worker_answers_as_one_process_does(node_factory, exact_db):
    nodes_config = "".join(f'\n[[dns.nodes]]\nid = "{m.id}"\nregion = "{m.region}"\nlat = {m.lat}\n'
                           f'lon = {m.lon}\naddresses = ["{m.addresses[0]}"]\n' for m in NODES)
    one = node_factory(zone(exact_db) + nodes_config)
    base = BASE_CONFIG.replace('data_dir = "{data_dir}"', 'data_dir = "{data_dir}"\nworkers = 3')
    three = node_factory(zone(exact_db) + nodes_config, base=base)
    want = all_answers(dns_port(one))
    assert "127.0.0.2" in want[1]   # (a geo answer: the index is built)
    # Each worker builds its index after it starts: until then its geo answers differ.
    got = wait_for(lambda: (a := all_answers(dns_port(three))) == want and a, 60)
    assert got == want


def test_a_member_that_dies_is_gone_from_every_worker(tmp_path, exact_db):
    """n1 (three workers, DNS) and n2 (Frankfurt, 127.0.0.2) on a mesh: Paris clients get
    n2 first until n2 is killed, then no worker gives it out."""
    ca_dir = make_ca(tmp_path)
    n1 = start(tmp_path, ca_dir, "n1", [], 3, 'public_addresses = ["127.0.0.1"]\n' + zone(exact_db))
    n2 = None
    try:
        n2 = start(tmp_path, ca_dir, "n2", [mesh_address(n1)], 1, 'public_addresses = ["127.0.0.2"]\n',
                   "lat = 50.11\nlon = 8.68\n")
        assert wait_for(lambda: any(m["state"] == "alive" for m in mesh_view(n1)["members"] if not m["self"]), 30)
        paris = lambda: [addresses(dns.query.udp(query("edge.farts.test", "A", "10.2.0.0/24"), "127.0.0.1",  # noqa: E731
                                                 port=dns_port(n1), timeout=5)) for _ in range(QUERIES // 2)]
        assert wait_for(lambda: all(a[:1] == ["127.0.0.2"] for a in paris()), 60), paris()
        n2.stop(signal.SIGKILL)
        assert wait_for(lambda: all(a == ["127.0.0.1"] for a in paris()), 30), paris()
    finally:
        for node in (n2, n1):
            if node is not None:
                node.stop()


def txt_answers(port: int, name: str, n: int) -> list[list[str]]:
    out = []
    for _ in range(n):   # (each from a new socket: any worker)
        resp = dns.query.udp(query(name, "TXT"), "127.0.0.1", port=port, timeout=5)
        out.append(sorted(s.decode() for rrset in resp.answer for rd in rrset for s in rd.strings))
    return out


def test_run_time_txt_records_reach_every_worker_and_a_new_one(tmp_path, exact_db):
    """A TXT record set at run time on the node (as ACME DNS-01 does) is answered by every
    worker, by one started after it too, and withdrawn from all."""
    cfg = config.parse(f'[node]\ndata_dir = "{tmp_path}"\nworkers = 3\n[listeners.http]\nenabled = false\n'
                       '[listeners.https]\nenabled = false\n[listeners.admin]\nenabled = false\n' + zone(exact_db),
                       str(tmp_path / "farts.toml"))
    name = "_acme-challenge.www.farts.test"

    async def main():
        node = Node(cfg)
        await node.start()
        try:
            port, sup = node.dns.address[1], node.supervisor
            assert node.dns.set_txt(name, ["token-1"])
            assert await asyncio.to_thread(txt_answers, port, name, QUERIES) == [["token-1"]] * QUERIES
            killed = sup.slots[0].proc
            os.kill(killed.pid, signal.SIGKILL)
            assert await wait_until(lambda: sup.slots[0].proc is not killed and sup.serving() == 3, 60)
            assert await asyncio.to_thread(txt_answers, port, name, QUERIES) == [["token-1"]] * QUERIES
            assert node.dns.set_txt(name, [])
            assert await asyncio.to_thread(txt_answers, port, name, QUERIES) == [[]] * QUERIES
        finally:
            await node.stop()

    asyncio.run(asyncio.wait_for(main(), 180))
