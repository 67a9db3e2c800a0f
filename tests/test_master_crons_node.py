"""Crons on a real node (a deployment of one): an app that fails the first attempt of each
slot (retried, then done), an upstream nobody listens on (failed after its retries), a
built-in task; `farts-edge crons list` shows each one's runs."""
from __future__ import annotations

import http.server
import subprocess
import sys
import threading

from conftest import free_port
from mesh_helpers import metric, wait_for


class Flaky:
    """Answers 503 to the first attempt of each idempotency key, then 200."""

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self):
                key = self.headers["idempotency-key"]
                self.rfile.read(int(self.headers.get("content-length") or 0))
                outer.attempts[key] = outer.attempts.get(key, 0) + 1
                self.send_response(503 if outer.attempts[key] == 1 else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_retries_failures_and_tasks_are_recorded(node_factory):
    app = Flaky()
    node = node_factory(f"""
        [db]
        enabled = true
        port = 0
        sync = false

        [upstreams.app]
        servers = ["127.0.0.1:{app.server.server_address[1]}"]
        [upstreams.gone]
        servers = ["127.0.0.1:{free_port()}"]

        [master]
        enabled = true

        [[master.crons]]
        name = "flaky"
        schedule = "* * * * * */2"
        upstream = "app"
        method = "PUT"
        body = '{{"hello": 1}}'
        retries = 2
        retry_delay = 0.1

        [[master.crons]]
        name = "down"
        schedule = "* * * * * */2"
        upstream = "gone"
        retries = 1
        retry_delay = 0.1
        timeout = 2.0

        [[master.crons]]
        name = "nothing"
        schedule = "* * * * * *"
        action = "task"
        task = "noop"
        """)
    try:
        assert wait_for(lambda: metric(node, "farts_master_cron_runs_total", 'cron="down",outcome="failed"') >= 1
                        and metric(node, "farts_master_cron_runs_total", 'cron="flaky",outcome="done"') >= 2, 30), \
            node.log()
        assert all(n == 2 for n in list(app.attempts.values())[:2]), app.attempts
        out = subprocess.run([sys.executable, "-m", "farts.cli", "crons", "list", "--admin",
                              node.url("admin", "/")], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        text = out.stdout
        assert "flaky  * * * * * */2 (UTC)  http app/  catch_up once" in text
        assert "done     epoch 1  attempts 2  HTTP 200" in text
        assert "failed   epoch 1  attempts 2  127.0.0.1:" in text and "ConnectionRefusedError" in text
        assert "nothing  * * * * * * (UTC)  task noop" in text
    finally:
        app.server.shutdown()
