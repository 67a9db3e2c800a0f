"""fast.geo: the flattened MaxMind index, differential against the maxminddb reader
(databases written by mmdb-writer from hypothesis-drawn networks), plus malformed trees.
The GeoLite2 differential is in test_dns_server.py, which builds that index once."""
from __future__ import annotations

import ipaddress
import random

import maxminddb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmdb_writer import MmdbF64, MMDBWriter
from netaddr import IPSet

from farts.dns.geoindex import build
from fast.geo import GeoIndex, walk_tree

FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])


def write(path, networks, ip_version=6):
    w = MMDBWriter(ip_version=ip_version, ipv4_compatible=ip_version == 6, database_type="GeoIP2-City")
    for i, net in enumerate(networks):
        w.insert_network(IPSet([net]), {"location": {"latitude": MmdbF64(i % 90), "longitude": MmdbF64(i)},
                                        "continent": {"code": "EU"}})
    w.to_db_file(str(path))
    return str(path)


def expected(reader, ip):
    rec = reader.get(ip)
    if not rec or "location" not in rec:
        return None
    return rec["location"]["latitude"], rec["location"]["longitude"]


def got(data, ip):
    loc, scope = data.index.lookup(ipaddress.ip_address(ip).packed)
    return (data.index.coords(loc) if loc >= 0 else None), scope


def check_scope(reader, ip, scope, where):
    """Every address of the claimed scope block has the same location as ``ip``."""
    block = ipaddress.ip_network(f"{ip}/{scope}", strict=False)
    for edge in (block[0], block[-1], block[block.num_addresses // 2]):
        assert expected(reader, str(edge)) == where, (ip, scope, edge)


V4NET = st.tuples(st.integers(0, 2**32 - 1), st.integers(8, 32)).map(
    lambda t: str(ipaddress.ip_network((t[0] >> (32 - t[1]) << (32 - t[1]), t[1]))))
V6NET = st.tuples(st.integers(0, 2**128 - 1), st.integers(16, 128)).map(
    lambda t: str(ipaddress.ip_network((t[0] >> (128 - t[1]) << (128 - t[1]), t[1]))))


@FEW
@given(st.lists(V4NET, min_size=1, max_size=12), st.lists(V6NET, max_size=6), st.randoms(use_true_random=False))
def test_index_agrees_with_maxminddb(tmp_path, v4, v6, rnd):
    path = write(tmp_path / "t.mmdb", v4 + v6)
    data = build(path)
    reader = maxminddb.open_database(path)
    probes = []
    for net in map(ipaddress.ip_network, v4 + v6):   # inside, at the edges, just outside
        probes += [net[0], net[-1], net[0] - 1 if int(net[0]) else net[0],
                   net[-1] + 1 if int(net[-1]) < (2**net.max_prefixlen - 1) else net[-1]]
    probes += [ipaddress.IPv4Address(rnd.getrandbits(32)) for _ in range(20)]
    probes += [ipaddress.IPv6Address(rnd.getrandbits(128)) for _ in range(20)]
    for ip in probes:
        want = expected(reader, str(ip))
        where, scope = got(data, str(ip))
        assert where == want, (ip, v4, v6)
        check_scope(reader, str(ip), scope, want)
    # IPv4-mapped and 6to4 addresses are their IPv4 address
    for ip in probes[:8]:
        if ip.version == 4:
            assert got(data, f"::ffff:{ip}")[0] == expected(reader, str(ip))
            sixtofour = ipaddress.IPv6Address((0x2002 << 112) | (int(ip) << 80))
            assert got(data, str(sixtofour))[0] == expected(reader, str(ip))


def test_record_fields_decoded_like_maxminddb(tmp_path):
    """decode_locations against the reader: f32 and f64 coordinates, nested names in
    several languages, registered_country as the fallback, records without location."""
    w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoIP2-City", float_type="f32")
    recs = {
        "10.0.0.0/8": {"location": {"latitude": 12.5, "longitude": -3.25, "accuracy_radius": 50},
                       "continent": {"code": "AF", "names": {"en": "Africa", "de": "Afrika"}},
                       "country": {"iso_code": "ML"}, "city": {"names": {"de": "Bamako-Stadt", "en": "Bamako"}}},
        "11.0.0.0/8": {"registered_country": {"iso_code": "SE"}, "continent": {"code": "EU"}},
        "12.0.0.0/8": {"traits": {"is_anycast": True}, "location": {"time_zone": "UTC"}},
        "13.0.0.0/8": {"location": {"latitude": MmdbF64(-33.8688), "longitude": MmdbF64(151.2093)},
                       "subdivisions": [{"iso_code": "NSW"}], "postal": {"code": "2000"}},
    }
    for net, rec in recs.items():
        w.insert_network(IPSet([net]), rec)
    w.to_db_file(str(tmp_path / "f.mmdb"))
    from farts.dns.geoindex import record_location
    data = build(str(tmp_path / "f.mmdb"))
    reader = maxminddb.open_database(str(tmp_path / "f.mmdb"))
    for net in recs:
        ip = net.split("/")[0]
        want = record_location(reader.get(ip))
        loc, _ = data.index.lookup(ipaddress.ip_address(ip).packed)
        got_loc = data.index.locations[loc] if loc >= 0 else None
        assert got_loc == want, (net, got_loc, want)
    assert data.index.locations[data.index.lookup(bytes([10, 1, 2, 3]))[0]][2] == "AF/ML/Bamako"


def test_ipv4_only_database(tmp_path):
    path = write(tmp_path / "v4.mmdb", ["10.0.0.0/8", "10.1.0.0/16", "192.0.2.0/24"], ip_version=4)
    data = build(path)
    reader = maxminddb.open_database(path)
    for ip in ("10.0.0.1", "10.1.2.3", "10.2.0.0", "192.0.2.255", "192.0.3.0", "0.0.0.0", "255.255.255.255"):
        assert got(data, ip)[0] == expected(reader, ip)
    assert got(data, "10.1.2.3")[1] == 16 and got(data, "10.2.0.0")[1] == 15
    assert got(data, "2001:db8::1") == (None, 0) or got(data, "2001:db8::1")[0] is None


def test_malformed_trees_are_errors_not_crashes(tmp_path):
    good = open(write(tmp_path / "g.mmdb", ["10.0.0.0/8"]), "rb").read()
    meta = maxminddb.open_database(str(tmp_path / "g.mmdb")).metadata()
    with pytest.raises(ValueError):
        walk_tree(good[:10], meta.node_count, meta.record_size, meta.ip_version)
    with pytest.raises(ValueError):
        walk_tree(good, meta.node_count, 20, 6)
    # every node pointing to node 0: a loop, caught by the depth limit
    loop = b"\x00" * (meta.node_count * meta.record_size // 4)
    with pytest.raises(ValueError):
        walk_tree(loop, meta.node_count, meta.record_size, meta.ip_version)
    tree = walk_tree(good, meta.node_count, meta.record_size, meta.ip_version)
    with pytest.raises(ValueError):
        GeoIndex(tree, [], [5] * len(tree.records))
    assert tree.records
    with pytest.raises(ValueError):   # one location number per record
        GeoIndex(tree, [], [])
    rnd = random.Random(3)
    for _ in range(200):   # random bytes as a tree: a result or ValueError, nothing else
        blob = bytes(rnd.getrandbits(8) for _ in range(600))
        try:
            walk_tree(blob, 100, rnd.choice([24, 28, 32]), rnd.choice([4, 6]))
        except ValueError:
            pass
