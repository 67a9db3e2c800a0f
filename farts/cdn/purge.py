"""``POST /api/cache/purge`` on the admin listener: removes cached objects at once.

Body (JSON): ``{"tenant": "demo"}`` (everything of a tenant), ``{"tenant": "demo",
"prefix": "/media/img/"}`` (paths starting with it), or ``{"tenant": "demo", "key":
"/media/a.jpg?v=2"}`` (one path and query, every host, scheme and variant).
Answers ``{"purged": N}``; a bad body gets 400 with what is wrong.
"""
from __future__ import annotations

import json

from farts.transport.http import Fixed, Request, Response

from .key import tenant_prefix
from .service import CDN

MAX_BODY = 64 * 1024


def _bad(reason: str) -> Response:
    return Response(400, [(b"content-type", b"application/json")],
                    json.dumps({"error": reason}).encode() + b"\n")


def apply(cdn: CDN, spec: dict) -> int:
    """Runs a checked purge request (``{"tenant", "prefix"?, "key"?}``); returns how many
    objects went. Also what a purge from another node (through the mesh) runs."""
    tenant, prefix, key = spec["tenant"], spec.get("prefix"), spec.get("key")
    if key is not None:
        return cdn.purge(tenant_prefix(tenant, key), exact=True)
    return cdn.purge(tenant_prefix(tenant, prefix or ""), exact=False)


class PurgeHandler:
    def __init__(self, cdn: CDN, on_purge=None) -> None:
        self.cdn = cdn
        # Called with each accepted purge request (node.py broadcasts it to the mesh).
        self.on_purge = on_purge
        self.not_found = Fixed.error(404)
        self.not_allowed = Fixed(405, b"405 Method Not Allowed: POST a purge request\n",
                                 headers=[(b"allow", b"POST")])

    def handle(self, request: Request):
        if request.path != b"/api/cache/purge":
            return self.not_found
        if request.method != b"POST":
            return self.not_allowed
        return self._purge(request)

    async def _purge(self, request: Request) -> Response:
        raw = await request.body.read() if request.body is not None else b""
        try:
            spec = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError):
            return _bad("the body is not JSON")
        if not isinstance(spec, dict) or set(spec) - {"tenant", "prefix", "key"}:
            return _bad('expected an object with "tenant" and at most one of "prefix", "key"')
        tenant, prefix, key = spec.get("tenant"), spec.get("prefix"), spec.get("key")
        if not isinstance(tenant, str) or not tenant or "\0" in tenant:
            return _bad('"tenant" (a tenant id) is required')
        if prefix is not None and key is not None:
            return _bad('give "prefix" or "key", not both')
        for name, value in (("prefix", prefix), ("key", key)):
            if value is not None and (not isinstance(value, str) or not value.startswith("/")
                                      or "\0" in value):
                return _bad(f'"{name}" must be a path starting with "/"')
        n = apply(self.cdn, spec)
        if self.on_purge is not None:
            self.on_purge(spec)
        return Response(200, [(b"content-type", b"application/json")],
                        json.dumps({"purged": n}).encode() + b"\n")


