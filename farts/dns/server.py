"""The DNS service: UDP and TCP listeners around the Responder, plus its geo index.

The asyncio protocols are thin: bytes from a socket go to ``Responder.answer`` and the
reply goes back. TCP carries the two-byte length prefix of RFC 1035 §4.2.2, several
queries per connection; its listener is the shared listener kit (connection limits,
idle and read deadlines, write back-pressure).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable

from farts.clock import Clock, LoopClock
from farts.config import Limits
from farts.dns.config import DNSConfig
from farts.dns.geoindex import GeoSource, default_database
from farts.dns.responder import Responder
from farts.dns.rrl import RateLimiter
from farts.dns.zone import Zone
from farts.members import MemberMap
from farts.metrics import Metrics
from farts.transport.kit import ConnectionStats, ListenerKit, StreamProtocol

try:
    from fast.dnsloop import UDPFastPath
except ImportError:   # a platform without recvmmsg/sendmmsg: asyncio handles UDP
    UDPFastPath = None

log = logging.getLogger("farts.dns")

REPLY_BATCH = 64 * 1024  # TCP reply bytes written at once before back-pressure is checked


def _sum_labels(replayed: dict, keys) -> dict:
    out: dict = {}
    for label, hits in replayed.items():
        for key in keys(label):
            out[key] = out.get(key, 0) + hits
    return out


def _packed(host: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host.split("%", 1)[0])


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, responder: Responder, clock: Clock) -> None:
        self.responder = responder
        self.clock = clock
        self.transport = None
        self._hosts: dict[str, bytes] = {}

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        started = time.perf_counter()
        hosts = self._hosts
        client = hosts.get(addr[0])
        if client is None:
            if len(hosts) > 10_000:
                hosts.clear()
            client = hosts[addr[0]] = _packed(addr[0])
        out = self.responder.answer(data, client, False, self.clock.monotonic())
        if out is not None:
            self.transport.sendto(out, addr)
        self.responder.stats.latency.observe(time.perf_counter() - started)

    def error_received(self, exc) -> None:   # ICMP errors for earlier replies: nothing to do
        log.debug("udp error: %s", exc)


class _TCP(StreamProtocol):
    """DNS over TCP on the server's listener kit. Replies go out in batches of at most
    REPLY_BATCH bytes; while the transport is paused (a client that does not read its
    answers) no further query is answered and reading stops, so what waits for such a
    client is bounded by the transport's buffer plus one batch."""

    def __init__(self, server: DNSServer) -> None:
        timeout = server.cfg.tcp_idle_timeout
        super().__init__(server.kit, timeout, timeout)
        self.server = server
        self.buf = bytearray()
        self.packed = b""

    def accepted(self) -> None:
        self.packed = _packed(self.client)

    def refused(self, reason: str) -> None:
        self.server.responder.stats.dropped.inc(("tcp_limit",))

    def partial(self) -> bool:
        return bool(self.buf)

    def busy(self) -> bool:
        return self.write_paused

    def received(self, data: bytes) -> None:
        self.buf += data
        self._answer()

    def writable(self) -> None:
        self._answer()

    def _answer(self) -> None:
        buf = self.buf
        responder = self.server.responder
        out = []
        size = 0
        while len(buf) >= 2 and not self.write_paused and not self.closing:
            n = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + n:
                break
            started = time.perf_counter()
            reply = responder.answer(bytes(buf[2:2 + n]), self.packed, True, 0.0)  # (TCP: not rate limited)
            del buf[:2 + n]
            if reply is not None:
                out.append(len(reply).to_bytes(2, "big") + reply)
                size += len(reply) + 2
            responder.stats.latency.observe(time.perf_counter() - started)
            if size >= REPLY_BATCH:
                self._send(out)
                out, size = [], 0
        if out:
            self._send(out)

    def _send(self, out: list) -> None:
        self.transport.write(b"".join(out))  # may pause writing: the loop above then stops
        self.done_reply()


class DNSServer:
    """One node's DNS: zone from the config, nodes from ``members``, geo index from the file."""

    def __init__(self, cfg: DNSConfig, members: MemberMap, metrics: Metrics | None = None,
                 source: str = "<config>", geo: GeoSource | None = None, fast_udp: bool = True, *,
                 limits: Limits | None = None, clock: Clock | None = None, listen: bool = True) -> None:
        """``fast_udp``: UDP through fast.dnsloop (recvmmsg batches, replies cached in C);
        False: a plain asyncio datagram endpoint (same answers, a fraction of the rate).
        ``limits``: the node's [limits] (the per-IP cap of TCP connections)."""
        self.clock = clock = clock or LoopClock()
        self.cfg = cfg
        self.members = members
        self.fast_udp = fast_udp and UDPFastPath is not None
        self.fast: UDPFastPath | None = None
        self._udp_sock: socket.socket | None = None
        self.metrics = metrics or Metrics()
        self.zone = Zone(cfg, source)
        self.geo = geo or GeoSource(cfg.geoip_database or default_database(), cfg.rebuild_interval,
                                    clock=clock)
        self.rrl = RateLimiter(cfg.rrl_rate, cfg.rrl_burst, cfg.rrl_slip)
        self.responder = Responder(self.zone, members, self.geo, cfg.default_region, self.rrl, self.metrics,
                                   cfg.load_threshold)
        self.kit = ListenerKit("dns", clock, ConnectionStats(self.metrics, "farts_dns_tcp", "DNS over TCP"),
                               max_connections=cfg.max_tcp_connections,
                               max_connections_per_ip=(limits or Limits()).max_connections_per_ip)
        self.connections = self.kit.connections
        self._udp = None
        self._first_build = None
        self.address: tuple[str, int] | None = None
        self.listen = listen
        # fn(name, values) after each run-time TXT change (the workers' copies follow it)
        self.on_txt: list[Callable[[str, list[str]], None]] = []
        m = self.metrics
        m.gauge("farts_dns_index_age_seconds", "Seconds since the geo index was built",
                lambda: clock.wall() - self.geo.current.built_at if self.geo.current else -1)
        m.gauge("farts_dns_index_ranges", "Address ranges in the geo index", self._ranges, ("family",))
        m.gauge("farts_dns_index_bytes", "Bytes of the geo index tables",
                lambda: self.geo.current.index.nbytes if self.geo.current else 0)
        m.gauge("farts_dns_index_builds", "Geo index builds (ok, failed)",
                lambda: {("ok",): self.geo.version, ("failed",): self.geo.failures}, ("result",))

    def _ranges(self) -> dict:
        if self.geo.current is None:
            return {("ipv4",): 0, ("ipv6",): 0}
        n4, n6 = self.geo.current.index.ranges
        return {("ipv4",): n4, ("ipv6",): n6}

    async def start(self, wait_for_index: bool = False,
                    sockets: tuple[socket.socket, socket.socket] | None = None) -> None:
        """Binds UDP and TCP on the same port (the UDP port when cfg.port is 0), or serves
        on ``sockets`` (UDP, TCP listening), made by another process: a worker's
        (farts/workers/). With ``listen`` false (the node process of a node whose workers
        answer) it serves nothing and builds no index: it keeps the zone's run-time TXT
        records, which ``on_txt`` hands on."""
        if not self.listen:
            return
        host = self.cfg.host
        if sockets is not None:
            host, port = sockets[0].getsockname()[:2]
            await self._serve(*sockets)
        # Port 0: the UDP socket picks a free port, TCP takes the same one; when TCP
        # finds it taken, try another.
        for attempt in range(0 if sockets is not None else 20 if self.cfg.port == 0 else 1):
            try:
                port = await self._bind(host, self.cfg.port)
                break
            except OSError as e:
                if attempt == 19 or self.cfg.port != 0 or e.errno != errno.EADDRINUSE:
                    raise OSError(e.errno, f"dns: cannot listen on {host}:{self.cfg.port}: {e.strerror}") from None
        self.address = (host, port)
        if self.geo.current is None:
            if wait_for_index:
                await self.geo.check()
            else:
                self._first_build = asyncio.ensure_future(self.geo.check())   # (kept: tasks are weak)
        self.geo.start()
        log.info("dns: zone %s on %s:%d (udp, tcp)", self.zone.apex.decode(), host, port)

    async def _bind(self, host: str, port: int) -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        return await self._serve(sock, None, host)

    async def _serve(self, sock: socket.socket, tcp: socket.socket | None, host: str = "") -> int:
        """Answers on the bound UDP socket ``sock`` and on TCP: the listening socket
        ``tcp``, or a new one on host and the UDP socket's port."""
        loop = asyncio.get_running_loop()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setblocking(False)
        port = sock.getsockname()[1]
        udp = None
        if not self.fast_udp:
            udp, _ = await loop.create_datagram_endpoint(lambda: _UDP(self.responder, self.clock), sock=sock)
        try:
            await self.kit.start(lambda: _TCP(self), host, port, family=sock.family, sock=tcp)
        except OSError:
            udp.close() if udp is not None else sock.close()
            raise
        if udp is None:
            self._udp_sock = sock
            self._start_fast(loop, sock)
        self._udp = udp
        return port

    def _start_fast(self, loop, sock: socket.socket) -> None:
        cfg = self.cfg
        fast = self.fast = UDPFastPath(sock.fileno(), self._miss, cfg.rrl_rate, cfg.rrl_burst, cfg.rrl_slip)
        if self.geo.current is not None:
            fast.set_geo(self.geo.current.index)
        self.geo.on_swap.append(lambda data: fast.set_geo(data.index))
        self.responder.on_nodes_change.append(fast.clear)
        stats = self.responder.stats
        stats.queries.sources.append(lambda: _sum_labels(fast.replayed(), lambda label: [label[0]]))
        stats.answers.sources.append(lambda: _sum_labels(fast.replayed(), lambda label: label[1]))
        stats.shifted.sources.append(lambda: _sum_labels(fast.replayed(), lambda label: label[2]))
        stats.rrl.sources.append(lambda: {("drop",): fast.rrl_dropped, ("slip",): fast.rrl_slipped})
        stats.dropped.sources.append(lambda: {("unparseable",): fast.dropped, ("send_failed",): fast.send_errors})
        stats.cached.sources.append(lambda: {(): fast.hits})
        loop.add_reader(fast.fileno(), fast.on_readable)   # (an epoll set of the socket: fast.dnsloop)

    def _miss(self, data: bytes, client: bytes):
        started = time.perf_counter()
        try:
            return self.responder.respond(data, client, False)
        except Exception:   # a bug must cost one query, not the batch
            log.exception("dns: answering a query failed")
            return None, None
        finally:
            self.responder.stats.latency.observe(time.perf_counter() - started)

    def set_txt(self, name: str, values: list[str]) -> bool:
        """Publishes (no values: withdraws) TXT records of a name inside the zone at run
        time, on this node (farts.dns.peer sends them to every node)."""
        if not self.zone.set_txt(name, values):
            return False
        self.responder.zone_changed()
        for fn in self.on_txt:
            fn(name, values)
        return True

    async def stop(self) -> None:
        self.geo.stop()
        if self._first_build is not None:
            self._first_build.cancel()
        self.responder.close()
        if self._udp_sock is not None:
            asyncio.get_running_loop().remove_reader(self.fast.fileno())
            self.fast.close()
            self._udp_sock.close()
        if self._udp is not None:
            self._udp.close()
        await self.kit.close()
