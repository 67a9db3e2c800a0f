"""fast.proxyhead against its pure-Python reference (farts/proxy/headers.py): the
reverse proxy's header rewriting, per request.

(a) request: a browser-like GET's 10 fields → the upstream's (Host first, hop-by-hop and
    Connection-listed fields dropped, X-Forwarded-For/-Proto, a new X-Request-Id), then
    framed by fast.http1.request_head as the proxy sends it;
(b) response: an nginx-like answer's 8 fields → the client's (Connection and framing
    dropped, X-Request-Id echoed).

    .venv/bin/python bench/proxy_headers.py [--seconds 3]
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# This folder last (bench/http.py would shadow the stdlib's http package, which farts
# imports), after the tree's root (PYTHONPATH, when set, picks the tree).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE] + [os.path.dirname(HERE), HERE]

from microbench import best_rates  # noqa: E402

from farts.proxy import headers as reference  # noqa: E402
from fast import proxyhead  # noqa: E402
from fast.http1 import request_head  # noqa: E402

REQUEST = [(b"host", b"www.example.com"), (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"),
           (b"accept", b"text/html,application/xhtml+xml"), (b"accept-language", b"en-US,en;q=0.5"),
           (b"accept-encoding", b"gzip, deflate, br"), (b"connection", b"keep-alive"),
           (b"cookie", b"session=abc123; theme=dark"), (b"upgrade-insecure-requests", b"1"),
           (b"x-forwarded-for", b"203.0.113.9"), (b"cache-control", b"max-age=0")]
RESPONSE = [(b"server", b"nginx/1.26.3"), (b"date", b"Sat, 05 Dec 2026 20:00:00 GMT"),
            (b"content-type", b"text/plain"), (b"content-length", b"1024"),
            (b"last-modified", b"Sat, 05 Dec 2026 19:00:00 GMT"), (b"connection", b"keep-alive"),
            (b"etag", b'"6931f0d0-400"'), (b"accept-ranges", b"bytes")]
BATCH = 1000


def rid() -> bytes:
    return b"node-1-abcdef-12345"


def request_batch(impl):
    rewrite = impl.request_headers

    def run():
        for _ in range(BATCH):
            out, _ = rewrite(REQUEST, "198.51.100.4", "http", rid, None, b"10.0.0.1:8080")
            request_head(b"GET", b"/index.html", out, -2)
    return run


def response_batch(impl):
    rewrite = impl.response_headers

    def run():
        for _ in range(BATCH):
            rewrite(RESPONSE, b"node-1-abcdef-12345")
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="per contender (default 3)")
    args = ap.parse_args()
    for name, make in (("request (rewrite + request_head)", request_batch),
                       ("response (rewrite)", response_batch)):
        rates = best_rates({"python": (make(reference), BATCH), "fast": (make(proxyhead), BATCH)},
                           args.seconds)
        us = {k: 1e6 / v for k, v in rates.items()}
        print(f"{name:34} python {us['python']:6.2f} us   fast {us['fast']:6.2f} us   "
              f"x{us['python'] / us['fast']:.1f}")


if __name__ == "__main__":
    main()
