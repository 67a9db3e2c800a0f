"""Queries/s of fast.dns against dnspython: decode a query, build and encode the answer.

The query is what a public resolver sends to an authoritative geo DNS server: one A
question, EDNS0 (1232 bytes, DO clear) with a Client Subnet option (/24) and a cookie.
The answer: 2 A records and an OPT record echoing the subnet with a /24 scope.  Both
contenders start from bytes and end with bytes, and both get their records precomputed
(a compiled fast.dns.Record, a dnspython RRset), as a server keeps them.

    .venv/bin/python bench/dns_codec.py [--seconds 3]
"""

import argparse
import os
import sys

import dns.edns
import dns.flags
import dns.message
import dns.rrset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from microbench import best_rates  # noqa: E402  (bench/ is the script's own folder)

from fast.dns import A, Record, encode_response, parse_query  # noqa: E402

QNAME = "Edge.Farts.test"
ADDRESSES = ("192.0.2.10", "198.51.100.20")
QUERY = dns.message.make_query(
    QNAME, "A", use_edns=0, payload=1232,
    options=[dns.edns.ECSOption("203.0.113.77", 24), dns.edns.GenericOption(10, b"\x01" * 8)],
).to_wire()


def _buffers(count=200):
    """Distinct bytes objects, as a socket hands them over."""
    return [bytes(bytearray(QUERY)) for _ in range(count)]


RECORDS = [Record(QNAME.lower(), A, 60, a) for a in ADDRESSES]
TUPLES = [(QNAME.lower().encode(), A, 60, bytes(map(int, a.split(".")))) for a in ADDRESSES]
RRSET = dns.rrset.from_text(QNAME.lower() + ".", 60, "IN", "A", *ADDRESSES)


def fast_answer(records):
    buffers = _buffers()

    def batch():
        for data in buffers:
            q = parse_query(data)
            encode_response(q, 0, True, records, None, None, 0, 24)

    return batch, len(buffers)


def fast_parse():
    buffers = _buffers()

    def batch():
        for data in buffers:
            parse_query(data)

    return batch, len(buffers)


def fast_encode():
    q = parse_query(QUERY)

    def batch():
        for _ in range(200):
            encode_response(q, 0, True, RECORDS, None, None, 0, 24)

    return batch, 200


def dnspython_answer():
    buffers = _buffers()

    def batch():
        for data in buffers:
            q = dns.message.from_wire(data)
            r = dns.message.make_response(q, our_payload=1232)
            r.flags |= dns.flags.AA
            r.answer.append(RRSET)
            for opt in q.options:
                if isinstance(opt, dns.edns.ECSOption):
                    r.use_edns(0, 0, 1232, options=[
                        dns.edns.ECSOption(opt.address, opt.srclen, 24)])
            r.to_wire()

    return batch, len(buffers)


def dnspython_parse():
    buffers = _buffers()

    def batch():
        for data in buffers:
            dns.message.from_wire(data)

    return batch, len(buffers)


def check():
    """Both contenders give the same answer (dnspython shuffles RRsets: compare parsed)."""
    ours = encode_response(parse_query(QUERY), 0, True, RECORDS, None, None, 0, 24)
    assert ours == encode_response(parse_query(QUERY), 0, True, TUPLES, None, None, 0, 24)
    q = dns.message.from_wire(QUERY)
    r = dns.message.make_response(q, our_payload=1232)
    r.flags |= dns.flags.AA
    r.answer.append(RRSET)
    r.use_edns(0, 0, 1232, options=[dns.edns.ECSOption("203.0.113.0", 24, 24)])
    theirs = r.to_wire(want_shuffle=False)
    assert ours == theirs, (ours, theirs)
    return len(QUERY), len(ours)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="time per contender")
    args = ap.parse_args()
    qlen, rlen = check()
    print(f"query {qlen} bytes (A, EDNS, ECS /24, cookie); answer {rlen} bytes (2 A + OPT/ECS)")

    contenders = {
        "dnspython  parse + answer": dnspython_answer(),
        "dnspython  parse only": dnspython_parse(),
        "fast  parse + answer (Record)": fast_answer(RECORDS),
        "fast  parse + answer (tuples)": fast_answer(TUPLES),
        "fast  parse only": fast_parse(),
        "fast  answer only (Record)": fast_encode(),
    }
    best = best_rates(contenders, args.seconds)
    reference = {
        "fast  parse + answer (Record)": "dnspython  parse + answer",
        "fast  parse + answer (tuples)": "dnspython  parse + answer",
        "fast  parse only": "dnspython  parse only",
    }
    for label, rate in best.items():
        line = f"{label:32} {rate:12,.0f} queries/s  {1e6 / rate:7.2f} us"
        if label in reference:
            line += f"   {rate / best[reference[label]]:6.1f}x dnspython"
        print(line)


if __name__ == "__main__":
    main()
