"""fast.dnsloop's reply cache (a C hash table) and its remembered sender locations, on a
real UDP socket on loopback with the real Responder behind it: a replay is the
Responder's reply byte for byte under the query's ID, in full batches and across
collisions; eviction keeps the counts; a zone change, a node change and a new geo index
(sender locations included) take effect on the next query."""
from __future__ import annotations

import asyncio
import ipaddress
import select
import socket

import dns.message
import dns.rcode
import pytest
from test_dns_server import EXACT, NODES, Running, addresses, dns_config, query, write_mmdb

from farts.dns.geoindex import GeoSource, build
from farts.dns.responder import Responder
from farts.dns.zone import Zone
from farts.members import DEAD, MemberMap
from fast.dnsloop import UDPFastPath

LOOPBACK = socket.inet_aton("127.0.0.1")


class Loop:
    """A UDPFastPath on a bound socket, driven from the test thread (no event loop), with
    the Responder of a config behind it; clients send from 127.0.0.x."""

    def __init__(self, db: str, max_entries: int = 100000) -> None:
        cfg = dns_config(db)
        self.geo = GeoSource(db, 1e9, initial=build(db))
        self.members = MemberMap(list(NODES))
        self.responder = Responder(Zone(cfg), self.members, self.geo, cfg.default_region)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)   # (as the server does)
        self.sock.setblocking(False)
        self.fast = UDPFastPath(self.sock.fileno(), lambda q, c: self.responder.respond(q, c, False),
                                max_entries=max_entries)
        self.fast.set_geo(self.geo.current.index)
        self.geo.on_swap.append(lambda data: self.fast.set_geo(data.index))
        self.responder.on_nodes_change.append(self.fast.clear)
        self.clients: dict[str, socket.socket] = {}

    def client(self, source: str) -> socket.socket:
        if source not in self.clients:
            c = self.clients[source] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.bind((source, 0))
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            c.settimeout(5)
        return self.clients[source]

    def ask_all(self, wires: list[bytes], source: str = "127.0.0.1") -> list[bytes]:
        """Sends every query at once (the loop reads them in batches), then answers; the
        replies in query order (matched by ID, unique per call)."""
        c = self.client(source)
        for w in wires:
            c.sendto(w, self.sock.getsockname())
        answered = 0
        while answered < len(wires):
            assert select.select([self.sock], [], [], 5)[0], "queries never arrived"
            answered += self.fast.on_readable()
        by_id = {}
        for _ in wires:
            r = c.recv(65535)
            by_id[int.from_bytes(r[:2], "big")] = r
        return [by_id[int.from_bytes(w[:2], "big")] for w in wires]

    def ask(self, wire: bytes, source: str = "127.0.0.1") -> bytes:
        return self.ask_all([wire], source)[0]

    def close(self) -> None:
        for c in self.clients.values():
            c.close()
        self.fast.close()
        self.sock.close()


def with_id(wire: bytes, qid: int) -> bytes:
    return qid.to_bytes(2, "big") + wire[2:]


def query_set() -> list[bytes]:
    """Every kind of answer, and 600 geo queries that differ only in their ECS subnet."""
    msgs = [query("edge.farts.test", subnet="10.2.200.0/24"), query("EDGE.farts.test"), query("www.farts.test"),
            query("one.farts.test", "AAAA", subnet="2001:db8:1::/48"), query("nothing.farts.test"),
            query("big.farts.test", "TXT"), query("farts.test", "ANY"), query("farts.test", "MX"),
            query("x.org"), query("static.farts.test", use_edns=0, payload=4096, want_dnssec=True)]
    for i in range(600):   # 10.0.0.0/24 to 10.2.87.0/24: unknown, Portland, Paris
        net = ipaddress.ip_network(((10 << 24) | (i << 8), 24))
        msgs.append(query("edge.farts.test", subnet=str(net)))
    return [m.to_wire() for m in msgs]


@pytest.fixture(scope="module")
def exact(tmp_path_factory):
    return write_mmdb(tmp_path_factory.mktemp("geo") / "exact.mmdb", EXACT)


@pytest.fixture
def loop(exact):
    lp = Loop(exact)
    yield lp
    lp.close()


def test_replays_are_the_responders_bytes_under_the_querys_id(loop):
    wires = [with_id(w, i) for i, w in enumerate(query_set())]
    # what the Responder says to the same client, without the fast path
    direct = [loop.responder.respond(w, LOOPBACK, False)[0] for w in wires]
    first = loop.ask_all(wires)            # in batches of 64: misses, then each one cached
    assert first == direct
    assert loop.fast.misses == len(wires) and loop.fast.hits == 0
    assert loop.fast.entries == len(wires)
    again = [with_id(w, 10000 + i) for i, w in enumerate(wires)]
    second = loop.ask_all(again)
    assert loop.fast.hits == len(wires) and loop.fast.misses == len(wires)
    assert second == [with_id(r, 10000 + i) for i, r in enumerate(first)]
    assert loop.fast.reads >= len(wires) // 64 * 2 and loop.fast.sends >= loop.fast.reads
    # the same question twice in one batch: the second is already a hit
    twice = [with_id(wires[0], 20000), with_id(wires[0], 20001)]
    assert loop.ask_all(twice) == [with_id(first[0], 20000), with_id(first[0], 20001)]


def test_replies_count_by_label_across_eviction(exact):
    loop = Loop(exact, max_entries=5)
    try:
        wires = query_set()[:12]
        expected = [loop.ask(with_id(w, i)) for i, w in enumerate(wires)]
        assert 0 < loop.fast.entries <= 5
        for rnd in range(3):
            for i, w in enumerate(wires):
                for qid in (1000 * rnd + i, 1000 * rnd + 500 + i):   # the second is a hit
                    assert loop.ask(with_id(w, qid)) == with_id(expected[i], qid)
                    assert loop.fast.entries <= 5
        # every reply came from the cache or the Responder; the cached ones are all in the
        # labels' totals, those of evicted entries included
        assert loop.fast.hits + loop.fast.misses == 7 * len(wires)
        assert loop.fast.hits >= 3 * len(wires) and loop.fast.misses > len(wires)   # (evictions cost misses)
        assert sum(loop.fast.replayed().values()) == loop.fast.hits
    finally:
        loop.close()


def test_a_node_change_empties_the_cache(loop):
    wire = query("one.farts.test", subnet="10.2.0.0/24").to_wire()
    assert addresses(dns.message.from_wire(loop.ask(wire))) == ["127.0.0.2"]   # Paris: Frankfurt
    loop.ask(wire)
    assert loop.fast.hits == 1 and loop.fast.entries == 1
    loop.members.set_state("frankfurt", DEAD)
    assert loop.fast.entries == 0
    assert addresses(dns.message.from_wire(loop.ask(wire))) == ["127.0.0.1"]
    assert sum(loop.fast.replayed().values()) == 1   # the evicted entry's replay still counts


def test_a_new_index_relocates_remembered_senders(tmp_path):
    """Queries without ECS are placed by the sender's address, whose location the loop
    remembers: a new index must forget it. Location numbers are per index, so a stale
    one is another place's: here 127.0.0.2's old number is 127.0.0.1's new one, so had
    127.0.0.2 kept it, it would be handed the answer cached for 127.0.0.1 (Singapore's)."""
    portland, tokyo = (45.5, -122.6, "NA", "US"), (35.68, 139.69, "AS", "JP")
    path = write_mmdb(tmp_path / "geo.mmdb", {"127.0.0.2/32": portland})
    loop = Loop(path)
    try:
        one = query("one.farts.test").to_wire()
        assert addresses(dns.message.from_wire(loop.ask(one, "127.0.0.2"))) == ["127.0.0.1"]   # Oregon
        old_index = loop.geo.current.index
        write_mmdb(tmp_path / "geo.mmdb", {"127.0.0.1/32": tokyo, "127.0.0.2/32": portland})
        asyncio.run(loop.geo.load())
        new_index = loop.geo.current.index
        assert new_index.lookup(socket.inet_aton("127.0.0.1"))[0] == old_index.lookup(socket.inet_aton("127.0.0.2"))[0]
        assert loop.fast.entries == 0
        assert addresses(dns.message.from_wire(loop.ask(one, "127.0.0.1"))) == ["127.0.0.3"]   # Singapore
        assert addresses(dns.message.from_wire(loop.ask(one, "127.0.0.2"))) == ["127.0.0.1"]
        assert addresses(dns.message.from_wire(loop.ask(one, "127.0.0.2"))) == ["127.0.0.1"]   # (cached)
        assert loop.fast.hits == 1
    finally:
        loop.close()


def test_a_run_time_txt_record_replaces_the_cached_negative_answer(exact):
    srv = Running(dns_config(exact), MemberMap(list(NODES)))
    try:
        q = query("_acme-challenge.farts.test", "TXT")
        for _ in range(3):
            assert srv.udp(q).rcode() == dns.rcode.NXDOMAIN
        assert srv.server.fast.hits >= 2
        assert srv.call(lambda: srv.server.set_txt("_acme-challenge.farts.test", ["token-1"]))
        r = srv.udp(q)
        assert r.rcode() == dns.rcode.NOERROR
        assert [s.decode() for rrset in r.answer for rd in rrset for s in rd.strings] == ["token-1"]
    finally:
        srv.close()


def test_the_server_answers_bursts_then_single_queries(exact):
    """A burst (batches of 64: the socket leaves the epoll set while they are answered),
    then queries one at a time: each is answered, so the socket was watched again."""
    srv = Running(dns_config(exact), MemberMap(list(NODES)))
    try:
        wires = [with_id(w, i) for i, w in enumerate(query_set())]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            c.settimeout(10)
            for _ in range(2):   # misses, then hits
                for w in wires:
                    c.sendto(w, ("127.0.0.1", srv.port))
                ids = sorted(int.from_bytes(c.recv(65535)[:2], "big") for _ in wires)
                assert ids == list(range(len(wires)))
                for i in range(20):
                    c.sendto(with_id(wires[i], 5000 + i), ("127.0.0.1", srv.port))
                    assert c.recv(65535)[:2] == (5000 + i).to_bytes(2, "big")
        assert srv.server.fast.reads < srv.server.fast.hits + srv.server.fast.misses   # (batches were read)
    finally:
        srv.close()
