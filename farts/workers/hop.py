"""The requests the workers forward to the node process, seen as the worker got them.

A worker forwards the routes the node process serves (the CDN, the admin API on public
hosts, ACME challenges...) with its reverse proxy, which tells its upstream who the
client is the usual way (fast.proxyhead): the client's address appended to
X-Forwarded-For, X-Forwarded-Proto set to the client's scheme, both written by the
proxy, never taken from the client. The node process's "forwarded" listener (loopback
only) takes these two off again, so its handlers see the client's address and scheme
and the fields as the client sent them, as without workers: the CDN keys its cache by
the scheme (an HTTPS client's answer is not an HTTP client's: an origin may redirect
one to the other) and tells its origin the client's address, once.
"""
from __future__ import annotations

from farts.transport.http import Fixed, Request
from farts.transport.router import Router

XFF = b"x-forwarded-for"
XFP = b"x-forwarded-proto"
SCHEMES = {b"http": "http", b"https": "https"}


def take_hop(req: Request) -> None:
    """The client's address and scheme back from the fields the worker's proxy added,
    and those fields off the request (its header list, changed in place). A request
    without them (none from a worker) is left as it is."""
    headers = req.headers
    xff = xfp = -1
    for i, (name, _) in enumerate(headers):
        if name == XFF:
            xff = i
        elif name == XFP:
            xfp = i
    if xff < 0 or xfp < 0 or headers[xfp][1] not in SCHEMES:
        return
    before, _, client = headers[xff][1].rpartition(b",")
    req.scheme = SCHEMES[headers[xfp][1]]
    req.client = client.strip().decode("latin-1")
    taken = [xfp]
    if before:   # the client's own X-Forwarded-For, as it sent it
        headers[xff] = (XFF, before.rstrip())
    else:
        taken.append(xff)
    for i in sorted(taken, reverse=True):
        del headers[i]


class FromWorker:
    """A route's handler behind the forwarded listener: the hop taken off first."""

    __slots__ = ("handler",)

    def __init__(self, handler) -> None:
        self.handler = handler

    def handle(self, req: Request):
        take_hop(req)
        return self.handler.handle(req)


class ForwardedRouter:
    """The node's public router for the forwarded listener: the same routes, each
    handler behind a FromWorker (made once per handler)."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.max_body = router.max_body
        self.fixed_answers = router.fixed_answers
        self.resolved: dict[int, tuple] = {}   # id(the router's resolution) -> ours (they live as long)

    def resolve(self, host: bytes, path: bytes, plain: bool = False):
        resolved = self.router.resolve(host, path, plain)
        if type(resolved) is not tuple or type(resolved[2]) is Fixed:
            return resolved
        ours = self.resolved.get(id(resolved))
        if ours is None:
            tenant, route, handler, limit = resolved
            ours = self.resolved[id(resolved)] = (tenant, route, FromWorker(handler), limit)
        return ours
