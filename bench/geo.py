"""IP → location lookups/s: fast.geo's range index against the maxminddb reader (its C
extension, libmaxminddb) on the bundled GeoLite2 City database, same random addresses.

    .venv/bin/python bench/geo.py [--seconds 3]
"""

import argparse
import ipaddress
import os
import random
import sys

import maxminddb

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from microbench import best_rates  # noqa: E402  (bench/ is the script's own folder)

# bench/http.py would shadow the standard library's http (prometheus-client imports it).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from farts.dns.geoindex import build, default_database  # noqa: E402

N = 2000


def addresses(seed=1):
    rnd = random.Random(seed)
    v4 = [ipaddress.IPv4Address(rnd.getrandbits(32)) for _ in range(N)]
    v6 = [ipaddress.IPv6Address((rnd.choice([0x2001, 0x2400, 0x2600, 0x2a00]) << 112) | rnd.getrandbits(112))
          for _ in range(N // 4)]
    return v4 + v6


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="time per contender")
    args = ap.parse_args()
    path = default_database()
    data = build(path)
    print(f"index: built in {data.build_seconds:.1f} s, {data.records} records, "
          f"{data.index.ranges[0]:,} IPv4 + {data.index.ranges[1]:,} IPv6 ranges, "
          f"{data.index.nloc:,} locations, {data.index.nbytes / 2**20:.1f} MiB of tables")
    ips = addresses()
    packed = [ip.packed for ip in ips]
    text = [str(ip) for ip in ips]
    reader = maxminddb.open_database(path)
    index = data.index
    rounds = 50

    def c_loop():
        index.lookup_many(packed, rounds)

    def c_loop_no_scope():
        index.lookup_many(packed, rounds, False)

    def py_calls():
        for p in packed:
            index.lookup(p)

    def mmdb():
        for t in text:
            reader.get(t)

    best = best_rates({
        "fast.geo  in C, location + ECS scope": (c_loop, len(packed) * rounds),
        "fast.geo  in C, location only": (c_loop_no_scope, len(packed) * rounds),
        "fast.geo  lookup() from Python": (py_calls, len(packed)),
        "maxminddb reader.get() (C extension)": (mmdb, len(packed)),
    }, args.seconds)
    ref = best["maxminddb reader.get() (C extension)"]
    for label, rate in best.items():
        print(f"{label:40} {rate:14,.0f} lookups/s  {rate / ref:6.1f}x maxminddb")


if __name__ == "__main__":
    main()
