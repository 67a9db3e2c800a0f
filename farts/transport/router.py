"""Host → tenant, then path prefix → route and handler, resolved once per request."""
from __future__ import annotations

from farts.config import Route, Tenant

from .http import Fixed, Handler

RouteTarget = Handler | Fixed


class Router:
    """Resolves a request to ``(tenant, route, handler, body_limit)`` or a Fixed error.

    A handler may itself be a ``Fixed`` (routes of kind "static"): the connection writes
    it without calling anything.

    ``tenants=None`` makes a router that ignores Host (the admin listener): every
    request resolves with tenant None.
    """

    def __init__(self, tenants: list[Tenant] | None, entries: list[tuple[Route, RouteTarget]],
                 max_body_bytes: int, unknown_host_status: int = 421) -> None:
        def table_for(tenant: Tenant | None):
            rows = [(r.prefix.encode(), (tenant, r, h, r.max_body_bytes if r.max_body_bytes >= 0 else max_body_bytes))
                    for r, h in entries if tenant is None or not r.tenants or tenant.id in r.tenants]
            # Longest prefix first, so "/api/publish" wins over "/api/".
            return sorted(rows, key=lambda row: len(row[0]), reverse=True)

        self.any_host = tenants is None
        self.by_host: dict[bytes, list] = {}
        self.default = table_for(None) if tenants is None else []
        for t in tenants or ():
            table = table_for(t)
            for host in t.hosts:
                self.by_host[host.lower().encode()] = table
        self.unknown_host = Fixed.error(unknown_host_status, "unknown host")
        self.not_found = Fixed.error(404)

    def fixed_answers(self) -> list[tuple[str, Fixed]]:
        """(route label, Fixed) of every answer the connection writes by itself."""
        rows = {id(r[2]): (r[1].prefix, r[2]) for table in [self.default, *self.by_host.values()]
                for _, r in table if type(r[2]) is Fixed}
        return [("-", self.unknown_host), ("-", self.not_found), *rows.values()]

    def resolve(self, host: bytes, path: bytes):
        table = self.default if self.any_host else self.by_host.get(host)
        if table is None:
            return self.unknown_host
        for prefix, resolved in table:
            if path.startswith(prefix):
                return resolved
        return self.not_found
