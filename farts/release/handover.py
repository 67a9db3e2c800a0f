"""Restart without dropping work: the node's next process takes over from the running one.

Why a socket handover (SCM_RIGHTS over a Unix socket) and not SO_REUSEPORT: with
SO_REUSEPORT the two processes hold two listening sockets, and the kernel spreads new
connections over both queues; when the old process closes its socket, the connections
waiting in its queue are reset: failed requests under load. Handing over the very same
listening socket keeps one queue: a connection waits in it until some process accepts
it, so none is refused or reset, whatever the timing.

The running process (``Handover``, the [release] row of the node's table) listens on
``data_dir/handover.sock``. The next one (``farts-edge serve --takeover``, ``take_over``)
builds its node, connects and says ``takeover``; then:

 1. old: the mesh says DRAINING (peers' DNS stop giving the node out while it changes);
    every HTTP listener and the DB listener stop accepting; their listening sockets go to
    the new process (SCM_RIGHTS). Connections arriving now wait in the kernel's queue.
 2. old: the DB connections close as soon as each is between operations (an operation in
    flight is answered: committed, or refused with its error), then the store closes;
    the mesh leaves and the DNS server stops (their ports are bound again by the new one).
 3. old: its pub/sub history goes over (events keep their ids, so every cursor resumes
    exactly), and from now on it stamps the events still published on it with an origin
    of its own (``<node>~<pid>``) and forwards them, so the new process has them too (and
    broadcasts them to the mesh's peers: the old process has left it). It says ``released``.
 4. new: takes the history, starts its node on the inherited sockets, says ``ready``,
    and from now on forwards every event published on it to the old process: its
    subscribers stay live until they move (a resume after the spread would otherwise need
    every event the new process took meanwhile, more than a busy channel's history holds).
 5. old: each subscriber is told to reconnect (WebSocket close 1012, an SSE reconnect
    event), spread over ``release.reconnect_spread`` seconds; each HTTP/1.1 connection
    closes after its next response, HTTP/2 ones get a GOAWAY; after the spread and at
    most ``GRACE`` seconds for the last requests, it stops as on SIGTERM.

Messages are JSON lines; the only other thing on the socket is the one SCM_RIGHTS message.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import os
import random
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from farts import __version__
from farts.transport import kit

log = logging.getLogger("farts.release")

SOCKET = "handover.sock"
GRACE = 10.0          # seconds the old process waits for in-flight requests, at each step
MAX_LINE = 256 << 20  # a history snapshot is one line
MAX_FDS = 253         # descriptors in one SCM_RIGHTS message (Linux's SCM_MAX_FD)


class TakeoverFailed(OSError):
    pass


def _line(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


async def _drain_stream_kit(k, grace: float, clock) -> None:
    """Closes each connection of a byte-stream kit (DB wire) once it is between messages;
    after ``grace`` seconds the rest go too."""
    k.stop_accepting()
    deadline = clock.monotonic() + grace
    while k.connections and clock.monotonic() < deadline:
        for conn in list(k.connections):
            if not conn.busy() and not conn.partial():
                conn.close()
        await clock.sleep(0.02)


class Handover:
    """The running process's side: waits for a takeover and hands everything over."""

    def __init__(self, node, spread: float, grace: float = GRACE) -> None:
        self.node = node
        self.path = node.cfg.path(SOCKET)
        self.spread, self.grace = spread, grace
        self.server: asyncio.AbstractServer | None = None
        self.handed_over = False
        # Work that goes on in the next process: name -> (export, resume); export() is
        # called at the release (and stops that work here), the next process finds what
        # it returned in its ``carried`` (e.g. a deploy this node runs, deploy.py).
        self.carry: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {}
        self.carried: dict[str, Any] = {}

    async def start(self) -> None:
        try:
            self.server = await asyncio.start_unix_server(self._takeover, path=str(self.path), limit=MAX_LINE)
        except OSError as e:   # (a data_dir path too long for a Unix socket, a read-only disk)
            log.warning("restart handover unavailable: cannot listen on %s: %s", self.path, e)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
            if not self.handed_over:   # (after a handover the path is the next process's)
                self.path.unlink(missing_ok=True)

    async def _takeover(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello = json.loads(await reader.readline() or b"{}")
        except ValueError:
            hello = {}
        if hello.get("op") != "takeover" or self.handed_over:
            writer.close()
            return
        self.handed_over = True
        self.server.close()   # the next process listens on the path once it starts
        self.server = None
        self.path.unlink(missing_ok=True)
        node = self.node
        log.info("handing over to process %s (farts-edge %s)", hello.get("pid"), hello.get("version"))
        if node.mesh is not None:
            node.mesh.drain()
        self._send_sockets(writer)
        # The members this node knows: the next process dials them as seeds (its own seeds
        # may be none, or gone), and rejoins under the same id (refuting the "left").
        seeds = [m["mesh"] for m in node.mesh.status()["members"]
                 if not m["self"] and m.get("mesh") and m["state"] in ("alive", "suspect", "draining")] \
            if node.mesh is not None else []
        if node.db is not None and node.db.kit is not None:
            await _drain_stream_kit(node.db.kit, self.grace, node.clock)
        # Their stores and ports are the next process's now (and the status sampler's figures:
        # it would read the closed store).
        for row in node.table:
            service = node.services.get(row.name)
            if row.name in ("admin", "db", "mesh", "dns") and service is not None:
                try:
                    result = row.stop(service) if row.stop is not None else None
                    if inspect.isawaitable(result):
                        await result
                except Exception:   # (the next process must get its turn whatever happens here)
                    log.exception("handover: stopping %s failed", row.name)
                node.services[row.name] = None
                for peer in node.peers.pop(row.name, ()):   # (the replica's ticks read the closed store)
                    getattr(peer, "stop", lambda: None)()
        pubsub = node.pubsub
        snapshot = None
        if pubsub is not None:
            snapshot = pubsub.snapshot()
            pubsub.rename_origin(f"{node.cfg.node.id}~{os.getpid()}")
            before = pubsub.on_local_event

            def forward(event: dict) -> None:
                if before is not None:
                    before(event)
                if not writer.is_closing():
                    writer.write(_line({"op": "event", "event": event}))
            pubsub.on_local_event = forward
        carry = {name: export() for name, (export, _) in self.carry.items()}
        writer.write(_line({"op": "released", "pubsub": snapshot, "carry": carry, "mesh_seeds": seeds}))
        try:
            ready = json.loads(await asyncio.wait_for(reader.readline(), 120) or b"{}")
        except (TimeoutError, ValueError, OSError):
            ready = {}
        if ready.get("op") != "ready":
            log.error("the next process did not start (%s): this one stops anyway", ready or "no answer")
        else:
            log.info("the next process serves: telling subscribers to reconnect over %.1f s", self.spread)
        back = asyncio.ensure_future(_apply_events(reader, pubsub)) if pubsub is not None else None
        await self._drain(pubsub)
        writer.close()
        if back is not None:
            back.cancel()
        os.kill(os.getpid(), signal.SIGTERM)   # the rest stops as on any SIGTERM

    def _send_sockets(self, writer: asyncio.StreamWriter) -> None:
        node = self.node
        kits = dict(node.listeners)
        if node.db is not None and node.db.kit is not None:
            kits["db"] = node.db.kit
        names, fds = [], []
        for name, k in kits.items():
            sock = k.listening_socket()
            if sock is not None:
                names.append(name)
                fds.append(os.dup(sock.fileno()))
        if node.supervisor is not None:   # the workers' (which drain: farts/workers/)
            for name, sock in node.supervisor.hand_over():
                names.append(name)
                fds.append(os.dup(sock.fileno()))
        for name, k in kits.items():   # (after the dup: closing ours leaves theirs open)
            if name in node.listeners:
                k.drain()
            else:
                k.stop_accepting()
        # The transport has written nothing yet, so this message goes first on the socket.
        raw = socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno()))
        try:
            raw.setblocking(True)
            send_sockets(raw, names, fds)
        finally:
            raw.close()
            for fd in fds:
                os.close(fd)

    async def _drain(self, pubsub) -> None:
        clock = self.node.clock
        if pubsub is not None:
            for sub in [*pubsub.channels.websockets, *pubsub.channels.streams]:
                clock.call_later(random.random() * self.spread, pubsub.ask_to_reconnect, sub)
        workers = self.node.supervisor
        if workers is not None:
            workers.send_subscribers_over(self.spread)
        await clock.sleep(self.spread)
        deadline = clock.monotonic() + self.grace
        while clock.monotonic() < deadline and (
                any(li.connections for li in self.node.listeners.values())
                or (pubsub is not None and (pubsub.channels.websockets or pubsub.channels.streams))
                or (workers is not None and workers.open_connections())):
            await clock.sleep(0.05)


class Successor:
    """The new process's side after ``take_over``: the line to the old process.

    Every event published here goes to the old one, in order and from the first, so its
    subscribers stay live until they move (no history would hold what a busy channel
    carried during the whole spread). Only this node's own: an event id there covers every
    earlier event of its origin (history.py), so an event the old process got before an
    earlier one of the same origin would be skipped by the resume here, and the peers'
    events may come here out of order (a catch-up). Theirs reach the moving subscribers by
    that resume. Until ``ready`` opens the line they wait in ``backlog``."""

    def __init__(self, sock: socket.socket, pending: bytes, pubsub) -> None:
        self.sock, self.pending, self.pubsub = sock, pending, pubsub
        self.reader: asyncio.Task | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.backlog: list[bytes] = []
        if pubsub is not None:
            pubsub.on_delivered.append(self.forward_back)

    def forward_back(self, event: dict) -> None:
        if event["origin"] != self.pubsub.node_id:
            return
        line = _line({"op": "event", "event": event})
        if self.writer is None:
            self.backlog.append(line)
        elif not self.writer.is_closing():
            self.writer.write(line)

    def ready(self) -> None:
        """The node serves: the old process may send its subscribers over; its events
        published meanwhile are applied here."""
        self.reader = asyncio.ensure_future(self._events())

    async def _events(self) -> None:
        pubsub = self.pubsub
        try:
            self.sock.setblocking(False)
            reader, writer = await asyncio.open_unix_connection(sock=self.sock, limit=MAX_LINE)
        except OSError as e:   # (the old process is gone: nothing to forward, nothing to hold)
            log.warning("handover: the line to the old process failed: %s", e)
            self._forget()
            return
        writer.write(_line({"op": "ready", "pid": os.getpid()}))
        writer.write(b"".join(self.backlog))
        self.writer, self.backlog = writer, []
        # What _receive read past "released": whole lines, then maybe the start of one
        # (the rest of which comes first on the socket).
        *buffered, partial = self.pending.split(b"\n")
        self.pending = b""
        try:
            while True:
                if buffered:
                    line = buffered.pop(0)
                else:
                    line, partial = partial + await reader.readline(), b""
                if not line:
                    break
                msg = json.loads(line)
                # The old process left the mesh: its peers hear its last events from here
                # (those applied before this process's links were up reach them by the
                # catch-up they ask for when it comes alive).
                if msg.get("op") == "event" and pubsub is not None and pubsub.apply_remote(msg["event"]) \
                        and pubsub.on_local_event is not None:
                    pubsub.on_local_event(msg["event"])
        except (OSError, ValueError) as e:
            log.warning("handover: the old process's event stream failed: %s", e)
        finally:
            writer.close()
            self._forget()
        log.info("handover done: the old process has stopped")

    def _forget(self) -> None:
        self.backlog = []
        if self.pubsub is not None and self.forward_back in self.pubsub.on_delivered:
            self.pubsub.on_delivered.remove(self.forward_back)


async def _apply_events(reader: asyncio.StreamReader, pubsub) -> None:
    """In the old process while it drains: the events the next process forwards (those it
    has already are skipped by apply_remote)."""
    try:
        while line := await reader.readline():
            msg = json.loads(line)
            if msg.get("op") == "event":
                pubsub.apply_remote(msg["event"])
    except (OSError, ValueError) as e:
        log.warning("handover: the next process's event stream failed: %s", e)


def send_sockets(raw: socket.socket, names: list[str], fds: list[int]) -> None:
    """The "sockets" message: the names, then the descriptors in messages of at most
    MAX_FDS (the ones after the first carry a space)."""
    for i in range(0, max(len(fds), 1), MAX_FDS):
        socket.send_fds(raw, [b" " if i else _line({"op": "sockets", "names": names})], fds[i:i + MAX_FDS])


def _receive(path: Path) -> tuple[socket.socket, dict, list[int], bytes]:
    """Blocking (run in a thread): connect, ask, take the sockets, wait for ``released``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as e:
        sock.close()
        raise TakeoverFailed(f"no running node to take over at {path}: {e.strerror or e}") from None
    sock.sendall(_line({"op": "takeover", "pid": os.getpid(), "version": __version__}))
    data, fds, _, _ = socket.recv_fds(sock, 65536, MAX_FDS)
    buf = data
    while b"\n" not in buf:
        more = sock.recv(65536)
        if not more:
            raise TakeoverFailed("the running node closed the handover before sending its sockets")
        buf += more
    head, _, buf = buf.partition(b"\n")
    sockets = json.loads(head)
    while sockets.get("op") == "sockets" and len(fds) < len(sockets["names"]):   # (MAX_FDS a message)
        more, got, _, _ = socket.recv_fds(sock, 1, MAX_FDS)
        if not got:
            break
        buf, fds = buf + more, fds + got
    if sockets.get("op") != "sockets" or len(sockets["names"]) != len(fds):
        raise TakeoverFailed(f"unexpected handover message {head[:200]!r}")
    while True:
        while b"\n" not in buf:
            more = sock.recv(1 << 20)
            if not more:
                raise TakeoverFailed("the running node closed the handover before releasing")
            buf += more
        line, _, buf = buf.partition(b"\n")
        msg = json.loads(line)
        if msg.get("op") == "released":
            return sock, {"names": sockets["names"], **msg}, fds, buf


async def take_over(node) -> Successor:
    """The new process's side, before its node starts: takes the running node's
    listening sockets (its kits then serve them) and its pub/sub history."""
    path = node.cfg.path(SOCKET)
    sock, got, fds, rest = await asyncio.get_running_loop().run_in_executor(None, _receive, path)
    for name, fd in zip(got["names"], fds, strict=True):
        kit.inherited_sockets[name] = socket.socket(fileno=fd)
    if got["pubsub"] is not None and node.pubsub is not None:
        node.pubsub.restore(got["pubsub"])
    node.services["release"].carried = got["carry"] or {}
    if node.mesh is not None and got["mesh_seeds"]:   # (read when the mesh starts)
        mc = node.mesh.mc
        node.mesh.mc = dataclasses.replace(mc, seeds=[*mc.seeds, *(s for s in got["mesh_seeds"] if s not in mc.seeds)])
    log.info("took over %s from the running node", ", ".join(got["names"]) or "no sockets")
    return Successor(sock, rest, node.pubsub)   # (before the node serves: see forward_back)
