"""The asyncio side of the MongoDB wire endpoint: a thin Protocol around wire.WireCodec,
and DBService, which owns the store, the command set and the listening socket."""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from pathlib import Path

from farts.config import ConfigError
from farts.db import scram, wire
from farts.db.commands import Commands, Session
from farts.db.config import DBConfig
from farts.db.errors import MongoError, error_document
from farts.db.store import Store

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
        self.refused = metrics.counter("farts_db_connections_refused_total",
                                       "MongoDB connections closed on accept (db.max_connections)")
        metrics.gauge("farts_db_open_cursors", "Open MongoDB cursors", lambda: len(service.commands.cursors))
        metrics.gauge("farts_db_connections", "Open MongoDB wire connections", lambda: len(service.connections))
        metrics.gauge("farts_db_store_bytes", "Bytes used by the LMDB store", lambda: service.store.size_bytes())
        metrics.gauge("farts_db_oplog_entries", "Records in the operation log", lambda: service.store.oplog_length())
        metrics.gauge("farts_db_commits", "LMDB write transactions committed (group commits)",
                      lambda: service.store.commits)
        metrics.gauge("farts_db_committed_writes", "Write commands committed", lambda: service.store.committed_ops)
        metrics.gauge("farts_db_pool_reads", "Reads too large for the event loop, run in the thread pool",
                      lambda: service.commands.pool_reads)


class DBProtocol(asyncio.Protocol):
    def __init__(self, service: DBService) -> None:
        self.service = service
        self.codec = wire.WireCodec(service.cfg.max_message_bytes)
        self.session = Session(next(service._ids))
        self.transport: asyncio.Transport | None = None
        self.pending: collections.deque = collections.deque()
        self.busy = False
        self.paused = False          # reading paused: too many parsed requests waiting
        self.write_paused = False    # the client does not read its replies fast enough
        self.closing = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.session.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        if len(self.service.connections) >= self.service.cfg.max_connections:
            self.service.stats.refused.inc()
            log.warning("db: refusing %s: db.max_connections (%d) reached", self.session.peer,
                        self.service.cfg.max_connections)
            self.closing = True
            transport.abort()
            return
        self.service.connections.add(self)
        c = self.service.commands
        c.connections_current, c.connections_total = len(self.service.connections), c.connections_total + 1

    def connection_lost(self, exc) -> None:
        self.closing = True
        if self not in self.service.connections:
            return
        self.service.connections.discard(self)
        self.service.commands.connections_current = len(self.service.connections)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.pending.extend(self.codec.receive(data))
        self._drain()
        if len(self.pending) > MAX_PENDING and not self.paused and not self.closing:
            self.paused = True
            self.transport.pause_reading()

    def pause_writing(self) -> None:
        self.write_paused = True
        if not self.paused:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.paused and not self.closing:
            self.transport.resume_reading()
        self._drain()

    def _drain(self) -> None:
        while self.pending and not self.busy and not self.closing and not self.write_paused:
            event = self.pending.popleft()
            if isinstance(event, wire.Request):
                self._request(event)
            elif isinstance(event, wire.BadRequest):
                self._bad(event, close=False)
            else:
                self._bad(event, close=True)
        if self.paused and len(self.pending) < MAX_PENDING // 2 and not self.closing:
            self.paused = False
            if not self.write_paused:
                self.transport.resume_reading()

    def _request(self, req: wire.Request) -> None:
        svc = self.service
        started = time.perf_counter()
        name = "?"
        try:
            cmd = svc.commands.parse(req.body, req.sequences)
            name = cmd.name
            if req.op_code == wire.OP_QUERY and name not in LEGACY_HANDSHAKE:
                raise MongoError(352, "UnsupportedOpQueryCommand", f"Unsupported OP_QUERY command: {name}. "
                                 "OP_QUERY serves only the isMaster handshake; the client driver may require an upgrade.")
            result = svc.commands.run(self.session, cmd)
        except MongoError as e:
            result = e
        except Exception as e:  # noqa: BLE001 - a bug answers an error, never kills the connection
            log.exception("db command %s failed", name)
            result = MongoError(1, "InternalError", f"internal error: {type(e).__name__}")
        if type(result) is not dict and not isinstance(result, MongoError):  # a coroutine
            self.busy = True
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
        self.busy = False
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
            data = wire.encode_answer(req.op_code, req.request_id, result, compressor)
        except Exception as e:  # noqa: BLE001 - e.g. a document too deep to encode
            log.warning("db reply to %s not encodable: %s", label, e)
            data = wire.encode_answer(req.op_code, req.request_id, error_document(
                MongoError(10334, "BSONObjectTooLarge", f"reply cannot be encoded: {e}")))
        self.transport.write(data)

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
                 source: str = "<config>") -> None:
        self.cfg = cfg
        self.data_dir = data_dir
        self.node_id = node_id
        self.metrics = metrics
        self.connections: set[DBProtocol] = set()
        self._ids = itertools.count(1)
        self._server: asyncio.AbstractServer | None = None
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

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.cfg
        creds = await loop.run_in_executor(None, lambda: {
            u.name: scram.make_credential(u.name, u.password, u.tenant) for u in cfg.users})
        self.store = Store(self.data_dir, self.node_id, sync=cfg.sync, map_size=cfg.map_size,
                           max_indexes=cfg.max_indexes, display_ns=display_ns)
        self.commands = Commands(self.store, node_id=self.node_id, auth=cfg.auth, credentials=creds,
                                 max_message_bytes=cfg.max_message_bytes, metrics=self.metrics)
        self.stats = DBStats(self.metrics, self)
        try:
            self._server = await loop.create_server(lambda: DBProtocol(self), cfg.host, cfg.port)
        except OSError as e:
            self.store.close()
            raise OSError(e.errno, f"db: cannot listen on {cfg.host}:{cfg.port}: {e.strerror}") from None

    @property
    def address(self) -> tuple[str, int]:
        return self._server.sockets[0].getsockname()[:2]

    def url(self) -> str:
        host, port = self.address
        return f"mongodb://{'[' + host + ']' if ':' in host else host}:{port}/"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self.connections):
                conn.transport.close()
            await self._server.wait_closed()
        if self.store is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.store.close)
