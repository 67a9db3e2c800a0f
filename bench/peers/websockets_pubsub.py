"""The `websockets` library's pub/sub peer for bench/fanout.py: its asyncio server on
uvloop for the subscribers, `websockets.asyncio.server.broadcast` for the fanout.

Subscribers speak farts-edge's protocol: WebSocket `GET /live`, a text frame
`{"op":"subscribe","channel":"c"}` answered `{"op":"subscribed","channel":"c","recovered":false}`,
then events `{"channel":"c","id":"<n>","data":<json>}`.

Publishing: the websockets server reads no request bodies (it answers only GETs), so
`POST /api/publish` (`{"channel":..,"data":..}` or `{"messages":[...]}`, no auth) is
served on a second port by a minimal keep-alive HTTP/1.1 protocol on the same loop;
each message is encoded once to its JSON text and handed to `broadcast()`, which
frames and writes it per connection synchronously, as its documentation says.

Run: python bench/peers/websockets_pubsub.py --port P --publish-port Q [--host 127.0.0.1]
Prints `ready` on standard output once both listeners are bound.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys

import uvloop
from websockets.asyncio.server import broadcast, serve
from websockets.exceptions import ConnectionClosed

MAX_BODY = 1 << 20


class PubSub:
    def __init__(self) -> None:
        self.channels: dict[str, set] = {}
        self.seq = 0

    async def subscriber(self, ws) -> None:
        if ws.request.path.split("?", 1)[0] != "/live":
            await ws.close(1008, "not found")
            return
        mine: list[str] = []
        try:
            async for msg in ws:
                try:
                    cmd = json.loads(msg)
                    op = cmd["op"]
                except (ValueError, TypeError, KeyError):
                    await ws.send('{"op":"error","code":"bad_command"}')
                    continue
                if op == "subscribe" and isinstance(cmd.get("channel"), str):
                    channel = cmd["channel"]
                    self.channels.setdefault(channel, set()).add(ws)
                    mine.append(channel)
                    await ws.send(json.dumps({"op": "subscribed", "channel": channel,
                                              "recovered": False}))
                elif op == "unsubscribe" and isinstance(cmd.get("channel"), str):
                    self.channels.get(cmd["channel"], set()).discard(ws)
                elif op == "ping":
                    await ws.send('{"op":"pong"}')
                else:
                    await ws.send('{"op":"error","code":"unknown_op"}')
        except ConnectionClosed:
            pass  # the bench's clients just exit: no traceback per connection
        finally:
            for channel in mine:
                subs = self.channels.get(channel)
                if subs is not None:
                    subs.discard(ws)
                    if not subs:
                        del self.channels[channel]

    def publish(self, body: bytes) -> tuple[int, bytes]:
        try:
            req = json.loads(body)
            messages = req["messages"] if "messages" in req else [req]
            ids = []
            for m in messages:
                channel = m["channel"]
                self.seq += 1
                text = ('{"channel":' + json.dumps(channel) + ',"id":"' + str(self.seq)
                        + '","data":' + json.dumps(m["data"], separators=(",", ":")) + "}")
                broadcast(self.channels.get(channel, ()), text)
                ids.append(str(self.seq))
        except (ValueError, TypeError, KeyError) as e:
            return 400, json.dumps({"error": str(e)}).encode()
        return 200, json.dumps({"ids": ids}).encode()


class PublishHTTP(asyncio.Protocol):
    """Keep-alive HTTP/1.1, Content-Length bodies only: enough for the bench's publisher."""

    def __init__(self, pubsub: PubSub) -> None:
        self.pubsub = pubsub
        self.buf = b""
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 16384:
                    self.transport.close()
                return
            head = self.buf[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if length > MAX_BODY:
                self.transport.close()
                return
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            if head.startswith("POST /api/publish "):
                status, answer = self.pubsub.publish(body)
            else:
                status, answer = 404, b'{"error":"not found"}'
            self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s"
                                 % (status, b"OK" if status == 200 else b"Error", len(answer), answer))


async def main(args) -> None:
    pubsub = PubSub()
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with serve(pubsub.subscriber, args.host, args.port, compression=None, backlog=4096):
        http = await loop.create_server(lambda: PublishHTTP(pubsub), args.host, args.publish_port,
                                        backlog=1024)
        print("ready", flush=True)
        await stop
        http.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--publish-port", type=int, required=True)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(20000, hard)), hard))
    uvloop.run(main(args))
    sys.exit(0)
