"""A real webhook receiver (aiohttp) for the webhook tests: it checks each request's
signature the way the README tells receivers to (its own HMAC, not the sender's code),
and can fail the first attempts of each delivery, answer slowly, or be down."""
from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import time

from aiohttp import web


class Receiver:
    def __init__(self, secrets: dict[str, bytes], fail_first: int = 0, slow_first: float = 0.0,
                 status: int = 204) -> None:
        self.secrets = secrets            # tenant id -> its webhook secret (the receiver is the app's)
        self.fail_first = fail_first      # answer 500 to the first N attempts of each delivery
        self.slow_first = slow_first      # seconds to wait before answering a delivery's first attempt
        self.status = status
        self.attempts: collections.Counter = collections.Counter()   # delivery id -> requests seen
        self.delivered: collections.Counter = collections.Counter()  # delivery id -> answered 2xx
        self.bodies: dict[str, dict] = {}
        self.bad_signatures = 0
        self.headers: dict[str, dict] = {}
        self.runner: web.AppRunner | None = None
        self.port = 0

    @staticmethod
    def verify(secret: bytes, headers, body: bytes) -> bool:
        """The README's snippet."""
        timestamp = headers["Webhook-Timestamp"]
        expected = "v1=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        return (hmac.compare_digest(expected, headers["Webhook-Signature"])
                and abs(time.time() - int(timestamp)) < 300)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        tenant = request.match_info.get("tenant", "demo")
        if not self.verify(self.secrets[tenant], request.headers, body):
            self.bad_signatures += 1
            return web.Response(status=400, text="bad signature")
        did = request.headers["Webhook-Id"]
        envelope = json.loads(body)
        assert envelope["id"] == did and envelope["type"] == request.headers["Webhook-Event"]
        self.attempts[did] += 1
        n = self.attempts[did]
        self.headers[did] = dict(request.headers)
        if n <= self.fail_first:
            return web.Response(status=500, text="not yet")
        if n == 1 and self.slow_first:
            await asyncio.sleep(self.slow_first)
        self.delivered[did] += 1
        self.bodies[did] = envelope
        return web.Response(status=self.status)

    async def start(self, port: int = 0, ssl_context=None) -> int:
        app = web.Application()
        app.router.add_post("/hook/{tenant}", self.handle)
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port, ssl_context=ssl_context)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


async def until(check, timeout: float = 60.0, what: str = "condition") -> None:
    """Waits for check() (generous: the machine is shared); fails with what it waited for."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
