"""Host → tenant, then path prefix → route and handler, resolved once per request."""
from __future__ import annotations

import re

import cython

from farts.config import Route, Tenant

from .http import Fixed, Handler

RouteTarget = Handler | Fixed

# A path segment that is "." or "..", plain or percent-encoded, between "/" or "%2F".
_DOT_SEGMENT = re.compile(rb"(?:^|/|%2[fF])(?:\.|%2[eE]){1,2}(?=$|/|%2[fF]|\?)")


DOT_SEGMENTS = "dot segments in the path"
ENCODED_SLASH = "encoded slash in the path (http.encoded_slashes)"


def path_problem(path: bytes, reject_encoded_slashes: bool) -> str | None:
    """Why a request path may not be routed, or None. Dot segments are refused rather
    than resolved: a prefix match on "/pub/../private" would route to /pub what the
    application reads as /private (browsers and curl resolve them before sending)."""
    if _DOT_SEGMENT.search(path):
        return DOT_SEGMENTS
    if reject_encoded_slashes and (b"%2f" in path or b"%2F" in path):
        return ENCODED_SLASH
    return None


@cython.cclass
class Router:
    """Resolves a request to ``(tenant, route, handler, body_limit)`` or a Fixed error.

    A handler may itself be a ``Fixed`` (routes of kind "static"): the connection writes
    it without calling anything.

    ``tenants=None`` makes a router that ignores Host (the admin listener): every
    request resolves with tenant None.
    """

    # (Compiled, a cclass: resolve runs once per request; its prefix tests are C ones on
    # typed bytes, a tenth of a fixed-route answer as Python method calls.)
    any_host = cython.declare(cython.bint, visibility="public")
    by_host = cython.declare(dict, visibility="public")
    default = cython.declare(list, visibility="public")
    max_body = cython.declare(object, visibility="public")
    unknown_host = cython.declare(object, visibility="public")
    not_found = cython.declare(object, visibility="public")
    reject_encoded_slashes = cython.declare(cython.bint, visibility="public")
    bad_path = cython.declare(dict, visibility="public")

    def __init__(self, tenants: list[Tenant] | None, entries: list[tuple[Route, RouteTarget]],
                 max_body_bytes: int, unknown_host_status: int = 421, encoded_slashes: str = "pass") -> None:
        def table_for(tenant: Tenant | None):
            rows = [(r.prefix.encode(), (tenant, r, h, r.max_body_bytes if r.max_body_bytes >= 0 else max_body_bytes))
                    for r, h in entries if tenant is None or not r.tenants or tenant.id in r.tenants]
            # Longest prefix first, so "/api/publish" wins over "/api/".
            return sorted(rows, key=lambda row: len(row[0]), reverse=True)

        self.any_host = tenants is None
        self.by_host = {}
        self.default = table_for(None) if tenants is None else []
        for t in tenants or ():
            table = table_for(t)
            for host in t.hosts:
                self.by_host[host.lower().encode()] = table
        # The largest body any request here may have: the parser refuses a chunked body
        # declaring more as soon as it reads the size (the route's own limit is checked
        # on the bytes, and by the proxy's buffering before anything is forwarded).
        tables = [self.default, *self.by_host.values()]
        self.max_body = max([max_body_bytes] + [row[1][3] for table in tables for row in table])
        self.unknown_host = Fixed.error(unknown_host_status, "unknown host")
        self.not_found = Fixed.error(404)
        self.reject_encoded_slashes = encoded_slashes == "reject"
        self.bad_path = {why: Fixed.error(400, why) for why in (DOT_SEGMENTS, ENCODED_SLASH)}

    def fixed_answers(self) -> list[tuple[str, Fixed]]:
        """(route label, Fixed) of every answer the connection writes by itself."""
        rows = {id(r[2]): (r[1].prefix, r[2]) for table in [self.default, *self.by_host.values()]
                for _, r in table if type(r[2]) is Fixed}
        return [("-", self.unknown_host), ("-", self.not_found), *(("-", f) for f in self.bad_path.values()),
                *rows.values()]

    def resolve(self, host: bytes, path: bytes, plain: cython.bint = False):
        """``plain``: the parser found no "%" and no "/." in the path (HTTP/1.1: the
        head's ``plain_path``, for free), so the checks below can be skipped."""
        if not plain and (b"/." in path or b"%" in path):
            problem = path_problem(path, self.reject_encoded_slashes)
            if problem is not None:
                return self.bad_path[problem]
        table: list = self.default if self.any_host else self.by_host.get(host)
        if table is None:
            return self.unknown_host
        prefix: bytes
        for row in table:
            prefix = row[0]
            if path.startswith(prefix):
                return row[1]
        return self.not_found
