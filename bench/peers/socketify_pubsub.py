"""socketify's (uWebSockets') pub/sub peer for bench/fanout.py: uWS topics do the fanout
in C++ (one topic per channel, `App.publish`), Python only handles commands and the
publish request.

Subscribers speak farts-edge's protocol: WebSocket `GET /live`, a text frame
`{"op":"subscribe","channel":"c"}` answered `{"op":"subscribed","channel":"c","recovered":false}`,
then events `{"channel":"c","id":"<n>","data":<json>}`.

Publishing: `POST /api/publish` on the same port (`{"channel":..,"data":..}` or
`{"messages":[...]}`, no auth); each message is encoded once to its JSON text and
handed to `App.publish(topic, text, OpCode.TEXT)`. Compression off; a subscriber with
more than 1 MiB unsent is closed (uWS `closeOnBackpressureLimit`), like farts-edge's
slow-consumer limit.

Run: python bench/peers/socketify_pubsub.py --port P [--host 127.0.0.1]
Prints `ready` on standard output once the listener is bound.
"""
from __future__ import annotations

import argparse
import json
import resource
import signal
import sys

from socketify import App, AppListenOptions, CompressOptions, OpCode

SUBSCRIBED = '{{"op":"subscribed","channel":{},"recovered":false}}'


def build(args) -> App:
    app = App()
    seq = 0

    def publish_body(body: bytes) -> tuple[str, str]:
        nonlocal seq
        try:
            req = json.loads(body)
            messages = req["messages"] if "messages" in req else [req]
            ids = []
            for m in messages:
                channel = m["channel"]
                seq += 1
                text = ('{"channel":' + json.dumps(channel) + ',"id":"' + str(seq)
                        + '","data":' + json.dumps(m["data"], separators=(",", ":")) + "}")
                app.publish(channel, text, OpCode.TEXT)
                ids.append(str(seq))
        except (ValueError, TypeError, KeyError) as e:
            return "400 Bad Request", json.dumps({"error": str(e)})
        return "200 OK", json.dumps({"ids": ids})

    def publish(res, req) -> None:
        chunks: list[bytes] = []

        def on_data(res, chunk, is_end) -> None:
            if chunk:
                chunks.append(chunk)
            if is_end:
                status, answer = publish_body(b"".join(chunks))
                res.cork(lambda res: res.write_status(status)
                         .write_header("Content-Type", "application/json").end(answer))

        res.on_aborted(lambda res: None)
        res.on_data(on_data)

    def message(ws, msg, opcode) -> None:
        try:
            cmd = json.loads(msg)
            op = cmd["op"]
        except (ValueError, TypeError, KeyError):
            ws.send('{"op":"error","code":"bad_command"}', OpCode.TEXT)
            return
        if op == "subscribe" and isinstance(cmd.get("channel"), str):
            ws.subscribe(cmd["channel"])
            ws.send(SUBSCRIBED.format(json.dumps(cmd["channel"])), OpCode.TEXT)
        elif op == "unsubscribe" and isinstance(cmd.get("channel"), str):
            ws.unsubscribe(cmd["channel"])
        elif op == "ping":
            ws.send('{"op":"pong"}', OpCode.TEXT)
        else:
            ws.send('{"op":"error","code":"unknown_op"}', OpCode.TEXT)

    app.post("/api/publish", publish)
    app.ws("/live", {
        "compression": CompressOptions.DISABLED,
        "max_payload_length": 64 * 1024,
        "idle_timeout": 960,  # uWS's longest: the idle-memory phase must not be cut short
        "max_backpressure": 1 << 20,
        "close_on_backpressure_limit": True,
        "message": message,
    })
    app.any("/*", lambda res, req: res.write_status("404 Not Found").end("not found"))
    app.listen(AppListenOptions(port=args.port, host=args.host),
               lambda config: print("ready", flush=True))
    return app


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(20000, hard)), hard))
    app = build(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app.run()
