"""The geo DNS server on loopback, driven by real clients (dig, kdig, dnspython) over UDP
and TCP: geo answers from real GeoLite2 data and from exact databases written with
mmdb-writer, live node-map and index changes, every rcode/flag case, RRL, bad packets."""
from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import math
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import maxminddb
import pytest
from conftest import WORKERS_1_AND_3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmdb_writer import MmdbF64, MMDBWriter
from netaddr import IPSet

from farts import config
from farts.dns.config import DNSRecord
from farts.dns.geoindex import GeoSource, _location, build, default_database, record_location
from farts.dns.server import DNSServer
from farts.members import DEAD, DRAINING, Member, MemberMap
from fast.geo import decode_locations, walk_tree

OREGON = Member("oregon", "us-west", 45.52, -122.68, ("127.0.0.1", "::1"))
FRANKFURT = Member("frankfurt", "eu-central", 50.11, 8.68, ("127.0.0.2",))
SINGAPORE = Member("singapore", "ap-southeast", 1.35, 103.82, ("127.0.0.3",))
NODES = (OREGON, FRANKFURT, SINGAPORE)
BY_ADDRESS = {m.addresses[0]: m for m in NODES}

ZONE = """
[dns]
enabled = true
port = 0
zone = "farts.test"
default_region = "ap-southeast"
soa_minimum = 30
ns = ["ns1.farts.test"]
rrl_rate = {rrl_rate}
rrl_burst = {rrl_burst}
rrl_slip = 2
geoip_database = "{db}"

[[dns.geo]]
name = "edge"
answers = 2
ttl = 30

[[dns.geo]]
name = "one"
answers = 1
ttl = 20

[[dns.geo]]
name = "*.ws"
answers = 1

[[dns.records]]
name = "www"
type = "CNAME"
value = "static.farts.test."

[[dns.records]]
name = "static"
type = "A"
value = "192.0.2.7"

[[dns.records]]
name = "@"
type = "MX"
value = "10 mail.farts.test."

[[dns.records]]
name = "@"
type = "CAA"
value = '0 issue "letsencrypt.org"'

[[dns.records]]
name = "deep.sub"
type = "TXT"
value = "hello"
"""
# 40 TXT records of 10 bytes: ~970 bytes, more than 512, less than 1232.
BIG = "".join(f'\n[[dns.records]]\nname = "big"\ntype = "TXT"\nvalue = "{i:02d}{"x" * 8}"\n' for i in range(40))
# 80 more make the answer larger than 1232 bytes.
HUGE = "".join(f'\n[[dns.records]]\nname = "huge"\ntype = "TXT"\nvalue = "{i:03d}{"y" * 30}"\n' for i in range(80))


def dns_config(db: str, rrl_rate: float = 0, rrl_burst: float = 100):
    text = ZONE.format(db=db, rrl_rate=rrl_rate, rrl_burst=rrl_burst) + BIG + HUGE
    return config.parse(text, "test.toml").dns


class Running:
    """A DNSServer in its own event loop thread (the test's clients block)."""

    def __init__(self, cfg, members: MemberMap, geo: GeoSource | None = None, fast_udp: bool = True) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.members = members
        self.server = DNSServer(cfg, members, source="test.toml", geo=geo, fast_udp=fast_udp)
        self.call(self.server.start(wait_for_index=True))
        self.port = self.server.address[1]

    def call(self, coro_or_fn, timeout: float = 60):
        if asyncio.iscoroutine(coro_or_fn):
            return asyncio.run_coroutine_threadsafe(coro_or_fn, self.loop).result(timeout)

        async def run():
            return coro_or_fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def close(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    # dnspython clients
    def udp(self, msg, source: str = "127.0.0.1", timeout: float = 3):
        return dns.query.udp(msg, "127.0.0.1", port=self.port, source=source, timeout=timeout,
                             ignore_trailing=False)

    def tcp(self, msg, timeout: float = 3):
        return dns.query.tcp(msg, "127.0.0.1", port=self.port, timeout=timeout)


def write_mmdb(path, networks: dict[str, tuple[float, float, str, str]]) -> str:
    """An exact City-shaped database: network -> (lat, lon, continent, country)."""
    w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City")
    for net, (lat, lon, continent, country) in networks.items():
        w.insert_network(IPSet([net]), {
            "location": {"latitude": MmdbF64(lat), "longitude": MmdbF64(lon)},
            "continent": {"code": continent}, "country": {"iso_code": country}})
    tmp = f"{path}.tmp"
    w.to_db_file(tmp)
    os.replace(tmp, path)
    return str(path)


EXACT = {
    "10.1.0.0/16": (45.5, -122.6, "NA", "US"),     # Portland
    "10.2.0.0/16": (48.85, 2.35, "EU", "FR"),      # Paris
    "10.3.0.0/16": (35.68, 139.69, "AS", "JP"),    # Tokyo
    "2001:db8:1::/48": (52.52, 13.40, "EU", "DE"),   # Berlin
}


def km(lat1, lon1, lat2, lon2):
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * 6371 * math.asin(math.sqrt(a))


def nearest(lat, lon, members=NODES):
    return sorted(members, key=lambda m: km(lat, lon, m.lat, m.lon))


def query(name, rdtype="A", subnet: str | None = None, **kw):
    options = []
    if subnet is not None:
        addr, prefix = subnet.split("/")
        options.append(dns.edns.ECSOption(addr, int(prefix)))
    if options:   # (an empty options list would turn EDNS on too)
        kw.setdefault("use_edns", 0)
        kw["options"] = options
    return dns.message.make_query(name, rdtype, **kw)


def addresses(resp) -> list[str]:
    return [rd.address for rrset in resp.answer for rd in rrset if rrset.rdtype in (1, 28)]


def ecs_of(resp):
    return next((o for o in resp.options if isinstance(o, dns.edns.ECSOption)), None)


def raw_udp(port: int, wire: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(wire, ("127.0.0.1", port))
        return s.recv(65535)


def run_dig(tool: str, port: int, *args: str) -> str:
    out = subprocess.run([tool, "@127.0.0.1", "-p", str(port), *args], capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


def dig_addresses(text: str, name: str) -> list[str]:
    return re.findall(rf"^{re.escape(name)}\.\s+\d+\s+IN\s+A+\s+(\S+)$", text, re.M | re.I)


# ---------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def exact_db(tmp_path_factory):
    return write_mmdb(tmp_path_factory.mktemp("geo") / "exact.mmdb", EXACT)


@pytest.fixture
def server(exact_db):
    srv = Running(dns_config(exact_db), MemberMap(list(NODES)))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def geolite():
    """The bundled GeoLite2 City, indexed once for the module (it takes seconds)."""
    path = default_database()
    return path, build(path)


# ---------------------------------------------------------------------------------------
# Real GeoLite2 data


CANDIDATES = ["81.2.69.160", "2.16.0.1", "5.9.0.1", "80.67.169.12", "193.0.0.1", "8.8.8.8",
              "4.2.2.2", "24.207.68.1", "23.0.0.1", "1.0.16.1", "14.0.0.1", "27.0.0.1", "101.0.0.1"]


def test_geolite_clients_get_their_nearest_node(geolite):
    path, data = geolite
    reader = maxminddb.open_database(path)
    picked = {}
    for ip in CANDIDATES:
        rec = reader.get(ip) or {}
        cont = (rec.get("continent") or {}).get("code")
        loc = rec.get("location") or {}
        if cont in ("EU", "NA", "AS") and cont not in picked and "latitude" in loc:
            picked[cont] = (ip, loc["latitude"], loc["longitude"])
    assert set(picked) == {"EU", "NA", "AS"}, picked
    cfg = dns_config(path)
    srv = Running(cfg, MemberMap(list(NODES)), GeoSource(path, 3600, initial=data))
    try:
        for cont, (ip, lat, lon) in picked.items():
            want = nearest(lat, lon)
            # ECS from a loopback resolver, over UDP and TCP, dnspython
            q = query("one.farts.test", subnet=f"{ip}/32")
            for resp in (srv.udp(q), srv.tcp(q)):
                assert addresses(resp) == [want[0].addresses[0]], (cont, ip)
                e = ecs_of(resp)
                assert e is not None and e.address == ip and e.srclen == 32
                # the scope covers only addresses the database places where this one is
                block = ipaddress.ip_network(f"{ip}/{e.scopelen}", strict=False)
                for edge in (block[0], block[-1]):
                    assert (reader.get(str(edge)) or {}).get("location", {}).get("latitude") == lat
            # dig and kdig, /24 subnets
            net = str(ipaddress.ip_network(f"{ip}/24", strict=False).network_address)
            rec24 = reader.get(net) or {}
            lat24, lon24 = rec24["location"]["latitude"], rec24["location"]["longitude"]
            want24 = [m.addresses[0] for m in nearest(lat24, lon24)[:2]]
            text = run_dig("dig", srv.port, "edge.farts.test", f"+subnet={net}/24")
            assert dig_addresses(text, "edge.farts.test") == want24, text
            assert re.search(rf"CLIENT-SUBNET: {re.escape(net)}/24/\d+", text), text
            text = run_dig("kdig", srv.port, "+tcp", "edge.farts.test", f"+subnet={net}/24")
            assert dig_addresses(text, "edge.farts.test") == want24, text
        # A European /24 from a loopback resolver gets the European node.
        ip = picked["EU"][0]
        net = ipaddress.ip_network(f"{ip}/24", strict=False)
        resp = srv.udp(query("one.farts.test", subnet=str(net)))
        assert addresses(resp) == ["127.0.0.2"]
        assert ecs_of(resp).scopelen > 0
    finally:
        srv.close()


def expected(reader, ip):
    loc = (reader.get(ip) or {}).get("location") or {}
    return (loc["latitude"], loc["longitude"]) if "latitude" in loc else None


def test_geolite2_index_agrees_with_maxminddb(geolite):
    """fast.geo's index of the real database against the maxminddb reader."""
    path, data = geolite
    reader = maxminddb.open_database(path)
    rnd = random.Random(5)
    for _ in range(3000):
        ip = str(ipaddress.IPv4Address(rnd.getrandbits(32)))
        want = expected(reader, ip)
        loc, _ = data.index.lookup(ipaddress.ip_address(ip).packed)
        where = data.index.coords(loc) if loc >= 0 else None
        assert where == want or (want is None and where is not None and reader.get(ip)), ip
    for _ in range(1000):
        ip = str(ipaddress.IPv6Address((rnd.choice([0x2001, 0x2400, 0x2600, 0x2a00, 0x2c0f]) << 112)
                                       | rnd.getrandbits(112)))
        want = expected(reader, ip)
        loc, _ = data.index.lookup(ipaddress.ip_address(ip).packed)
        where = data.index.coords(loc) if loc >= 0 else None
        assert where == want or (want is None and where is not None and reader.get(ip)), ip
    assert data.index.nloc > 10000 and sum(data.index.ranges) > 100000
    # the C record decoder against the reader's full decode, on a sample of records
    raw = open(path, "rb").read()
    meta = reader.metadata()
    tree = walk_tree(raw, meta.node_count, meta.record_size, meta.ip_version)
    sample = rnd.sample(range(len(tree.records)), 3000)
    fields = decode_locations(raw, meta.node_count * meta.record_size // 4 + 16,
                              [tree.records[i] for i in sample])
    for i, f in zip(sample, fields, strict=True):
        off = tree.records[i]
        rec = reader.get(ipaddress.ip_address(tree.address_of(i)))
        assert record_location(rec) == (None if f is None else _location(*f)), (off, rec, f)


# ---------------------------------------------------------------------------------------
# Exact databases


def test_exact_database_locations_scopes_and_default_region(server):
    cases = [("10.1.7.0/24", OREGON, 16), ("10.2.0.0/24", FRANKFURT, 16), ("10.3.200.0/24", SINGAPORE, 16)]
    for subnet, node, scope in cases:
        resp = server.udp(query("one.farts.test", subnet=subnet))
        assert addresses(resp) == [node.addresses[0]], subnet
        e = ecs_of(resp)
        assert (e.address, e.srclen, e.scopelen) == (subnet.split("/")[0], 24, scope)
        assert resp.answer[0].ttl == 20
    # IPv6 subnet in Berlin; AAAA answers skip nodes without IPv6
    resp = server.udp(query("one.farts.test", subnet="2001:db8:1:2::/56"))
    assert addresses(resp) == ["127.0.0.2"] and ecs_of(resp).scopelen == 48
    resp = server.udp(query("edge.farts.test", "AAAA", subnet="2001:db8:1:2::/56"))
    assert addresses(resp) == ["::1"]
    # Unknown location (not in the database) and no ECS from 127.0.0.1: the default region
    for q in (query("one.farts.test", subnet="10.9.0.0/24"), query("one.farts.test")):
        assert addresses(server.udp(q)) == ["127.0.0.3"]
    # ECS source prefix 0: the resolver asks us not to use the subnet; scope 0
    resp = server.udp(query("one.farts.test", subnet="0.0.0.0/0"))
    assert ecs_of(resp).scopelen == 0 and addresses(resp) == ["127.0.0.3"]
    # Static names do not vary by subnet: scope 0
    resp = server.udp(query("static.farts.test", subnet="10.1.7.0/24"))
    assert ecs_of(resp).scopelen == 0 and addresses(resp) == ["192.0.2.7"]
    # Wildcard geo name: every name below *.ws, owner = the query name
    resp = server.udp(query("a.B.ws.farts.test", subnet="10.2.0.0/24"))
    assert addresses(resp) == ["127.0.0.2"] and resp.answer[0].name.to_text() == "a.B.ws.farts.test."
    assert server.udp(query("ws.farts.test")).rcode() == dns.rcode.NOERROR


def test_dns_lookup_command_explains(exact_db, tmp_path):
    cfg = tmp_path / "farts.toml"
    cfg.write_text(ZONE.format(db=exact_db, rrl_rate=0, rrl_burst=1) + "".join(
        f'\n[[dns.nodes]]\nid = "{m.id}"\nregion = "{m.region}"\nlat = {m.lat}\nlon = {m.lon}\n'
        f'addresses = ["{m.addresses[0]}"]\n' for m in NODES))
    out = subprocess.run([sys.executable, "-m", "farts.cli", "dns", "lookup", "edge.farts.test",
                          "--client", "10.2.3.4", "--config", str(cfg)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert "EU/FR" in out.stdout and "answer    127.0.0.2, 127.0.0.1" in out.stdout
    lines = [ln for ln in out.stdout.splitlines() if " km " in ln]
    assert lines[0].split()[:2] == ["*", "frankfurt"] and lines[2].split()[0] == "singapore"
    out = subprocess.run([sys.executable, "-m", "farts.cli", "dns", "lookup", "edge.farts.test",
                          "--client", "not-an-ip", "--config", str(cfg)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2 and "--client" in out.stderr


# ---------------------------------------------------------------------------------------
# Live changes


def test_node_marked_dead_or_draining_is_gone_from_the_next_answer(server):
    q = query("edge.farts.test", subnet="10.2.0.0/24")
    assert addresses(server.udp(q)) == ["127.0.0.2", "127.0.0.1"]
    server.call(lambda: server.members.set_state("frankfurt", DEAD))
    assert addresses(server.udp(q)) == ["127.0.0.1", "127.0.0.3"]
    assert addresses(server.tcp(q)) == ["127.0.0.1", "127.0.0.3"]
    server.call(lambda: server.members.set_state("oregon", DRAINING))
    assert addresses(server.udp(q)) == ["127.0.0.3"]
    server.call(lambda: server.members.set_state("frankfurt", "alive"))
    assert addresses(server.udp(q)) == ["127.0.0.2", "127.0.0.3"]
    # a node the mesh adds later is returned too
    server.call(lambda: server.members.update(Member("paris", "eu-west", 48.86, 2.35, ("127.0.0.4",))))
    assert addresses(server.udp(q)) == ["127.0.0.4", "127.0.0.2"]
    # nobody alive: NODATA with the SOA, not an error
    for m in ("paris", "frankfurt", "singapore"):
        server.call(lambda m=m: server.members.set_state(m, DEAD))
    resp = server.udp(q)
    assert resp.rcode() == dns.rcode.NOERROR and not resp.answer and resp.authority[0].rdtype == 6


def test_replies_from_the_c_cache_are_counted_apart_not_timed_as_zero(server):
    stats = server.server.responder.stats
    q = query("static.farts.test")
    timed = server.call(lambda: sum(sum(s[:-1]) for s in stats.latency.series.values()))
    for _ in range(5):
        assert addresses(server.udp(q)) == ["192.0.2.7"]
    assert server.call(lambda: stats.cached.totals()) == {(): 4}      # the first was a miss
    after = server.call(lambda: sum(sum(s[:-1]) for s in stats.latency.series.values()))
    assert after == timed + 1                                          # only the miss was timed


def test_a_node_over_the_load_threshold_is_given_out_after_the_nodes_with_room(server):
    # Nearest to 10.2.0.0/24 (Frankfurt): frankfurt, oregon, then singapore.
    q = query("edge.farts.test", subnet="10.2.0.0/24")
    one = query("one.farts.test", subnet="10.2.0.0/24")
    assert addresses(server.udp(q)) == ["127.0.0.2", "127.0.0.1"]
    shifted = server.server.responder.stats.shifted

    def load(node_id, value):
        server.call(lambda: server.members.update(dataclasses.replace(server.members.get(node_id), load=value)))

    load("frankfurt", 0.5)      # under the threshold (0.9): nothing changes
    assert addresses(server.udp(q)) == ["127.0.0.2", "127.0.0.1"]
    assert shifted.totals() == {}
    load("frankfurt", 0.95)     # over it: the next nearest with room first
    assert addresses(server.udp(q)) == ["127.0.0.1", "127.0.0.3"]
    assert addresses(server.tcp(q)) == ["127.0.0.1", "127.0.0.3"]
    for _ in range(3):          # (replies replayed from the UDP fast path's cache count too)
        assert addresses(server.udp(one)) == ["127.0.0.1"]
    assert server.call(lambda: shifted.totals()) == {("frankfurt",): 5}   # 1 + 1 + 3
    load("oregon", 1.0)
    load("singapore", 1.0)      # everyone over: nearest first again
    assert addresses(server.udp(q)) == ["127.0.0.2", "127.0.0.1"]
    load("frankfurt", 0.2)
    assert addresses(server.udp(q)) == ["127.0.0.2", "127.0.0.1"]


def test_new_database_file_is_followed_without_restart_or_failed_queries(tmp_path):
    path = write_mmdb(tmp_path / "geo.mmdb", EXACT)
    geo = GeoSource(path, 3600, check_every=0.05)
    srv = Running(dns_config(path), MemberMap(list(NODES)), geo)
    try:
        q = query("one.farts.test", subnet="10.1.0.0/24")
        assert addresses(srv.udp(q)) == ["127.0.0.1"]
        moved = dict(EXACT)
        moved["10.1.0.0/16"] = (1.29, 103.85, "AS", "SG")   # Portland's network moves to Singapore
        answers, errors = [], []
        stop = threading.Event()

        def client():
            while not stop.is_set() and len(answers) < 20000:
                try:
                    answers.append(addresses(srv.udp(q, timeout=2)))
                except Exception as e:  # noqa: BLE001 - every failure is counted
                    errors.append(e)
        t = threading.Thread(target=client)
        t.start()
        before = geo.version
        write_mmdb(tmp_path / "geo.mmdb", moved)
        os.utime(path, (time.time() + 5, time.time() + 5))   # a distinct mtime even within a tick
        deadline = time.monotonic() + 30
        while (geo.version == before or answers[-1:] != [["127.0.0.3"]]) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        stop.set()
        t.join(10)
        assert geo.version > before
        assert not errors
        assert answers[0] == ["127.0.0.1"] and answers[-1] == ["127.0.0.3"]
        assert set(map(tuple, answers)) <= {("127.0.0.1",), ("127.0.0.3",)}
        # a broken file keeps the last good index
        (tmp_path / "geo.mmdb").write_bytes(b"not a database")
        os.utime(path, (time.time() + 10, time.time() + 10))
        deadline = time.monotonic() + 10
        while geo.failures == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert geo.failures >= 1
        assert addresses(srv.udp(q)) == ["127.0.0.3"]
    finally:
        srv.close()


def test_answers_keep_flowing_through_a_long_rebuild(tmp_path):
    """Swapping the small database for GeoLite2 (seconds to index): queries, cached and
    uncached (a new ECS subnet each time), are answered throughout, then follow the new
    index (10.1.0.0/16 is private space there: unknown, so the default region)."""
    path = write_mmdb(tmp_path / "geo.mmdb", EXACT)
    geo = GeoSource(path, 3600, check_every=0.05)
    srv = Running(dns_config(path), MemberMap(list(NODES)), geo)
    try:
        log, errors = [], []
        stop = threading.Event()

        def client():
            i = 0
            while not stop.is_set() and i < 100000:
                q = query("one.farts.test", subnet=f"10.1.{i % 256}.0/24")
                i += 1
                sent_at, version = time.monotonic(), geo.version   # read before sending
                try:
                    got = addresses(srv.udp(q, timeout=2))
                    log.append((sent_at, version, got))
                    time.sleep(0.002)   # steady traffic, not a GIL-hogging spin
                except Exception as e:  # noqa: BLE001 - every failure is counted
                    errors.append(e)
        t = threading.Thread(target=client)
        t.start()
        before = geo.version
        shutil.copyfile(default_database(), tmp_path / "new.mmdb")
        replaced = time.monotonic()
        os.replace(tmp_path / "new.mmdb", path)
        os.utime(path, (time.time() + 5, time.time() + 5))
        deadline = time.monotonic() + 90
        while geo.version == before and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        stop.set()
        t.join(10)
        assert geo.version > before and not errors
        during = [got for ts, version, got in log if ts > replaced and version == before]
        after = [got for ts, version, got in log if version > before]
        assert during and during[0] == ["127.0.0.1"]   # answered from the old index meanwhile
        assert after and all(got == ["127.0.0.3"] for got in after)
        answers = [got[0] for _, _, got in log]
        first_new = answers.index("127.0.0.3")
        assert set(answers[:first_new]) == {"127.0.0.1"} and set(answers[first_new:]) == {"127.0.0.3"}
    finally:
        srv.close()


def test_ipv6_listener(exact_db):
    cfg = dataclasses.replace(dns_config(exact_db, rrl_rate=5, rrl_burst=5), host="::1")
    srv = Running(cfg, MemberMap(list(NODES)))
    try:
        for extra in ((), ("+tcp",)):
            text = subprocess.run(["dig", "@::1", "-p", str(srv.port), "edge.farts.test", "+subnet=10.2.0.0/24",
                                   *extra], capture_output=True, text=True, timeout=20).stdout
            assert dig_addresses(text, "edge.farts.test") == ["127.0.0.2", "127.0.0.1"], text
        # RRL keys IPv6 clients by /56: a burst from ::1 is limited
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.settimeout(1.0)
            for _ in range(40):
                s.sendto(query("static.farts.test").to_wire(), ("::1", srv.port))
            replies = []
            try:
                while True:
                    replies.append(dns.message.from_wire(s.recv(4096)))
            except TimeoutError:
                pass
        full = [r for r in replies if not r.flags & dns.flags.TC]
        assert 0 < len(full) < 40 and any(r.flags & dns.flags.TC for r in replies)
    finally:
        srv.close()


# ---------------------------------------------------------------------------------------
# RFC behaviour


def test_authoritative_answers_and_negative_answers(server):
    resp = server.udp(query("static.farts.test"))
    assert resp.flags & dns.flags.AA and resp.rcode() == dns.rcode.NOERROR
    assert not resp.flags & dns.flags.RA   # no recursion, ever
    assert addresses(resp) == ["192.0.2.7"]
    # NXDOMAIN with the SOA in authority (TTL = the SOA minimum)
    resp = server.udp(query("nothing.farts.test"))
    assert resp.rcode() == dns.rcode.NXDOMAIN and resp.flags & dns.flags.AA and not resp.answer
    assert resp.authority[0].rdtype == dns.rdatatype.SOA and resp.authority[0].ttl == 30
    assert resp.authority[0].name.to_text() == "farts.test."
    # NODATA: the name exists, not with that type; empty non-terminals exist too
    for name, rdtype in (("static.farts.test", "AAAA"), ("edge.farts.test", "TXT"), ("sub.farts.test", "A")):
        resp = server.udp(query(name, rdtype))
        assert resp.rcode() == dns.rcode.NOERROR and not resp.answer, name
        assert resp.authority[0].rdtype == dns.rdatatype.SOA and resp.flags & dns.flags.AA
    # REFUSED outside the zone, not authoritative
    for name in ("example.com", "farts.test.evil", "xfarts.test"):
        resp = server.udp(query(name))
        assert resp.rcode() == dns.rcode.REFUSED and not resp.flags & dns.flags.AA and not resp.answer
    # zone transfers are refused; CHAOS class too
    assert server.tcp(query("farts.test", "AXFR")).rcode() == dns.rcode.REFUSED
    assert server.udp(query("version.bind", "TXT", rdclass="CH")).rcode() == dns.rcode.REFUSED
    # static types, CNAME followed inside the zone
    resp = server.udp(query("www.farts.test"))
    assert [r.rdtype for r in resp.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert server.udp(query("farts.test", "MX")).answer[0][0].exchange.to_text() == "mail.farts.test."
    assert server.udp(query("farts.test", "CAA")).answer[0][0].value == b"letsencrypt.org"
    assert server.udp(query("farts.test", "NS")).answer[0][0].target.to_text() == "ns1.farts.test."
    assert server.udp(query("farts.test", "SOA")).answer[0][0].serial == 1
    assert server.udp(query("deep.sub.farts.test", "TXT")).answer[0][0].strings == (b"hello",)


def test_notimp_formerr_badvers_and_drops(server):
    q = query("static.farts.test")
    q.set_opcode(dns.opcode.NOTIFY)
    assert server.udp(q).rcode() == dns.rcode.NOTIMP
    q.set_opcode(dns.opcode.UPDATE)
    assert server.tcp(q).rcode() == dns.rcode.NOTIMP
    resp = server.udp(query("static.farts.test", use_edns=1))
    assert resp.rcode() == dns.rcode.BADVERS
    # header + garbage: FORMERR with the same id
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05abc", ("127.0.0.1", server.port))
        reply = dns.message.from_wire(s.recv(2048))
        assert reply.id == 0x1234 and reply.rcode() == dns.rcode.FORMERR
        # no header, or a response (QR=1): dropped, and the server still answers after
        s.sendto(b"\x01\x02\x03", ("127.0.0.1", server.port))
        s.sendto(query("static.farts.test").to_wire()[:2] + b"\x80" + b"\0" * 9, ("127.0.0.1", server.port))
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.recv(2048)
    assert addresses(server.udp(query("static.farts.test"))) == ["192.0.2.7"]


def test_truncation_over_udp_full_answer_over_tcp_and_edns_size(server):
    # ~1 KB of TXT: too big for 512 bytes without EDNS, fits the 1232 EDNS size
    resp = server.udp(query("big.farts.test", "TXT"))
    assert resp.flags & dns.flags.TC
    full = server.tcp(query("big.farts.test", "TXT"))
    assert not full.flags & dns.flags.TC and len(full.answer[0]) == 40
    resp = server.udp(query("big.farts.test", "TXT", use_edns=0, payload=1232))
    assert not resp.flags & dns.flags.TC and len(resp.answer[0]) == 40
    # a client advertising 600 bytes gets TC; one above our 1232 still gets at most 1232
    resp = server.udp(query("big.farts.test", "TXT", use_edns=0, payload=600))
    assert resp.flags & dns.flags.TC
    wire = dns.query.udp(query("huge.farts.test", "TXT", use_edns=0, payload=4096), "127.0.0.1",
                         port=server.port, timeout=3).to_wire()
    assert len(wire) <= 1232
    full = server.tcp(query("huge.farts.test", "TXT", use_edns=0, payload=4096))
    assert len(full.answer[0]) == 80 and not full.flags & dns.flags.TC
    # dig retries over TCP by itself on TC
    text = run_dig("dig", server.port, "+noedns", "big.farts.test", "TXT")
    assert len(re.findall(r"^big\.farts\.test\.\s+\d+\s+IN\s+TXT", text, re.M)) == 40
    assert "Truncated, retrying in TCP mode" in text


def test_case_preserved_and_minimal_any(server):
    q = query("StAtIc.FaRtS.TeSt")
    wire = dns.query.udp(q, "127.0.0.1", port=server.port, timeout=3).to_wire()
    assert b"\x06StAtIc\x05FaRtS\x04TeSt\x00" in wire   # question echoed byte for byte
    resp = dns.message.from_wire(wire)
    assert addresses(resp) == ["192.0.2.7"] and resp.answer[0].name.to_text() == "StAtIc.FaRtS.TeSt."
    text = run_dig("dig", server.port, "EDGE.farts.TEST")
    assert "EDGE.farts.TEST." in text
    # RFC 8482: ANY gets one synthesized HINFO, never the whole node
    for resp in (server.udp(query("farts.test", "ANY")), server.tcp(query("farts.test", "ANY"))):
        assert len(resp.answer) == 1 and resp.answer[0].rdtype == dns.rdatatype.HINFO
        assert resp.answer[0][0].cpu == b"RFC8482"
    assert server.udp(query("nothing.farts.test", "ANY")).rcode() == dns.rcode.NXDOMAIN


def test_tcp_several_queries_per_connection_and_split_frames(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as s:
        msgs = [query(n) for n in ("static.farts.test", "edge.farts.test", "nothing.farts.test")]
        wire = b"".join(len(w).to_bytes(2, "big") + w for w in (m.to_wire() for m in msgs))
        for i in range(0, len(wire), 7):   # arrives in pieces
            s.sendall(wire[i:i + 7])
            time.sleep(0.001)
        got = []
        buf = b""
        while len(got) < 3:
            buf += s.recv(4096)
            while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                n = int.from_bytes(buf[:2], "big")
                got.append(dns.message.from_wire(buf[2:2 + n]))
                buf = buf[2 + n:]
    assert [r.id for r in got] == [m.id for m in msgs]
    assert [r.rcode() for r in got] == [0, 0, dns.rcode.NXDOMAIN]


def test_tcp_client_that_does_not_read_gets_no_more_answers_queued(server):
    """Back-pressure: while the transport is paused, the server answers nothing more and
    stops reading; every answer still comes once the client reads."""
    n = 1000   # ~2.7 KB of TXT each: ~2.7 MB of answers, more than the socket buffers hold
    msgs = [query("huge.farts.test", "TXT", use_edns=0, payload=4096) for _ in range(n)]
    wire = b"".join(len(w).to_bytes(2, "big") + w for w in (m.to_wire() for m in msgs))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", server.port))
    try:
        s.sendall(wire)

        def state():
            conns = list(server.server.connections)
            if not conns or not conns[0].write_paused:
                return None
            return conns[0].transport.get_write_buffer_size()

        for _ in range(1000):
            queued = server.call(state)
            if queued is not None:
                break
            time.sleep(0.01)
        assert queued is not None, "the transport never paused"
        # What waits in our buffer: below the transport's high-water mark plus one batch.
        assert queued <= 64 * 1024 + 64 * 1024 + 4096
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        got, buf = 0, b""
        while got < n:
            buf += s.recv(1 << 16)
            while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                size = int.from_bytes(buf[:2], "big")
                assert dns.message.from_wire(buf[2:2 + size]).id == msgs[got].id
                buf = buf[2 + size:]
                got += 1
    finally:
        s.close()


def test_reply_cache_in_c_matches_the_asyncio_path_and_is_counted(server, exact_db):
    """The same queries through fast.dnsloop (replies cached in C) and through the plain
    asyncio endpoint give the same bytes; cached replays count in the metrics."""
    plain = Running(dns_config(exact_db), MemberMap(list(NODES)), fast_udp=False)
    try:
        assert server.server.fast is not None and plain.server.fast is None
        msgs = [query("edge.farts.test", subnet="10.2.0.0/24"), query("EDGE.farts.test"),
                query("one.farts.test", "AAAA", subnet="2001:db8:1::/48"), query("nothing.farts.test"),
                query("big.farts.test", "TXT"), query("farts.test", "ANY"), query("x.org"),
                query("static.farts.test", use_edns=0, payload=4096, want_dnssec=True)]
        for m in msgs:
            for _ in range(3):   # the second and third come from the cache
                # raw bytes: dnspython's to_wire() would shuffle the records
                a, b = raw_udp(server.port, m.to_wire()), raw_udp(plain.port, m.to_wire())
                assert a == b, m.question
        assert server.server.fast.hits >= 2 * len(msgs)
        text = server.server.metrics.render().decode()
        n = float(re.search(r'farts_dns_queries_total\{rcode="NOERROR",transport="udp",type="A"\} (\S+)', text).group(1))
        assert n >= 6
        # heartbeat-like updates (incarnation, load) keep the cache; a state change empties it
        entries = server.server.fast.entries
        assert entries > 0
        server.call(lambda: server.members.update(
            dataclasses.replace(server.members.get("frankfurt"), incarnation=7, load=0.5)))
        assert server.server.fast.entries == entries
        server.call(lambda: server.members.set_state("frankfurt", DEAD))
        assert server.server.fast.entries == 0
        assert addresses(server.udp(msgs[0])) == ["127.0.0.1", "127.0.0.3"]
    finally:
        plain.close()


# ---------------------------------------------------------------------------------------
# Abuse


def test_rrl_limits_a_flood_from_one_network_while_another_is_answered(exact_db):
    srv = Running(dns_config(exact_db, rrl_rate=5, rrl_burst=5), MemberMap(list(NODES)))
    try:
        wire = query("big.farts.test", "TXT", use_edns=0, payload=1232).to_wire()
        full = tc = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.9", 0))   # the flood comes from 127.0.0.0/24
            s.settimeout(1.0)
            started = time.monotonic()
            for _ in range(60):
                s.sendto(wire, ("127.0.0.1", srv.port))
            try:
                while True:
                    r = dns.message.from_wire(s.recv(4096))
                    if r.flags & dns.flags.TC:
                        assert not r.answer   # a slipped reply carries nothing to amplify
                        tc += 1
                    else:
                        full += 1
            except TimeoutError:
                pass
            elapsed = time.monotonic() - started
            # another /24 is answered in full meanwhile
            other = srv.udp(query("big.farts.test", "TXT", use_edns=0, payload=1232), source="127.0.1.7")
            assert not other.flags & dns.flags.TC and len(other.answer[0]) == 40
        assert full <= 5 + 5 * elapsed + 1, (full, elapsed)
        assert tc >= 10 and full + tc < 60, (full, tc)
        # TCP is never limited (it cannot be spoofed)
        assert len(srv.tcp(query("big.farts.test", "TXT")).answer[0]) == 40
        rrl = srv.server.metrics.render().decode()
        assert 'farts_dns_rrl_total{action="drop"}' in rrl and 'farts_dns_rrl_total{action="slip"}' in rrl
    finally:
        srv.close()


def _valid_queries():
    return [query("edge.farts.test", subnet="10.2.0.0/24").to_wire(),
            query("big.farts.test", "TXT", use_edns=0).to_wire(),
            query("StAtIc.farts.test", "ANY").to_wire()]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=600),
                 st.tuples(st.sampled_from(range(3)), st.integers(0, 200), st.binary(max_size=8)).map(
                     lambda t: _valid_queries()[t[0]][:t[1]] + t[2])))
def test_bad_packets_never_crash_the_responder(server, data):
    for tcp in (False, True):
        out = server.server.responder.answer(data, b"\x7f\x00\x00\x01", tcp, 0.0)
        if out is not None:
            resp = dns.message.from_wire(out)
            assert resp.flags & dns.flags.QR


def test_bad_packets_over_the_wire_then_a_good_answer(server):
    import random
    rnd = random.Random(7)
    good = _valid_queries()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(200):
            base = good[i % 3]
            data = base[:rnd.randrange(len(base))] if i % 2 else bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(40)))
            s.sendto(data, ("127.0.0.1", server.port))
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as c:
        c.sendall(b"\x00\x05\x01\x02\x03\x04\x05" + b"\x00\x03abc")   # junk frames, then a close
    assert addresses(server.udp(query("static.farts.test"))) == ["192.0.2.7"]
    assert addresses(server.tcp(query("static.farts.test"))) == ["192.0.2.7"]


# ---------------------------------------------------------------------------------------
# In a node


@WORKERS_1_AND_3
def test_node_serves_dns_with_metrics(node_factory, exact_db):
    extra = ZONE.format(db=exact_db, rrl_rate=0, rrl_burst=1) + "".join(
        f'\n[[dns.nodes]]\nid = "{m.id}"\nregion = "{m.region}"\nlat = {m.lat}\nlon = {m.lon}\n'
        f'addresses = ["{m.addresses[0]}"]\n' for m in NODES)
    node = node_factory(extra)
    m = re.search(rb"dns://127\.0\.0\.1:(\d+)/", b"".join(node.output))
    assert m, node.output
    port = m.group(1).decode()
    deadline = time.monotonic() + 20
    want = ["127.0.0.2", "127.0.0.1"]
    while time.monotonic() < deadline:   # the index builds in the background after start
        text = run_dig("dig", int(port), "edge.farts.test", "+subnet=10.2.0.0/24")
        if dig_addresses(text, "edge.farts.test") == want:
            break
        time.sleep(0.1)
    assert dig_addresses(text, "edge.farts.test") == want, text
    import httpx
    metrics = httpx.get(node.url("admin", "/metrics")).text
    assert 'farts_dns_queries_total{rcode="NOERROR",transport="udp",type="A"}' in metrics
    assert 'farts_dns_answers_total{node="frankfurt",region="eu-central"}' in metrics
    assert "farts_dns_index_ranges" in metrics and "farts_dns_query_seconds_bucket" in metrics


def test_config_errors_name_the_key(exact_db):
    bad = ZONE.format(db=exact_db, rrl_rate=0, rrl_burst=1) + '\n[[dns.records]]\nname = "x"\ntype = "A"\nvalue = "nope"\n'
    with pytest.raises(config.ConfigError, match=r"bad.toml: dns.records\[5\].value"):
        config.parse(bad, "bad.toml")   # (the zone is built by config validation too)
    cfg = config.parse(ZONE.format(db=exact_db, rrl_rate=0, rrl_burst=1), "good.toml")
    with pytest.raises(config.ConfigError, match=r"dns.records\[0\].type"):
        config.parse('[[dns.records]]\nname = "x"\ntype = "SRV"\nvalue = "1"\n', "t.toml")
    out_of_zone = dataclasses.replace(cfg.dns, records=[DNSRecord("a.example.com.", "A", "192.0.2.1")])
    with pytest.raises(config.ConfigError, match="outside the zone"):
        DNSServer(out_of_zone, MemberMap(), source="t.toml")
