"""Where a node's GET /api/deploy answers from: a node that ran a deploy (finished) and
then handed the next one to the master follows the master's, not its own old one (a
master change between two deploys; `deploy --wait` asked there took the old "done" for
the new deploy's end).  In process, the master a real HTTP server on loopback."""
from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from farts.release.deploy import ReleaseAdminHandler
from farts.release.rollout import Finished, Rollout
from farts.transport.http import Fixed, Request
from fast.http1 import RequestParser


class Master(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"version": "0.3.0", "state": "running", "nodes": []}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class Deployer:
    """The two things the handler reads of a Deployer here."""

    def __init__(self, rollout: Rollout | None, runner_url: str) -> None:
        self.rollout, self.runner_url = rollout, runner_url

    def status(self) -> dict:
        return {"state": "none"} if self.rollout is None else self.rollout.status()


def get_deploy(handler: ReleaseAdminHandler) -> dict:
    head = RequestParser(65536, 100).feed(b"GET /api/deploy HTTP/1.1\r\nhost: x\r\n\r\n")[0]

    async def main():
        answer = handler.handle(Request(head, None, None, "127.0.0.1", "admin", None, 0.0))
        return await answer if asyncio.iscoroutine(answer) else answer
    answer = asyncio.run(main())
    if isinstance(answer, Fixed):
        return json.loads(answer.keep.partition(b"\r\n\r\n")[2])
    return json.loads(answer.body)


def test_a_node_that_handed_its_last_deploy_to_the_master_answers_the_masters_status():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Master)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        before = Rollout("0.2.0", ["n1", "n2"])
        before.result = Finished(True, "")
        assert get_deploy(ReleaseAdminHandler(None, Deployer(before, "")))["version"] == "0.2.0"   # its own
        got = get_deploy(ReleaseAdminHandler(None, Deployer(before, url)))
        assert (got["version"], got["state"]) == ("0.3.0", "running")
    finally:
        server.shutdown()
        server.server_close()


class Admin(BaseHTTPRequestHandler):
    """A node's admin API as `deploy --wait` meets it: the POST starts 0.3.0; the GETs
    answer in turn what the server's ``answers`` holds (the last one again and again)."""

    def _send(self, status: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self._send(202, {"version": "0.3.0", "state": "running", "nodes": []})

    def do_GET(self) -> None:
        answers = self.server.answers
        self._send(200, answers.pop(0) if len(answers) > 1 else answers[0])

    def log_message(self, *args) -> None:
        pass


def test_deploy_wait_follows_its_own_deploy_not_the_one_before(tmp_path):
    import subprocess
    import sys

    server = ThreadingHTTPServer(("127.0.0.1", 0), Admin)
    server.answers = [{"version": "0.2.0", "state": "done", "nodes": []},   # the deploy before
                      {"error": "connection refused"},
                      {"version": "0.3.0", "state": "running", "nodes": [{"node": "n1", "canary": True,
                                                                          "state": "verifying"}]},
                      {"version": "0.3.0", "state": "stopped", "reason": "n1: its new process exited",
                       "nodes": [{"node": "n1", "canary": True, "state": "rolled_back"}]}]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        bundle = tmp_path / "b.tar"
        bundle.write_bytes(b"bundle")
        out = subprocess.run([sys.executable, "-m", "farts.cli", "deploy", str(bundle), "--admin",
                              f"http://127.0.0.1:{server.server_address[1]}/", "--wait"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1, out
        assert "0.2.0" not in out.stdout and "deploy 0.3.0: stopped [n1* rolled_back]" in out.stdout, out
    finally:
        server.shutdown()
        server.server_close()
