"""Requests/s of fast.http1.RequestParser against httptools on a typical browser GET.

Both contenders deliver the same information to Python: the request-target and the list
of (name, value) header pairs.  httptools does it through per-header callbacks, which is
how a server built on it has to collect them.

    .venv/bin/python bench/parse_http1.py [--seconds 3]
"""

import argparse
import os
import sys

import httptools

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from microbench import best_rates  # noqa: E402  (bench/ is the script's own folder)

from fast.http1 import END, Request, RequestParser  # noqa: E402

REQUEST = (
    b"GET /articles/2024/edge-caching-explained?utm_source=newsletter&page=2 HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Referer: https://www.example.com/articles/\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=9f8e7d6c5b4a39281706; theme=dark; consent=yes\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"Sec-Fetch-Dest: document\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"Sec-Fetch-Site: same-origin\r\n"
    b"\r\n"
)
PIPELINE = 16


class _Collector:
    """httptools protocol object gathering what RequestParser returns in a Request."""

    __slots__ = ("url", "headers", "done")

    def __init__(self):
        self.url = b""
        self.headers = []
        self.done = 0

    def on_message_begin(self):
        self.headers = []

    def on_url(self, url):
        self.url = url

    def on_header(self, name, value):
        self.headers.append((name, value))

    def on_message_complete(self):
        self.done += 1




def _buffers(pipeline, count):
    """``count`` distinct bytes objects holding ``pipeline`` requests each, as a socket would
    hand them over (a fresh buffer per read, never the same object twice in a row)."""
    return [bytes(bytearray(REQUEST * pipeline)) for _ in range(count)]


def fast_single():
    buffers = _buffers(1, 200)

    def batch():
        # A new parser per request includes the per-connection setup: the worst case.
        for data in buffers:
            events = RequestParser().feed(data)
            assert type(events[0]) is Request and events[1] is END

    return batch, len(buffers)


def fast_keepalive():
    parser = RequestParser()
    buffers = _buffers(1, 200)

    def batch():
        for data in buffers:
            events = parser.feed(data)
            assert events[1] is END

    return batch, len(buffers)


def fast_pipelined():
    parser = RequestParser()
    buffers = _buffers(PIPELINE, 20)

    def batch():
        for data in buffers:
            events = parser.feed(data)
            assert len(events) == 2 * PIPELINE

    return batch, len(buffers) * PIPELINE


def httptools_feed(pipeline):
    proto = _Collector()
    parser = httptools.HttpRequestParser(proto)
    buffers = _buffers(pipeline, max(1, 200 // pipeline))

    def batch():
        for data in buffers:
            parser.feed_data(data)
        assert proto.headers

    return batch, len(buffers) * pipeline


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="time per contender")
    args = ap.parse_args()

    events = RequestParser().feed(REQUEST)
    collector = _Collector()
    httptools.HttpRequestParser(collector).feed_data(REQUEST)
    assert events[0].target == collector.url
    assert [n for n, _ in events[0].headers] == [n.lower() for n, _ in collector.headers]
    print(f"request: {len(REQUEST)} bytes, {len(events[0].headers)} header fields")

    contenders = {
        "httptools  1 request/feed": httptools_feed(1),
        f"httptools  {PIPELINE} pipelined/feed": httptools_feed(PIPELINE),
        "fast  new parser per request": fast_single(),
        "fast  keep-alive, 1 request/feed": fast_keepalive(),
        f"fast  {PIPELINE} pipelined/feed": fast_pipelined(),
    }
    best = best_rates(contenders, args.seconds)
    reference = {
        "fast  new parser per request": "httptools  1 request/feed",
        "fast  keep-alive, 1 request/feed": "httptools  1 request/feed",
        f"fast  {PIPELINE} pipelined/feed": f"httptools  {PIPELINE} pipelined/feed",
    }
    for label, rate in best.items():
        line = f"{label:34} {rate:12,.0f} req/s"
        if label in reference:
            line += f"   {rate / best[reference[label]]:5.2f}x httptools"
        print(line)


if __name__ == "__main__":
    main()
