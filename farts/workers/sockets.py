"""The listening sockets of a node with workers, made in the node process and inherited
by each worker, and the hand-over of accepted MongoDB connections back to it.

Groups: for each listener, one SO_REUSEPORT socket per worker on one address. The kernel
spreads new connections (and, for UDP, datagrams by their 4-tuple) over the group by hash,
as nginx's ``reuseport`` does, without a shared accept queue's wake-ups. They are all
made here (so port 0 works: the first picks the port, the others bind it).

Hand-over (``HandOver``/``Adopter``): a worker accepts a MongoDB wire connection on its
socket of the "db" group and passes the connection's descriptor to the node process
(SCM_RIGHTS over a SOCK_SEQPACKET pair, one descriptor per message), which serves it as
if it had accepted it. Why this scheme: the endpoint's semantics (one writer, group
commit, cursors any connection may continue, the per-IP cap) live in the node process's
store and command set; passing the descriptor keeps all of them with no copy of a byte
and no second parser, and the node sees the client's own address. Relaying the bytes
through the worker would cost a copy each way and hide the client's address; relaying
OP_MSG frames over the IPC would need a second home for every connection's state
(authentication conversations, exhaust cursors).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

from farts.transport import kit

log = logging.getLogger("farts.workers")

BACKLOG = 4096
UDP_BUFFER = 4 << 20   # as farts/dns/server.py's own socket: a burst waits in the kernel
BATCH = 64             # accepts (or hand-overs) per readable event, then the loop's other work


def reuseport_group(name: str, host: str, port: int, n: int,
                    kind: socket.SocketKind = socket.SOCK_STREAM, joining: bool = False) -> list[socket.socket]:
    """n sockets on one address (listening, for TCP). Refuses an address some other socket
    holds (with SO_REUSEPORT on both, another process of this user could otherwise share
    it), unless ``joining`` a group this process holds."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        if port and not joining:
            with socket.socket(family, kind) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
        for _ in range(n):
            s = socket.socket(family, kind)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if kind == socket.SOCK_DGRAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
            s.bind((host, port))
            port = s.getsockname()[1]
            if kind == socket.SOCK_STREAM:
                s.listen(BACKLOG)
    except OSError as e:
        for s in socks:
            s.close()
        raise OSError(e.errno, f"{name}: cannot listen on {host}:{port}: {e.strerror}") from None
    return socks


def dns_groups(host: str, port: int, n: int) -> tuple[list[socket.socket], list[socket.socket]]:
    """UDP and TCP groups on one port (port 0: the UDP group picks it; when TCP finds it
    taken, another is tried, as farts/dns/server.py does for its own sockets)."""
    for attempt in range(20 if port == 0 else 1):
        udp = reuseport_group("dns", host, port, n, socket.SOCK_DGRAM)
        try:
            return udp, reuseport_group("dns", host, udp[0].getsockname()[1], n)
        except OSError as e:
            for s in udp:
                s.close()
            if attempt == 19 or port != 0 or e.errno != errno.EADDRINUSE:
                raise
    raise AssertionError("unreachable")


def handed_over(key: str, n: int) -> list[socket.socket] | None:
    """The listening sockets of ``key`` (http, https, dns_udp, dns_tcp, db) this process
    took over from the one it restarts (farts/release/handover.py), for n workers; None
    when there are none. From a node with workers, its group ("workers.KEY.I"): a group
    of another size is fitted, the missing sockets joined to the same address, the extra
    ones closed (what waited in them is reset). From a node without workers, its one
    listening socket (named KEY), which the n workers then share: one accept queue."""
    got = []
    while (sock := kit.inherited_sockets.pop(f"workers.{key}.{len(got)}", None)) is not None:
        got.append(sock)
    if not got:
        sock = kit.inherited_sockets.pop(key, None)
        return None if sock is None else [sock] * n
    if len(got) != n:
        log.warning("%s: %d listening sockets taken over for %d workers", key, len(got), n)
    for sock in got[n:]:
        sock.close()
    host, port = got[0].getsockname()[:2]
    return got[:n] + (reuseport_group(key, host, port, n - len(got), got[0].type, joining=True)
                      if len(got) < n else [])


def handover_pair() -> tuple[socket.socket, socket.socket]:
    """(the node's end, the worker's end)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    mine.setblocking(False)
    theirs.setblocking(False)
    return mine, theirs


class HandOver:
    """A worker's side: accepts on its "db" socket and passes each connection on.
    ``failed()`` counts a connection that could not be passed (the node process not
    reading: it is closed, the client reconnects)."""

    def __init__(self, listening: socket.socket, pair: socket.socket, failed: Callable[[], None]) -> None:
        self.listening, self.pair, self.failed = listening, pair, failed
        listening.setblocking(False)

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.listening.fileno(), self.readable)

    def readable(self) -> None:
        for _ in range(BATCH):
            try:
                conn, _ = self.listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:   # EMFILE and the like: the next readable event retries
                log.warning("db: accept failed: %s", e)
                return
            with conn:
                try:
                    socket.send_fds(self.pair, [b"c"], [conn.fileno()])
                except OSError as e:
                    log.warning("db: could not hand a connection to the node process: %s", e)
                    self.failed()

    def stop(self) -> None:
        """Stops accepting (what is queued on the socket waits for the next worker)."""
        asyncio.get_running_loop().remove_reader(self.listening.fileno())


class Adopter:
    """The node process's side of one worker's pair: each descriptor that arrives is
    handed to ``adopt(sock)`` (the DB service's)."""

    def __init__(self, pair: socket.socket, adopt: Callable[[socket.socket], None]) -> None:
        self.pair, self.adopt = pair, adopt
        asyncio.get_running_loop().add_reader(pair.fileno(), self.readable)

    def readable(self) -> None:
        for _ in range(BATCH):
            try:
                data, fds, _, _ = socket.recv_fds(self.pair, 1, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("db: hand-over channel failed: %s", e)
                self.close()
                return
            if not data and not fds:   # the worker is gone
                self.close()
                return
            for fd in fds:
                self.adopt(socket.socket(fileno=fd))

    def close(self) -> None:
        if self.pair.fileno() >= 0:
            asyncio.get_running_loop().remove_reader(self.pair.fileno())
            self.pair.close()
