"""The asyncio side of the MongoDB wire endpoint: a thin Protocol around wire.WireCodec,
and DBService, which owns the store, the command set and the listening socket."""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import socket
import time
from pathlib import Path

from farts.clock import Clock, LoopClock, Timer
from farts.config import ConfigError, Limits
from farts.db import scram, wire
from farts.db.commands import Commands, Session
from farts.db.config import DBConfig
from farts.db.errors import MongoError, error_document
from farts.db.replication import Replication
from farts.db.store import Store
from farts.peer import PeerBus
from farts.transport.kit import QUEUE, ConnectionStats, ListenerKit, StreamProtocol

log = logging.getLogger("farts.db")

SLOW_SECONDS = 0.1
LEGACY_HANDSHAKE = frozenset({"isMaster", "ismaster", "hello"})
MAX_PENDING = 64   # parsed requests queued behind a running one before reading pauses


def display_ns(ns: str) -> str:
    """Internal 'tenant$db.coll' → the 'db.coll' its tenant knows."""
    return ns.split("$", 1)[-1]


class DBStats:
    def __init__(self, metrics, service: DBService) -> None:
        self.commands = metrics.counter("farts_db_commands_total", "MongoDB commands, by name and outcome",
                                        ("command", "outcome"))
        self.latency = metrics.histogram("farts_db_command_seconds", "MongoDB command latency", ("command",))
        self.protocol_errors = metrics.counter("farts_db_protocol_errors_total",
                                               "Malformed MongoDB wire messages, by kind", ("kind",))
        self.slow = metrics.counter("farts_db_slow_commands_total", "MongoDB commands slower than 100 ms")
        self.compressed = metrics.counter("farts_db_compressed_messages_total",
                                          "MongoDB requests that came in OP_COMPRESSED", ("compressor",))
        # Refusals (db.max_connections, limits.max_connections_per_ip) and timeouts:
        # farts_db_connections_refused_total{listener,reason}, farts_db_timeouts_total.
        self.refused = service.kit.stats.refused
        metrics.gauge("farts_db_open_cursors", "Open MongoDB cursors", lambda: len(service.commands.cursors))
        metrics.gauge("farts_db_connections", "Open MongoDB wire connections", lambda: len(service.connections))
        metrics.gauge("farts_db_store_bytes", "Bytes used by the LMDB store", lambda: service.store.size_bytes())
        metrics.gauge("farts_db_oplog_entries", "Records in the operation log", lambda: service.store.oplog_length())
        metrics.gauge("farts_db_commits", "LMDB write transactions committed (group commits)",
                      lambda: service.store.commits)
        metrics.gauge("farts_db_committed_writes", "Write commands committed", lambda: service.store.committed_ops)
        metrics.gauge("farts_db_pool_reads", "Reads too large for the event loop, run in the thread pool",
                      lambda: service.commands.pool_reads)


class DBProtocol(StreamProtocol):
    """One wire connection on the service's listener kit (admission, per-IP cap, read
    and idle deadlines, write flow control)."""

    def __init__(self, service: DBService) -> None:
        limits = service.limits
        super().__init__(service.kit, limits.idle_timeout, limits.header_timeout)
        self.service = service
        cfg = service.cfg
        # Until it authenticates (auth = true), a client gets small messages, few
        # commands and little time: an unauthenticated peer cannot make the node parse
        # (and checksum) 48 MB frames or hold a connection open doing nothing useful.
        self.preauth = cfg.auth
        self.codec = wire.WireCodec(cfg.preauth_max_message_bytes if cfg.auth else cfg.max_message_bytes)
        self.preauth_commands = 0
        self.session = Session(next(service._ids))
        self.pending: collections.deque = collections.deque()
        self.running = False         # a command is being answered (off the loop, or awaited)

    def accepted(self) -> None:
        self.opened_at = self.kit.now
        peer = self.transport.get_extra_info("peername")
        self.session.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        c = self.service.commands
        c.connections_current, c.connections_total = len(self.kit.connections), c.connections_total + 1

    def refused(self, reason: str) -> None:
        log.warning("db: refusing a connection from %s: %s reached", self.client, reason)

    def lost(self) -> None:
        self.service.commands.connections_current = len(self.kit.connections)
        self.pending.clear()

    def partial(self) -> bool:
        return bool(self.codec.buffered)

    def busy(self) -> bool:
        return self.running or bool(self.pending)

    def received(self, data: bytes) -> None:
        self.pending.extend(self.codec.receive(data))
        self._drain()
        if len(self.pending) > MAX_PENDING:
            self.pause_reading(QUEUE)

    def writable(self) -> None:
        self._drain()

    def _drain(self) -> None:
        while self.pending and not self.running and not self.closing and not self.write_paused:
            event = self.pending.popleft()
            if isinstance(event, wire.Request):
                self._request(event)
            elif isinstance(event, wire.BadRequest):
                self._bad(event, close=False)
            else:
                self._bad(event, close=True)
        if len(self.pending) < MAX_PENDING // 2:
            self.resume_reading(QUEUE)

    def check_timeouts(self, now: float) -> None:
        if self.preauth and not self.closing and now - self.opened_at > self.service.cfg.auth_timeout:
            self.kit.timeout("auth")
            self._refuse_unauthenticated("no authentication within db.auth_timeout")
            return
        super().check_timeouts(now)

    def _refuse_unauthenticated(self, why: str) -> None:
        self.service.stats.protocol_errors.inc(("PreAuthLimit",))
        log.warning("db: closing %s: %s", self.session.peer, why)
        self.closing = True
        self.pending.clear()
        self.transport.close()

    def _request(self, req: wire.Request) -> None:
        svc = self.service
        if self.preauth:
            self.preauth_commands += 1
            if self.preauth_commands > svc.cfg.preauth_max_commands:
                self._reply(req, "?", time.perf_counter(), MongoError(
                    13, "Unauthorized", "too many commands before authentication (db.preauth_max_commands)"))
                self._refuse_unauthenticated("too many commands before authentication")
                return
        started = time.perf_counter()
        name = "?"
        try:
            cmd = svc.commands.parse(req.body, req.sequences)
            name = cmd.name
            if req.op_code == wire.OP_QUERY and name not in LEGACY_HANDSHAKE:
                raise MongoError(352, "UnsupportedOpQueryCommand", f"Unsupported OP_QUERY command: {name}. "
                                 "OP_QUERY serves only the isMaster handshake; the client driver may require an upgrade.")
            if svc.replication is not None:
                result = svc.replication.run(self.session, cmd, lambda: svc.commands.run(self.session, cmd))
            else:
                result = svc.commands.run(self.session, cmd)
        except MongoError as e:
            result = e
        except Exception as e:  # noqa: BLE001 - a bug answers an error, never kills the connection
            log.exception("db command %s failed", name)
            result = MongoError(1, "InternalError", f"internal error: {type(e).__name__}")
        if type(result) is not dict and not isinstance(result, MongoError):  # a coroutine
            self.running = True
            asyncio.ensure_future(self._finish(req, name, started, result))
        else:
            self._reply(req, name, started, result)

    async def _finish(self, req, name, started, awaitable) -> None:
        try:
            result = await awaitable
        except MongoError as e:
            result = e
        except Exception as e:  # noqa: BLE001
            log.exception("db command %s failed", name)
            result = MongoError(1, "InternalError", f"internal error: {type(e).__name__}")
        self.running = False
        self._reply(req, name, started, result)
        self._drain()

    def _reply(self, req: wire.Request, name: str, started: float, result) -> None:
        stats = self.service.stats
        label = name if name in self.service.commands.handlers else "unknown"
        if isinstance(result, MongoError):
            outcome = "error"
            result = error_document(result)
        else:
            outcome = "write_error" if result.get("writeErrors") else "ok"
        stamp = b""
        if self.service.replication is not None and isinstance(result, dict):
            stamp = self.service.replication.stamp(result)
        elapsed = time.perf_counter() - started
        stats.commands.inc((label, outcome))
        stats.latency.observe(elapsed, (label,))
        if elapsed > SLOW_SECONDS:
            stats.slow.inc()
            log.info("slow db command %s: %.0f ms from %s", label, elapsed * 1000, self.session.peer)
        if req.compressor:
            stats.compressed.inc((req.compressor,))
        if req.more_to_come or self.closing:
            return
        compressor = req.compressor if req.compressor in self.session.compression else None
        try:
            data = wire.encode_answer(req.op_code, req.request_id, result, compressor, stamp)
        except Exception as e:  # noqa: BLE001 - e.g. a document too deep to encode
            log.warning("db reply to %s not encodable: %s", label, e)
            data = wire.encode_answer(req.op_code, req.request_id, error_document(
                MongoError(10334, "BSONObjectTooLarge", f"reply cannot be encoded: {e}")))
        self.transport.write(data)
        self.done_reply()
        if self.preauth and self.session.user is not None:  # authenticated: the full limits
            self.preauth = False
            self.codec.max_message_bytes = self.service.cfg.max_message_bytes

    def _bad(self, event, close: bool) -> None:
        self.service.stats.protocol_errors.inc((event.code_name,))
        log.warning("db: bad message from %s: %s%s", self.session.peer, event.message,
                    " (closing)" if close else "")
        if event.request_id is not None:
            doc = error_document(MongoError(event.code, event.code_name, event.message))
            op = event.op_code if event.op_code in (wire.OP_MSG, wire.OP_QUERY) else wire.OP_MSG
            self.transport.write(wire.encode_answer(op, event.request_id, doc))
        if close:
            self.closing = True
            self.pending.clear()
            self.transport.close()


class DBService:
    """The MongoDB wire endpoint of one node (start/stop/address, as node.py expects)."""

    def __init__(self, cfg: DBConfig, data_dir: Path, node_id: str, metrics, tenants: set[str] | None = None,
                 source: str = "<config>", *, limits: Limits | None = None, clock: Clock | None = None,
                 listen: bool = True) -> None:
        """``limits``: the node's [limits] (per-IP cap, header_timeout as the read
        deadline of a message, idle_timeout); ``db.max_connections`` caps the total.
        ``listen`` false: the workers accept and hand the connections over (``adopt``,
        farts/workers/sockets.py)."""
        self.cfg = cfg
        self.data_dir = data_dir
        self.node_id = node_id
        self.metrics = metrics
        self.limits = limits or Limits()
        self.clock = clock or LoopClock()
        self.kit: ListenerKit | None = None
        self.listen = listen
        self._sweep: Timer | None = None   # the kit's deadlines, when it does not listen
        self._ids = itertools.count(1)
        seen = set()
        for i, u in enumerate(cfg.users):
            if u.name in seen:
                raise ConfigError(f"{source}: db.users[{i}].name: duplicate user {u.name!r}")
            seen.add(u.name)
            if tenants is not None and u.tenant not in tenants:
                raise ConfigError(f"{source}: db.users[{i}].tenant: no tenant named {u.tenant!r} "
                                  f"(known: {', '.join(sorted(tenants)) or 'none'})")
        if cfg.auth and not cfg.users:
            raise ConfigError(f"{source}: db.auth: true needs at least one entry in db.users")
        self.store: Store | None = None
        self.commands: Commands | None = None
        self.stats: DBStats | None = None
        self.replication: Replication | None = None

    def replicate(self, bus: PeerBus, seeded: bool = True) -> Replication:
        """The node has a mesh: this database is a replica of the deployment's, replicated
        over ``bus`` (called before ``start``; the returned object stops with the peers).
        ``seeded``: the mesh has seeds to dial (else this node starts alone)."""
        self.replication = Replication(self.node_id, bus, self.clock, self.cfg, self.metrics, seeded)
        return self.replication

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        creds = await loop.run_in_executor(None, lambda: {
            u.name: scram.make_credential(u.name, u.password, u.tenant) for u in cfg.users})
        self.store = Store(self.data_dir, self.node_id, sync=cfg.sync, map_size=cfg.map_size,
                           max_indexes=cfg.max_indexes, display_ns=display_ns,
                           replicated=self.replication is not None)
        self.commands = Commands(self.store, node_id=self.node_id, auth=cfg.auth, credentials=creds,
                                 max_message_bytes=cfg.max_message_bytes, metrics=self.metrics,
                                 clock=self.clock)
        self.kit = ListenerKit("db", self.clock, ConnectionStats(self.metrics, "farts_db", "MongoDB wire"),
                               max_connections=cfg.max_connections,
                               max_connections_per_ip=self.limits.max_connections_per_ip)
        self.stats = DBStats(self.metrics, self)
        if self.replication is not None:
            self.replication.attach(self.store, self.commands)
        if not self.listen:
            self._sweep = self.clock.every(self.kit.tick, self.kit.sweep)
            return
        try:
            await self.kit.start(lambda: DBProtocol(self), cfg.host, cfg.port)
        except OSError as e:
            self.store.close()
            raise OSError(e.errno, f"db: cannot listen on {cfg.host}:{cfg.port}: {e.strerror}") from None

    @property
    def connections(self) -> set[DBProtocol]:
        return self.kit.connections

    @property
    def address(self) -> tuple[str, int]:
        return self.kit.address

    def url(self) -> str:
        host, port = self.address
        return f"mongodb://{'[' + host + ']' if ':' in host else host}:{port}/"

    def adopt(self, sock: socket.socket) -> None:
        """Serves a connection a worker accepted, as one accepted here (admission and the
        per-IP cap by the client's address included)."""
        def adopted(task: asyncio.Task) -> None:
            if not task.cancelled() and task.exception() is not None:
                log.warning("db: a connection handed over by a worker failed: %s", task.exception())
                sock.close()
        asyncio.ensure_future(asyncio.get_running_loop().connect_accepted_socket(
            lambda: DBProtocol(self), sock)).add_done_callback(adopted)

    async def stop(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            for conn in list(self.kit.connections):   # (a listening kit closes its own)
                conn.transport.close()
        if self.kit is not None:
            await self.kit.close()
        if self.store is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.store.close)
