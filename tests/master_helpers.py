"""A real HTTP receiver in the test process that records every POST (the app a cron
calls, the chat room an alert is sent to)."""
from __future__ import annotations

import http.server
import json
import threading
import time


class Receiver:
    def __init__(self) -> None:
        self.got: list[dict] = []   # {"path", "t", "headers" (lower-case names), **the JSON body}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                body = json.loads(raw) if raw else {}
                outer.got.append({"path": self.path, "t": time.monotonic(),
                                  "headers": {k.lower(): v for k, v in self.headers.items()}, **body})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
