"""An upstream's 1xx interim answers passed on to the client.

RFC 9110 §15.2: a proxy forwards 1xx answers, except one it asked for itself. 100
Continue is never passed on: the proxy's own transport answers the client's Expect, and
the upstream request carries none (fast.proxyhead drops it); 101 answers only an
Upgrade (handler.py's tunnel). The one in use is 103 Early Hints (RFC 8297): an app
server, or with worker processes the node process's CDN behind the worker's proxy, sends
it before its answer so that the browser starts loading what the Link fields name.

The client's transport writes it when it may (``Request.send_interim``): not to an
HTTP/1.0 client, which must not get one, and not once the answer has started.
"""
from __future__ import annotations

import logging

from farts.transport.http import Request

from .headers import RESPONSE_DROP, connection_tokens

log = logging.getLogger("farts.proxy")


def relay(req: Request, status: int, headers: list) -> None:
    """The upstream's interim answer ``status`` (1xx) to the client of ``req``, its
    connection's fields (hop-by-hop, and those Connection names) dropped."""
    if status == 100:
        return
    send = getattr(req, "send_interim", None)
    if send is None:
        return
    named = connection_tokens(headers)
    kept = [h for h in headers if h[0] not in RESPONSE_DROP and (named is None or h[0] not in named)]
    try:
        send(status, kept)
    except ValueError as e:   # a field HTTP/2 forbids: the hint is dropped, the answer goes on
        log.warning("upstream %d interim answer not passed on: %s", status, e)
