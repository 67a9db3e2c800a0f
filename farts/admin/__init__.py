"""The admin service: /metrics (Prometheus text), /healthz, the status page and its data.

Routes (admin listener; a public listener's route of kind "admin" serves the same):

- ``/healthz``: 200 when every part of the node works (health.py), else 503 naming the
  failing parts. Open to anyone who reaches the listener (load balancers).
- ``/``, ``/static/<file>``: the status page (static HTML, JS, CSS shipped in the
  package; no data in them), served with a strict Content-Security-Policy.
- ``/metrics``, ``/api/status``, ``/api/slow``, ``/api/events`` (the page's event
  stream), ``/api/history``, and the routes services add (``/api/mesh``, purge...).

Access: the admin listener must be bound to loopback unless ``admin.token`` is set
(config check refuses it). When a token is set, every request but ``/healthz`` and the
page's static files needs ``Authorization: Bearer <token>`` (401 otherwise); the page
asks for it and sends it on its own requests. On a public listener, where anyone may
connect, everything but ``/healthz`` needs the token, and is refused (403) when none is
configured.
"""
from __future__ import annotations

import hmac
import inspect
import json
from collections.abc import Awaitable, Callable
from importlib import resources

from farts.metrics import CONTENT_TYPE
from farts.transport.http import EVENTS, Fixed, Request, Response, Upgrade

# Nothing from anywhere but this listener; no inline script or style; no framing.
CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = [(b"content-security-policy", CSP), (b"x-content-type-options", b"nosniff"),
                (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
                (b"cache-control", b"no-cache")]
STATIC_TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
                ".css": b"text/css; charset=utf-8", ".svg": b"image/svg+xml"}
OPEN_PATHS = (b"/healthz",)
JSON = b"application/json"


def _static_files() -> dict[bytes, tuple[bytes, bytes]]:
    """The page's files from the package (farts/admin/static), read once."""
    out = {}
    root = resources.files("farts.admin") / "static"
    for entry in root.iterdir():
        name = entry.name
        ext = name[name.rfind("."):]
        if ext in STATIC_TYPES:
            out[b"/static/" + name.encode()] = (STATIC_TYPES[ext], entry.read_bytes())
    out[b"/"] = out[b"/static/index.html"]
    return out


def _json(status: int, data, headers=()) -> Response:
    return Response(status, [(b"content-type", JSON), (b"cache-control", b"no-store"), *headers],
                    json.dumps(data, indent=1).encode() + b"\n")


class AdminHandler:
    def __init__(self, render_metrics: Callable[[], bytes], status: Callable[[], dict],
                 health: Callable[[], Awaitable[tuple[bool, dict]]] | None = None,
                 slow: Callable[[], dict] | None = None, sampler=None, token: str = "",
                 public: bool = False) -> None:
        self.render_metrics = render_metrics
        self.status = status
        self.health = health
        self.slow = slow
        self.sampler = sampler
        self.token = token.encode()
        self.public = public   # on a public listener: nothing but /healthz without the token
        self.static = _static_files()
        self.not_found = Fixed.error(404)
        self.not_allowed = Fixed.error(405)
        self.unauthorized = Fixed(401, b"401 Unauthorized: this admin endpoint needs "
                                  b"Authorization: Bearer <admin.token>\n",
                                  headers=[(b"www-authenticate", b'Bearer realm="farts-edge admin"')])
        self.forbidden = Fixed.error(403, "admin endpoints other than /healthz need admin.token "
                                     "on a public listener")

    def for_public(self) -> AdminHandler:
        """The same handler for a route of kind "admin" on a public listener."""
        return AdminHandler(self.render_metrics, self.status, self.health, self.slow, self.sampler,
                            self.token.decode(), public=True)

    def allowed(self, request: Request) -> Fixed | None:
        """None when the request may go on, else the refusal."""
        path = request.path
        if path in OPEN_PATHS:
            return None
        if not self.public and path in self.static:
            return None
        if not self.token:
            return self.forbidden if self.public else None
        given = request.header(b"authorization") or b""
        if given[:7].lower() == b"bearer " and hmac.compare_digest(given[7:].strip(), self.token):
            return None
        return self.unauthorized

    def handle(self, request: Request):
        if request.method not in (b"GET", b"HEAD"):
            return self.not_allowed
        refusal = self.allowed(request)
        if refusal is not None:
            return refusal
        path = request.path
        if path == b"/healthz":
            return self._health() if self.health is not None else _json(200, {"ok": True})
        if path == b"/metrics":
            body = self.render_metrics()
            if inspect.isawaitable(body):   # a node with worker processes asks them first
                return self._metrics_later(body)
            return Response(200, [(b"content-type", CONTENT_TYPE)], body)
        if path == b"/api/status":
            return _json(200, self.status())
        if path == b"/api/slow" and self.slow is not None:
            return _json(200, self.slow())
        if path == b"/api/events" and self.sampler is not None and request.method == b"GET":
            from farts.admin.status import SSE_HEADERS, EventStream
            return Upgrade(200, SSE_HEADERS, EventStream(self.sampler), EVENTS)
        if path == b"/api/history" and self.sampler is not None:
            return _json(200, self.sampler.hello())
        page = self.static.get(path)
        if page is not None and not self.public:
            return Response(200, [(b"content-type", page[0]), *PAGE_HEADERS], page[1])
        return self.not_found

    async def _metrics_later(self, body: Awaitable[bytes]) -> Response:
        return Response(200, [(b"content-type", CONTENT_TYPE)], await body)

    async def _health(self) -> Response:
        ok, parts = await self.health()
        body = {"ok": ok, "parts": parts}
        if not ok:
            body["failing"] = [f"{name}: {why}" for name, why in parts.items() if why != "ok"]
        return _json(200 if ok else 503, body)
