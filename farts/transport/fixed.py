"""Routes of kind "static": one fixed response, framed once when the route is built."""
from __future__ import annotations

from farts.config import Route

from .http import Fixed, Request


class FixedHandler:
    def __init__(self, route: Route) -> None:
        self.response = Fixed(route.status, route.body.encode(), route.content_type.encode())

    def handle(self, request: Request) -> Fixed:
        return self.response
