"""The admin service: /metrics (Prometheus text), /healthz, and a plain status page."""
from __future__ import annotations

import json
from collections.abc import Callable

from farts.metrics import CONTENT_TYPE
from farts.transport.http import Fixed, Request, Response


class AdminHandler:
    def __init__(self, render_metrics: Callable[[], bytes], status: Callable[[], dict]) -> None:
        self.render_metrics = render_metrics
        self.status = status
        self.not_found = Fixed.error(404)
        self.not_allowed = Fixed.error(405)

    def handle(self, request: Request) -> Response | Fixed:
        if request.method not in (b"GET", b"HEAD"):
            return self.not_allowed
        path = request.path
        if path == b"/metrics":
            return Response(200, [(b"content-type", CONTENT_TYPE)], self.render_metrics())
        if path == b"/healthz":
            return Response(200, [(b"content-type", b"application/json")],
                            json.dumps({"ok": True}).encode() + b"\n")
        if path in (b"/", b"/api/status"):
            return Response(200, [(b"content-type", b"application/json")],
                            json.dumps(self.status(), indent=1).encode() + b"\n")
        return self.not_found
