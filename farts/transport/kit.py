"""The listener kit: what every listening socket of a node shares, whatever its protocol.

A ``ListenerKit`` owns one listening socket (TLS with SNI when given a context, e.g.
``CertStore.listening``) and the connections accepted on it:

- admission (``place``): at most ``max_connections`` open, at most ``max_connections_per_ip`` from
  one address; a refusal is counted by reason;
- deadlines: one sweep on the injected clock (``clock.every``) calls
  ``conn.check_timeouts(now)`` on each connection; a connection that times out says so
  with ``kit.timeout(kind)``;
- metrics labelled by listener: open connections, refusals{reason}, timeouts{kind}.

The protocol is the caller's: any object with ``client`` (the peer's address),
``transport`` and ``check_timeouts(now)`` can be admitted. ``StreamProtocol`` is the
base for the non-HTTP listeners (DB wire, DNS over TCP): admission on connect, read
and idle deadlines, and write flow control (reading pauses while the transport is
paused, so a client that does not read its answers cannot make us queue more).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from farts.clock import Clock, Timer
from farts.metrics import Metrics

log = logging.getLogger("farts.transport")

TICK = 0.5  # seconds between deadline sweeps; deadlines are as precise as this

# Listening sockets a restarted node took over from the process before it (by listener
# name, filled by farts/release/handover.py before the node starts): a kit of that name
# serves the socket it is given instead of binding a new one, so no connection is refused
# while one process hands over to the next.
inherited_sockets: dict[str, socket.socket] = {}


def close_after_timeout(transport) -> None:
    """Closes a connection its deadline ended. With bytes still unsent it is aborted: the
    client is not reading (that may be why it timed out), so a graceful close would wait
    for it forever and the connection would keep its place in the listener's limits."""
    if transport.get_write_buffer_size():
        transport.abort()
    else:
        transport.close()


class ConnectionStats:
    """The connection metrics of one kind of listener (``prefix``: farts_http, farts_db...),
    shared by its kits and labelled by listener name."""

    def __init__(self, metrics: Metrics, prefix: str, what: str = "client") -> None:
        self.kits: list[ListenerKit] = []
        self.refused = metrics.counter(
            f"{prefix}_connections_refused_total", "Connections refused at accept", ("listener", "reason"))
        self.timeouts = metrics.counter(
            f"{prefix}_timeouts_total", "Connections closed by a timeout", ("listener", "kind"))
        metrics.gauge(f"{prefix}_connections_open", f"Open {what} connections",
                      lambda: {(k.name,): k.open for k in self.kits}, ("listener",))


class ListenerKit:
    def __init__(self, name: str, clock: Clock, stats: ConnectionStats, *, max_connections: int,
                 max_connections_per_ip: int, tick: float = TICK, max_handshakes: int = 1024,
                 max_handshakes_per_ip: int = 64) -> None:
        self.name = name
        self.clock = clock
        self.stats = stats
        stats.kits.append(self)
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.tick = tick
        self.connections: set = set()
        self.taken_over = 0  # connections handed to another protocol, still counted
        self.per_ip: dict[str, int] = {}
        # TLS handshakes in flight (TLS listeners), in all and by IP: see _accept_tls.
        self.max_handshakes, self.max_handshakes_per_ip = max_handshakes, max_handshakes_per_ip
        self.handshakes_per_ip: dict[str, int] = {}
        self._handshaking: set[asyncio.Task] = set()
        self._tls_sock: socket.socket | None = None
        self.now = clock.monotonic()  # as of the last sweep: a coarse clock for the hot path
        self.server: asyncio.AbstractServer | None = None
        self.address: tuple[str, int] | None = None
        self._sweep: Timer | None = None

    @property
    def accepting(self) -> bool:
        """The listening socket is open and taking connections."""
        if self._tls_sock is not None:
            return True
        return self.server is not None and self.server.is_serving()

    @property
    def open(self) -> int:
        return len(self.connections) + self.taken_over

    # -- admission ----------------------------------------------------------------
    def place(self, conn) -> str | None:
        """Takes ``conn`` in, or returns why not (counted)."""
        ip = conn.client
        n = self.per_ip.get(ip, 0)
        if self.open >= self.max_connections:
            reason = "max_connections"
        elif n >= self.max_connections_per_ip:
            reason = "max_connections_per_ip"
        else:
            self.per_ip[ip] = n + 1
            self.connections.add(conn)
            return None
        self.stats.refused.inc((self.name, reason))
        return reason

    def _unplace(self, ip: str) -> None:
        n = self.per_ip[ip] - 1
        if n:
            self.per_ip[ip] = n
        else:
            del self.per_ip[ip]

    def release(self, conn) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self._unplace(conn.client)

    def hand_over(self, conn) -> Callable[[], None]:
        """The connection now belongs to another protocol: it keeps its place in the
        limits until the returned function is called (once, when it is lost)."""
        self.connections.discard(conn)
        self.taken_over += 1
        ip = conn.client

        def release() -> None:
            self.taken_over -= 1
            self._unplace(ip)
        return release

    def timeout(self, kind: str) -> None:
        self.stats.timeouts.inc((self.name, kind))

    # -- deadlines ------------------------------------------------------------------
    def sweep(self, now: float) -> None:
        self.now = now
        for conn in list(self.connections):
            conn.check_timeouts(now)

    # -- lifetime -----------------------------------------------------------------
    async def start(self, factory: Callable[[], asyncio.BaseProtocol], host: str, port: int,
                    ssl_context: ssl.SSLContext | None = None, handshake_timeout: float | None = None,
                    sock: socket.socket | None = None, **server_options: Any) -> tuple[str, int]:
        """Listens on host:port, or on ``sock`` when given (a listening socket made by
        another process: a worker's, see farts/workers/)."""
        loop = asyncio.get_running_loop()
        # A listening socket made elsewhere: a worker's (farts/workers/), or the one the
        # process this one takes over handed over (farts/release/handover.py).
        sock = sock or inherited_sockets.pop(self.name, None)
        if ssl_context is None:
            if sock is not None:
                server_options.pop("family", None)
                self.server = await loop.create_server(factory, sock=sock, **server_options)
            else:
                self.server = await loop.create_server(factory, host, port, reuse_address=True, **server_options)
            sock = self.server.sockets[0]
        else:
            sock = self._tls_sock = sock or socket.create_server(
                (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                backlog=server_options.get("backlog", 100))
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._accept_tls, factory, ssl_context, handshake_timeout)
        self.address = sock.getsockname()[:2]
        self._sweep = self.clock.every(self.tick, self.sweep)
        return self.address

    # -- TLS: accepted here, so that handshakes in flight are counted by IP -------------
    def _accept_tls(self, factory, ctx: ssl.SSLContext, timeout: float | None) -> None:
        """The listening socket is readable: each new connection is counted as a handshake
        in flight (for the listener and for its IP; over either limit it is closed at
        once, counted) until its handshake ends; then its protocol is made as on any
        listener. A loop server would start the handshake before the protocol could see
        the peer's address."""
        sock = self._tls_sock
        for _ in range(64):   # (then the loop's other work, then more)
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:   # EMFILE and the like: the next readable event retries
                log.warning("%s: accept failed: %s", self.name, e)
                return
            ip = addr[0]
            reason = self._start_handshake(ip)
            if reason is not None:
                self.stats.refused.inc((self.name, reason))
                conn.close()
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.ensure_future(self._handshake(conn, ip, factory, ctx, timeout))
            self._handshaking.add(task)
            task.add_done_callback(self._handshaking.discard)

    def _start_handshake(self, ip: str) -> str | None:
        n = self.handshakes_per_ip.get(ip, 0)
        if len(self._handshaking) >= self.max_handshakes:
            return "max_handshakes"
        if n >= self.max_handshakes_per_ip:
            return "max_handshakes_per_ip"
        self.handshakes_per_ip[ip] = n + 1
        return None

    async def _handshake(self, conn: socket.socket, ip: str, factory, ctx, timeout) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                factory, conn, ssl=ctx, ssl_handshake_timeout=timeout)
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as e:
            self.stats.refused.inc((self.name, "tls_handshake"))
            log.debug("%s: TLS handshake from %s failed: %s", self.name, ip, e)
            conn.close()
        finally:
            n = self.handshakes_per_ip[ip] - 1
            if n:
                self.handshakes_per_ip[ip] = n
            else:
                del self.handshakes_per_ip[ip]

    def listening_socket(self) -> socket.socket | None:
        """The listening socket (to hand to the next process), or None when closed."""
        if self._tls_sock is not None:
            return self._tls_sock
        return self.server.sockets[0] if self.server is not None and self.server.sockets else None

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()
        if self._tls_sock is not None:
            asyncio.get_running_loop().remove_reader(self._tls_sock.fileno())
            self._tls_sock.close()
            self._tls_sock = None
            for task in list(self._handshaking):
                task.cancel()

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self.stop_accepting()
        if self.server is not None:
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.close()
            await self.server.wait_closed()


class StreamProtocol(asyncio.Protocol):
    """A byte-stream connection of a kit (not HTTP: connection.py has its own states).

    Subclasses implement ``received(data)``, say through ``partial()`` when they hold
    part of a message and through ``busy()`` when they are answering, and call
    ``done_reply()`` after answering. The deadlines, counted from the last byte in or
    answer out: a partial message for ``read_timeout`` ("read"), nothing in progress
    for ``idle_timeout`` ("idle"), answers the client does not read for
    ``idle_timeout`` ("stalled"). ``writable()`` is called when a paused transport
    takes data again.
    """

    def __init__(self, kit: ListenerKit, idle_timeout: float, read_timeout: float) -> None:
        self.kit = kit
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.admitted = False
        self.closing = False
        self.write_paused = False
        self.read_paused = 0        # bit set of reasons; reading resumes when none is left
        self.last_activity = kit.now

    # -- asyncio side ---------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else "unix"
        self.last_activity = self.kit.now
        reason = self.kit.place(self)
        if reason is not None:
            self.closing = True
            self.refused(reason)
            transport.abort()
            return
        self.admitted = True
        self.accepted()

    def connection_lost(self, exc) -> None:
        self.closing = True
        if self.admitted:
            self.admitted = False
            self.kit.release(self)
            self.lost()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.kit.now
        self.received(data)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.pause_reading(WRITE)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.last_activity = self.kit.now
        self.resume_reading(WRITE)
        if not self.closing:
            self.writable()

    def pause_reading(self, reason: int) -> None:
        if not self.read_paused and not self.closing and self.transport is not None:
            self.transport.pause_reading()
        self.read_paused |= reason

    def resume_reading(self, reason: int) -> None:
        was = self.read_paused
        self.read_paused &= ~reason
        if was and not self.read_paused and not self.closing and self.transport is not None:
            self.transport.resume_reading()

    # -- deadlines (called by the kit's sweep) -------------------------------------------
    def check_timeouts(self, now: float) -> None:
        if self.closing:
            return
        quiet = now - self.last_activity
        if self.busy():
            # Answering: the request's own work has no deadline here, but a client that
            # has stopped reading its answers for idle_timeout goes.
            kind = "stalled" if self.write_paused and quiet > self.idle_timeout else None
        elif self.partial():
            kind = "read" if quiet > self.read_timeout else None
        else:
            kind = "idle" if quiet > self.idle_timeout else None
        if kind is not None:
            self.kit.timeout(kind)
            self.closing = True
            if self.transport is not None:
                close_after_timeout(self.transport)

    def done_reply(self) -> None:
        self.last_activity = self.kit.now

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    # -- for subclasses ------------------------------------------------------------
    def accepted(self) -> None:
        """The connection was admitted."""

    def refused(self, reason: str) -> None:
        """The connection is refused (counted already); it is aborted after this."""

    def lost(self) -> None:
        """An admitted connection is gone."""

    def received(self, data: bytes) -> None:
        raise NotImplementedError

    def writable(self) -> None:
        """The transport takes data again after a pause."""

    def partial(self) -> bool:
        """Part of a message has come in: the read deadline applies."""
        return False

    def busy(self) -> bool:
        """A request is being answered: no deadline applies (its own timeouts do)."""
        return False


# read pause reasons of StreamProtocol; subclasses add their own bits above these
WRITE = 1
QUEUE = 2
