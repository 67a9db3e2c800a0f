"""A raw ASGI app for the uvicorn peer of bench/http.py: every request gets the same body.

Run: uvicorn --app-dir bench/peers asgi_app:app --http httptools --loop uvloop --no-access-log
BENCH_BODY_SIZE (default 1024) sets the body size.
"""
from __future__ import annotations

import os

from body import make_body

BODY = make_body(int(os.environ.get("BENCH_BODY_SIZE", "1024")))
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(BODY)).encode()),
    ],
}
BODY_MSG = {"type": "http.response.body", "body": BODY}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    # GET requests from wrk carry no body; nothing to drain.
    await send(START)
    await send(BODY_MSG)
