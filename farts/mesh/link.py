"""Mutual-TLS TCP links between nodes: the thin asyncio side of the mesh.

Every link is TLS with a certificate on both ends, both from the cluster CA; the
node id is read from the peer's certificate (URI SAN ``farts-node:<id>``) and must
equal the id in the peer's HELLO (and, when we dialed a known member, the id we
meant to reach). Anything else is refused, logged and counted by reason.

One link per pair: the node with the smaller id dials (seeds are dialed by address
whatever their id, since their id is not known yet). If both ends still end up
with two links, both keep the one dialed by the smaller id.

Outgoing bytes go straight into the transport's buffer; the buffer is the per-peer
queue, bounded by ``queue_max_bytes``: a peer that lets it grow past that (too slow,
or stopped) is disconnected instead of growing our memory.
"""
from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from farts import pki
from farts.clock import Clock, LoopClock
from farts.mesh.frames import FrameError, FrameReader, Hello
from farts.metrics import Metrics
from farts.transport.kit import ConnectionStats, ListenerKit

# Admission of incoming links (the kit's caps): far above what a cluster needs, low
# enough that a flood of connections cannot take the node's file descriptors.
MAX_INCOMING = 4096
MAX_INCOMING_PER_IP = 256

log = logging.getLogger("farts.mesh")


def tls_contexts(ca: Path, cert: Path, key: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts that both demand a certificate from the cluster CA."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for ctx in (server, client):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        ctx.verify_mode = ssl.CERT_REQUIRED
    client.check_hostname = False  # peers are named by node id, checked against the certificate
    return server, client


def _nodelay(writer: asyncio.StreamWriter) -> None:
    # Probes and acks are small frames that must not wait for Nagle's algorithm.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class LinkStats:
    def __init__(self, metrics: Metrics) -> None:
        self.refused = metrics.counter("farts_mesh_links_refused_total",
                                       "Mesh connections refused before a link formed", ("reason",))
        self.closed = metrics.counter("farts_mesh_links_closed_total", "Mesh links closed", ("reason",))
        self.reconnects = metrics.counter("farts_mesh_link_reconnects_total",
                                          "Mesh links formed again to a peer seen before", ("peer",))
        self.frames = metrics.counter("farts_mesh_frames_total", "Mesh frames", ("peer", "direction"))
        self.bytes = metrics.counter("farts_mesh_bytes_total", "Mesh bytes (frames incl. length prefix)",
                                     ("peer", "direction"))
        self.connections = ConnectionStats(metrics, "farts_mesh", "incoming mesh")


class Incoming:
    """An accepted connection as the listener kit counts it, until it is a link or gone.
    Deadlines are the link's own (the handshake timeout, then SWIM's probes)."""

    __slots__ = ("client", "transport")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.transport = writer.transport
        peer = writer.get_extra_info("peername")
        self.client = peer[0] if peer else "unix"

    def check_timeouts(self, now: float) -> None:
        pass


class Link:
    def __init__(self, mgr: LinkManager, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 hello: Hello, frames: FrameReader, outgoing: bool, pending: list) -> None:
        self.mgr, self.reader, self.writer, self.hello, self.frames = mgr, reader, writer, hello, frames
        self.peer = hello.id
        self.outgoing = outgoing
        self.dialer = mgr.me if outgoing else hello.id
        self.closed = False
        self.done = asyncio.Event()
        self._pending = pending   # frames that came in with the HELLO
        self._out_key, self._in_key = (self.peer, "out"), (self.peer, "in")

    def send(self, data: bytes) -> bool:
        """Queues one encoded frame; False if the link is closed or had to be dropped."""
        if self.closed:
            return False
        transport = self.writer.transport
        if transport.get_write_buffer_size() + len(data) > self.mgr.queue_max_bytes:
            self.close("slow_peer")
            return False
        transport.write(data)
        stats = self.mgr.stats
        stats.frames.inc(self._out_key)
        stats.bytes.inc(self._out_key, len(data))
        return True

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.done.set()
        self.mgr.stats.closed.inc((reason,))
        if reason == "stopping":
            self.writer.close()
        else:
            if reason != "duplicate":
                log.info("mesh link to %s closed: %s", self.peer, reason)
            self.writer.transport.abort()
        self.mgr._down(self)

    async def run(self) -> None:
        stats, key = self.mgr.stats, self._in_key
        pending, self._pending = self._pending, []
        try:
            for kind, payload in pending:
                self.mgr.on_frame(self, kind, payload)
            while not self.closed:
                data = await self.reader.read(65536)
                if self.closed:   # (closed while this read waited: what came is not heard)
                    return
                if not data:
                    self.close("eof")
                    return
                stats.bytes.inc(key, len(data))
                for kind, payload in self.frames.feed(data):
                    stats.frames.inc(key)
                    self.mgr.on_frame(self, kind, payload)
                    if self.closed:
                        return
        except FrameError as e:
            log.warning("mesh link to %s: bad frame (%s), closing", self.peer, e)
            self.close(e.reason)
        except (ConnectionError, ssl.SSLError, OSError) as e:
            self.close(type(e).__name__)
        except asyncio.CancelledError:  # stopping
            self.close("stopping")
            raise


class LinkManager:
    def __init__(self, me: str, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
                 hello: Callable[[], Hello], stats: LinkStats, *, max_frame_bytes: int,
                 queue_max_bytes: int, handshake_timeout: float, reconnect_min: float,
                 reconnect_max: float, on_up: Callable[[Link], None], on_down: Callable[[Link], None],
                 on_frame: Callable[[Link, int, object], None], clock: Clock | None = None,
                 max_incoming: int = MAX_INCOMING, max_incoming_per_ip: int = MAX_INCOMING_PER_IP) -> None:
        self.me, self.server_ctx, self.client_ctx, self.hello = me, server_ctx, client_ctx, hello
        self.clock = clock = clock or LoopClock()
        self.kit = ListenerKit("mesh", clock, stats.connections, max_connections=max_incoming,
                               max_connections_per_ip=max_incoming_per_ip)
        self.stats = stats
        self.max_frame_bytes, self.queue_max_bytes = max_frame_bytes, queue_max_bytes
        self.handshake_timeout = handshake_timeout
        self.reconnect_min, self.reconnect_max = reconnect_min, reconnect_max
        self.on_up, self.on_down, self.on_frame = on_up, on_down, on_frame
        self.links: dict[str, Link] = {}
        self.seen: set[str] = set()            # peers we had a link with once (reconnect counting)
        self._dialers: dict[str, asyncio.Task] = {}   # key: node id or "seed:host:port"
        self._dial_address: dict[str, str] = {}
        self._accepting: set[asyncio.Task] = set()
        self.closing = False   # close() began: nothing is dialed or accepted any more
        self.address: tuple[str, int] | None = None
        self.own_addresses: set[str] = set()
        self._last_was_self = False

    # ---- accepting -------------------------------------------------------------

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        mgr = self

        class CountingSSLObject(ssl.SSLObject):
            # The TLS layer of an asyncio server fails handshakes out of our sight; this
            # is the one place that sees each failure (no client certificate, another CA).
            def do_handshake(self) -> None:
                try:
                    super().do_handshake()
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    raise
                except ssl.SSLError as e:
                    mgr.stats.refused.inc(("tls",))
                    log.warning("mesh: refused a connection (tls): %s", e)
                    raise

        self.server_ctx.sslobject_class = CountingSSLObject

        def stream() -> asyncio.StreamReaderProtocol:  # what asyncio.start_server builds
            return asyncio.StreamReaderProtocol(asyncio.StreamReader(), self._accepted)

        self.address = await self.kit.start(stream, host, port, self.server_ctx, self.handshake_timeout)
        return self.address

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        incoming = Incoming(writer)
        reason = self.kit.place(incoming)
        if reason is not None:
            self._refuse(writer, reason, f"{incoming.client}: {reason} reached")
            return
        task = asyncio.current_task()
        self._accepting.add(task)
        try:
            _nodelay(writer)
            link = await self._handshake(reader, writer, outgoing=False, expected=None)
            if link is not None:
                await link.run()
        except asyncio.CancelledError:  # stopping
            writer.transport.abort()
        finally:
            self._accepting.discard(task)
            self.kit.release(incoming)

    # ---- dialing -----------------------------------------------------------------

    def dial(self, key: str, address: str, expected: str | None) -> None:
        """Keeps a link to address (the member `expected`, or a seed when None) until undial(key)."""
        if self.closing:
            return
        if key in self._dialers and self._dial_address.get(key) == address:
            return
        self.undial(key)  # a member that came back on a new address
        self._dial_address[key] = address
        self._dialers[key] = asyncio.ensure_future(self._dial_loop(key, address, expected))

    def undial(self, key: str) -> None:
        task = self._dialers.pop(key, None)
        self._dial_address.pop(key, None)
        if task is not None:
            task.cancel()

    def _dialed(self, key: str) -> None:
        """A dial loop ends by itself (a seed answered, or it was this node)."""
        self._dialers.pop(key, None)
        self._dial_address.pop(key, None)

    async def _dial_loop(self, key: str, address: str, expected: str | None) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        failures = 0
        while True:
            link = self.links.get(expected) if expected else None
            if link is not None:  # the peer dialed us (a seed, or a race): wait until it goes
                await link.done.wait()
            else:
                link = await self._connect(host, int(port), expected)
                if link is None:
                    failures += 1
                    if expected is None and address in self.own_addresses:
                        self._dialed(key)  # the seed list names this node
                        return
                else:
                    failures = 0
                    if expected is None:  # a seed answered: from now on it is a member like any other
                        self._dialed(key)
                        await link.run()
                        return
                    await link.run()
            # Exponential backoff with jitter, so a restarted peer is not hit by all in step.
            delay = min(self.reconnect_max, self.reconnect_min * 2 ** min(failures, 20))
            await self._pause(random.uniform(delay / 2, delay))

    async def _pause(self, seconds: float) -> None:
        """Sleeps on the injected clock (a FakeClock's advance ends it)."""
        done = asyncio.get_running_loop().create_future()
        timer = self.clock.call_later(seconds, lambda: done.done() or done.set_result(None))
        try:
            await done
        finally:
            timer.cancel()

    async def _connect(self, host: str, port: int, expected: str | None) -> Link | None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=self.client_ctx, server_hostname=host,
                                        ssl_handshake_timeout=self.handshake_timeout),
                self.handshake_timeout)
        except ssl.SSLError as e:
            self.stats.refused.inc(("tls",))
            log.warning("mesh: TLS to %s:%d failed: %s", host, port, e)
            return None
        except (TimeoutError, ConnectionError, OSError):
            return None
        _nodelay(writer)
        try:
            link = await self._handshake(reader, writer, outgoing=True, expected=expected)
        except asyncio.CancelledError:   # stopping: the connection goes too
            writer.transport.abort()
            raise
        if link is None and self._last_was_self:
            self.own_addresses.add(f"{host}:{port}")
        return link

    # ---- both directions ------------------------------------------------------------

    def _refuse(self, writer: asyncio.StreamWriter, reason: str, why: str) -> None:
        self.stats.refused.inc((reason,))
        log.warning("mesh: refused a connection (%s): %s", reason, why)
        writer.transport.abort()

    async def _handshake(self, reader, writer, outgoing: bool, expected: str | None) -> Link | None:
        cert_id = pki.node_id_of(writer.get_extra_info("peercert") or {})
        peer = writer.get_extra_info("peername")
        if cert_id is None:
            self._refuse(writer, "no_node_id", f"{peer}: certificate has no farts-node: URI")
            return None
        frames = FrameReader(self.max_frame_bytes)
        writer.write(self.hello().encode())
        got: list = []
        try:
            async with asyncio.timeout(self.handshake_timeout):
                while not got:
                    data = await reader.read(65536)
                    if not data:
                        self._refuse(writer, "eof", f"{peer} closed before its HELLO")
                        return None
                    got = frames.feed(data)
        except FrameError as e:
            self._refuse(writer, e.reason, f"{peer}: {e}")
            return None
        except (TimeoutError, ConnectionError, OSError, ssl.SSLError) as e:
            self._refuse(writer, "handshake", f"{peer}: {e!r}")
            return None
        hello = got[0][1]
        if hello.id != cert_id:
            self._refuse(writer, "id_mismatch", f"{peer} claims {hello.id!r}, certificate says {cert_id!r}")
            return None
        if expected is not None and hello.id != expected:
            self._refuse(writer, "unexpected_peer", f"{peer} is {hello.id!r}, we dialed {expected!r}")
            return None
        self._last_was_self = hello.id == self.me
        if self._last_was_self:
            writer.transport.abort()  # a seed list that names this node: harmless
            return None
        if self.closing:
            writer.transport.abort()
            return None
        link = Link(self, reader, writer, hello, frames, outgoing, got[1:])
        old = self.links.get(hello.id)
        if old is not None and not old.closed:
            # Both ends keep the link dialed by the smaller id (the newer one if equal).
            if link.dialer > old.dialer:
                link.closed = True
                self.stats.closed.inc(("duplicate",))
                writer.transport.abort()
                return None
            old.close("duplicate")
        self.links[hello.id] = link
        if hello.id in self.seen:
            self.stats.reconnects.inc((hello.id,))
        self.seen.add(hello.id)
        self.on_up(link)
        return link

    def _down(self, link: Link) -> None:
        if self.links.get(link.peer) is link:
            del self.links[link.peer]
            self.on_down(link)

    async def close(self) -> None:
        # A stopped node must not come back: a frame read after its "left" (a message of
        # a peer that changes a member) would dial again, and that link, from a process
        # that is going, would take the member's place in its peers' link tables (a node
        # handing over to its next process: the peers' events would go to the old one).
        self.closing = True
        for task in self._dialers.values():
            task.cancel()
        self._dialers.clear()
        for link in list(self.links.values()):
            link.close("stopping")
        for task in list(self._accepting):
            task.cancel()
        await self.kit.close()
