"""fast.hpack against the hpack library: what an HTTP/2 server does per request.

(a) decode h2load's request header block (5 fields; after the first request all of
    them indexed, as on a busy connection) on one context;
(b) encode a fixed answer's response head (:status, content-type, content-length) on
    one context (after the first, three indexes).
Both on a connection's long-lived contexts, so the dynamic tables carry over.

    .venv/bin/python bench/hpack_codec.py [--seconds 3]
"""

import argparse
import os
import sys

import hpack

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from microbench import best_rates  # noqa: E402  (bench/ is the script's own folder)

import fast.hpack  # noqa: E402

REQUEST = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https"),
           (b":authority", b"127.0.0.1:8443"), (b"user-agent", b"h2load nghttp2/1.52.0")]
RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"1024")]
BATCH = 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3)
    a = p.parse_args()
    enc = hpack.Encoder()
    first, block = enc.encode(REQUEST), enc.encode(REQUEST)
    contenders = {}
    for label, decoder_class in (("hpack", hpack.Decoder), ("fast.hpack", fast.hpack.Decoder)):
        d = decoder_class()
        d.decode(first, raw=True)
        assert [tuple(h) for h in d.decode(block, raw=True)] == REQUEST
        contenders[f"decode request, {label}"] = (
            lambda d=d: [d.decode(block, raw=True) for _ in range(BATCH)], BATCH)
    for label, encoder_class in (("hpack", hpack.Encoder), ("fast.hpack", fast.hpack.Encoder)):
        e = encoder_class()
        e.encode(RESPONSE)
        contenders[f"encode response, {label}"] = (
            lambda e=e: [e.encode(RESPONSE) for _ in range(BATCH)], BATCH)
    rates = best_rates(contenders, a.seconds)
    for label, rate in rates.items():
        print(f"{label:32} {rate / 1e6:7.3f} M/s  {1e6 / rate:6.2f} us each")


if __name__ == "__main__":
    main()
