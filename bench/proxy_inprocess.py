"""The proxy route's own cost per request, without sockets: a real node (its listener,
router, proxy handler, metrics) in this process, clients and upstream connections on
fake transports that answer through the event loop (``call_soon``), as a socket's
readiness would. What is left is the node's Python and the loop's scheduling: the part
of a proxied request the code decides (the syscalls, four per request, are the same for
every proxy and are measured by bench/http.py).

Each of ``--connections`` keep-alive clients sends a bodyless GET; the proxy writes it
to a pooled upstream connection, which answers with nginx's head and a 1 KiB body; the
client sends its next request when its answer is written. Best of ``--rounds``.

    PYTHONPATH=$PWD .venv/bin/python bench/proxy_inprocess.py [--requests 50000]

Runs against any tree on PYTHONPATH (the interfaces it drives are old ones), so two
trees compare with the same script.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# bench/http.py would shadow the stdlib's http package: this folder off sys.path; the
# tree's root last (PYTHONPATH, when set, picks the tree to measure).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE] + [os.path.dirname(HERE)]

import uvloop  # noqa: E402

from bench.nodeconf import local_node, node_toml, proxy_to  # noqa: E402
from farts import config  # noqa: E402
from farts.node import Node  # noqa: E402
from farts.transport.client import ClientConnection  # noqa: E402
from farts.transport.connection import HTTP1Connection  # noqa: E402

REQUEST = b"GET /proxy/x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
ANSWER = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.26.3\r\nDate: Sat, 05 Dec 2026 20:00:00 GMT\r\n"
          b"Content-Type: text/plain\r\nContent-Length: 1024\r\n"
          b"Last-Modified: Sat, 05 Dec 2026 19:00:00 GMT\r\nConnection: keep-alive\r\n"
          b'ETag: "6931f0d0-400"\r\nAccept-Ranges: bytes\r\n\r\n' + b"x" * 1024)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeTransport:
    """Enough of an asyncio transport for both sides; ``write`` calls ``on_write``."""

    def __init__(self, on_write) -> None:
        self.on_write = on_write

    def write(self, data: bytes) -> None:
        self.on_write(data)

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        raise RuntimeError("the driver's connections must stay open")

    abort = close


async def drive(listener, server, requests: int, connections: int) -> float:
    loop = asyncio.get_running_loop()
    call_soon = loop.call_soon
    done = loop.create_future()
    left = [requests]
    for _ in range(connections):   # one upstream connection per client, pooled
        up = ClientConnection(server)
        # (one answer per request in the write: several when they go pipelined)
        up.connection_made(FakeTransport(
            lambda data, up=up: call_soon(up.data_received, ANSWER * data.count(b"\r\n\r\n"))))
        server.release(up)
    clients = []
    for _ in range(connections):
        conn = HTTP1Connection(listener)

        def answered(data: bytes, conn=conn) -> None:
            left[0] -= 1
            if left[0] > 0:
                call_soon(conn.data_received, REQUEST)
            elif not done.done():
                done.set_result(None)
        conn.connection_made(FakeTransport(answered))
        clients.append(conn)
    # CPU time, not wall time: on a shared machine the process is descheduled at random,
    # which the wall clock counts and the CPU clock does not.
    start = time.process_time()
    for conn in clients:
        call_soon(conn.data_received, REQUEST)
    await done
    seconds = time.process_time() - start
    await asyncio.sleep(0.01)   # (answers still in flight finish)
    for conn in clients:
        listener.release(conn)
    while server.idle:
        server.idle.pop()
    return seconds


def node_config(data_dir: str, http_port: int, admin_port: int, upstream: str, pipeline: int = 1) -> str:
    """A node with one route, ``/proxy`` to ``[upstreams.up]`` at ``upstream`` (host:port);
    bench/proxy_callgrind.py runs the same node. One worker: the listener in this
    process, where it is driven."""
    return node_toml({**local_node(data_dir, http_port, admin_port, hosts=("127.0.0.1",), workers=1),
                      **proxy_to(upstream, pipeline)})


async def main(args) -> None:
    with tempfile.TemporaryDirectory() as d:
        cfg = config.parse(node_config(d, free_port(), free_port(), "127.0.0.1:9", args.pipeline))
        node = Node(cfg)
        await node.start()
        try:
            listener = node.listeners["http"]
            handler = listener.router.resolve(b"127.0.0.1", b"/proxy/x", True)[2]
            server = handler.servers[0]
            best = min([await drive(listener, server, args.requests, args.connections)
                        for _ in range(args.rounds)])
        finally:
            await node.stop()
    tree = os.path.dirname(os.path.dirname(os.path.abspath(config.__file__)))
    print(f"proxy route in-process: {best / args.requests * 1e6:.2f} CPU-us per request "
          f"(best of {args.rounds} x {args.requests:,} requests, {args.connections} connections, "
          f"pipeline {args.pipeline}; {tree})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pipeline", type=int, default=1, help="[upstreams.up] pipeline (1: off)")
    uvloop.run(main(ap.parse_args()))
