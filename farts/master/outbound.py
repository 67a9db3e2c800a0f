"""One outbound HTTP request of the master (a cron's, a notification's) on the node's Client."""
from __future__ import annotations

import asyncio

CONNECT_TIMEOUT = 5.0


async def send(http, pool, method: bytes, target: bytes, headers: list, body: bytes, timeout: float) -> int:
    """The response status (the body is read and dropped, so the connection is reused).
    Raises TimeoutError, OSError or the Client's errors."""
    async with asyncio.timeout(timeout):
        resp = await http.request(pool, method, target, headers, connect_timeout=min(CONNECT_TIMEOUT, timeout),
                                  read_timeout=timeout, body=_once(body) if body else None,
                                  length=len(body) if body else -2)
        if not isinstance(resp.body, bytes):
            async for _ in resp.body:
                pass
    return resp.head.status


async def _once(data: bytes):
    yield data
