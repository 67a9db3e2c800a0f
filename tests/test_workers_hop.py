"""A request a worker forwards to the node process reaches the node's handlers as the
worker got it (farts/workers/hop.py): the upstream request written by the worker's reverse
proxy (fast.proxyhead.upstream_request, what the proxy sends) is parsed as the node
process's forwarded listener parses it, and the hop taken off gives back the client's
address, scheme and fields. Sans socket; the node-to-node path is tests/test_workers_cdn.py."""
from __future__ import annotations

import pytest

from farts.config import Route
from farts.transport.http import Fixed
from farts.transport.router import Router
from farts.workers.hop import ForwardedRouter, take_hop
from fast.http1 import HandlerRequest, RequestParser
from fast.proxyhead import RequestIds, upstream_request


def parsed(data: bytes, client: str, scheme: str) -> HandlerRequest:
    return HandlerRequest(RequestParser().feed(data)[0], None, None, client, scheme, None, 0.0)


def through_the_worker(fields: bytes, client: str, scheme: str) -> HandlerRequest:
    """The client's request as the node process's handler gets it: the worker's proxy
    writes it to the forwarded listener (on loopback), which takes the hop off."""
    got = parsed(b"GET /media/a HTTP/1.1\r\nHost: localhost\r\n" + fields + b"\r\n", client, scheme)
    data, _ = upstream_request(got.method, got.target, got.headers, got.client, got.scheme,
                               RequestIds(b"w-"), None, b"localhost", -2)
    req = parsed(data, "127.0.0.1", "http")
    take_hop(req)
    return req


def field(req: HandlerRequest, name: bytes) -> list[bytes]:
    return [v for n, v in req.headers if n == name]


@pytest.mark.parametrize("client, scheme, fields, xff", [
    ("10.0.0.7", "http", b"", []),
    ("2001:db8::5", "https", b"X-Forwarded-For: 192.0.2.1\r\n", [b"192.0.2.1"]),
    # Two fields are one list (RFC 9110 §5.3): joined by the proxy, kept as one.
    ("10.0.0.7", "https", b"X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-For: 192.0.2.2\r\n",
     [b"192.0.2.1, 192.0.2.2"]),
])
def test_the_node_process_sees_the_client_not_the_worker(client, scheme, fields, xff):
    req = through_the_worker(fields + b"X-Test: 1\r\n", client, scheme)
    assert (req.client, req.scheme) == (client, scheme)
    assert field(req, b"x-forwarded-for") == xff and field(req, b"x-forwarded-proto") == []
    assert field(req, b"x-test") == [b"1"]


def test_a_clients_own_forwarded_proto_is_not_believed():
    # (the worker's proxy writes its own from the connection's scheme, never the client's)
    req = through_the_worker(b"X-Forwarded-Proto: https\r\n", "10.0.0.7", "http")
    assert req.scheme == "http" and field(req, b"x-forwarded-proto") == []


def test_a_request_not_from_a_worker_is_left_as_it_is():
    for fields in (b"", b"X-Forwarded-For: 192.0.2.1\r\n", b"X-Forwarded-Proto: https\r\n",
                   b"X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: gopher\r\n"):
        req = parsed(b"GET / HTTP/1.1\r\nHost: localhost\r\n" + fields + b"\r\n", "127.0.0.1", "http")
        before = list(req.headers)
        take_hop(req)
        assert (req.client, req.scheme, req.headers) == ("127.0.0.1", "http", before)


class Seen:
    def __init__(self) -> None:
        self.requests: list = []

    def handle(self, req):
        self.requests.append((req.client, req.scheme))
        return Fixed(200, b"ok", b"text/plain")


def test_the_forwarded_router_puts_each_handler_behind_the_hop_once():
    seen, fixed = Seen(), Fixed(200, b"static", b"text/plain")
    public = Router(None, [(Route(prefix="/media/", kind="admin"), seen), (Route(prefix="/s", kind="admin"), fixed)], 0)
    router = ForwardedRouter(public)
    first = router.resolve(b"localhost", b"/media/a")
    assert router.resolve(b"localhost", b"/media/b") is first and first[2] is not seen
    assert router.resolve(b"localhost", b"/s")[2] is fixed            # written by the transport: no handler
    assert router.resolve(b"localhost", b"/nothing") is public.not_found
    assert router.max_body == public.max_body
    first[2].handle(parsed(b"GET /media/a HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 192.0.2.9\r\n"
                           b"X-Forwarded-Proto: https\r\n\r\n", "127.0.0.1", "http"))
    assert seen.requests == [("192.0.2.9", "https")]

