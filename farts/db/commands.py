"""The command set: a parsed command in, a reply document (or an awaitable of one) out.

Reads run on the event loop while they stay small (a budget of examined documents)
and are rerun in the thread pool when they do not; writes go to the store's writer
thread and come back after their commit. Namespaces are mapped per tenant:
client database "app" of tenant "demo" is "demo$app" inside ("$" cannot appear in a
MongoDB database name, so no client name can reach another tenant's).
"""
from __future__ import annotations

import asyncio
import collections
import datetime
import itertools
import logging
import os
from dataclasses import dataclass, field, replace

import bson
from bson.binary import Binary
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument

from farts.clock import Clock, LoopClock
from farts.db import collation, output, scram, validation, views
from farts.db.aggregate import run_pipeline
from farts.db.errors import MongoError
from farts.db.keys import path_values
from farts.db.ordering import parse_sort_spec, sort_documents, sort_key
from farts.db.projection import project
from farts.db.query import compile_filter
from farts.db.store import Collection, Index, ScanStats, Store, TooBig
from farts.db.update import Update, check_id_field, field_changes, type_name, upsert_seed
from farts.db.variables import (
    bind_filter,
    bind_pipeline,
    bind_projection,
    command_variables,
    filter_reads_variables,
    mentions_variables,
)

log = logging.getLogger("farts.db")

MAX_WIRE_VERSION = 21   # MongoDB 7.0: within what pymongo 4.x and the Node 7.x driver accept
MAX_BSON_OBJECT = 16 * 1024 * 1024
DEFAULT_BATCH = 101
MAX_RETRYABLE_SESSIONS = 100_000   # sessions whose last retryable write is remembered
LOOP_READ_BUDGET = 256  # documents a read may examine on the event loop before moving to the pool
# _id values looked up by key directly (the general path handles operators, arrays, regexes).
_ID_POINT_TYPES = frozenset({int, str, ObjectId, Int64, float, bool, datetime.datetime})
HANDSHAKE = frozenset({"hello", "isMaster", "ismaster", "saslStart", "saslContinue"})
# Options that change what a command answers: refused rather than ignored (hint, maxTimeMS,
# comment, allowDiskUse and the like only change how, and are ignored).
_UNSUPPORTED_OPTIONS = ("min", "max", "returnKey", "showRecordId", "tailable", "awaitData")
# {aggregate: 1} stages that need a replica set's or a server's internals.
_DB_LEVEL_STAGES = ("$currentOp", "$listLocalSessions", "$changeStream", "$queryStats", "$listSessions")
# MongoDB's generic arguments: any command may carry them besides its own fields.
_GENERIC_FIELDS = frozenset({
    "$db", "lsid", "txnNumber", "$clusterTime", "$readPreference", "readConcern", "writeConcern",
    "maxTimeMS", "comment", "apiVersion", "apiStrict", "apiDeprecationErrors", "$audit", "$client",
    "autocommit", "startTransaction", "stmtId", "clientOperationKey", "txnRetryCounter",
    "mayBypassWriteBlocking", "$configTime", "$topologyTime", "$configServerState", "$queryOptions"})
_WRITE_FIELDS = frozenset({"ordered", "bypassDocumentValidation", "stmtIds", "isTimeseriesNamespace",
                           "collectionUUID"})
_CREATE_FIELDS = frozenset({"capped", "size", "max", "timeseries", "clusteredIndex", "expireAfterSeconds",
                            "validator", "validationLevel", "validationAction", "viewOn", "pipeline", "collation",
                            "storageEngine", "indexOptionDefaults", "idIndex", "changeStreamPreAndPostImages",
                            "encryptedFields"})
_COLLMOD_FIELDS = frozenset({"validator", "validationLevel", "validationAction", "viewOn", "pipeline"})
_UNSUPPORTED_COLLMOD = ("index", "expireAfterSeconds", "changeStreamPreAndPostImages", "timeseries",
                        "cappedSize", "cappedMax", "recordPreImages", "clusteredIndex", "dryRun")
# The fields of each command and statement a 7.0 server parses (its IDL is strict: any other
# field is refused with 40415, so a misspelt option never silently does nothing).
_COMMAND_FIELDS = {
    "find": _GENERIC_FIELDS | {
        "find", "filter", "projection", "sort", "hint", "skip", "limit", "batchSize", "singleBatch",
        "let", "collation", "allowDiskUse", "min", "max", "returnKey", "showRecordId", "tailable",
        "oplogReplay", "noCursorTimeout", "awaitData", "allowPartialResults", "readOnce",
        "allowSpeculativeMajorityRead", "$_requestResumeToken", "$_resumeAfter", "term"},
    "getMore": _GENERIC_FIELDS | {"getMore", "collection", "batchSize", "term", "lastKnownCommittedOpTime"},
    "insert": _GENERIC_FIELDS | _WRITE_FIELDS | {"insert", "documents"},
    "update": _GENERIC_FIELDS | _WRITE_FIELDS | {"update", "updates", "let"},
    "delete": _GENERIC_FIELDS | _WRITE_FIELDS | {"delete", "deletes", "let"},
    "findAndModify": _GENERIC_FIELDS | {
        "findAndModify", "findandmodify", "query", "fields", "sort", "remove", "update", "new",
        "upsert", "bypassDocumentValidation", "collation", "arrayFilters", "hint", "let", "batchSize"},
    # One statement of update/delete ('sort' in an update statement is 8.0's, refused by 7.0).
    "update.updates": frozenset({"q", "u", "c", "upsert", "multi", "arrayFilters", "hint", "collation",
                                 "sampleId", "upsertSupplied"}),
    "delete.deletes": frozenset({"q", "limit", "hint", "collation", "sampleId"}),
    "count": _GENERIC_FIELDS | {"count", "query", "limit", "skip", "hint", "collation", "fields", "sampleId",
                                "mirrored", "encryptionInformation"},
    "distinct": _GENERIC_FIELDS | {"distinct", "key", "query", "collation", "hint", "sampleId", "mirrored"},
    "aggregate": _GENERIC_FIELDS | {
        "aggregate", "pipeline", "explain", "allowDiskUse", "cursor", "bypassDocumentValidation", "collation",
        "hint", "let", "needsMerge", "fromMongos", "fromRouter", "exchange", "runtimeConstants",
        "isMapReduceCommand", "collectionUUID", "encryptionInformation", "isClusterQueryWithoutShardKeyCmd",
        "passthroughToShard", "$_requestReshardingResumeToken"},
    "create": _GENERIC_FIELDS | _CREATE_FIELDS | {"create"},
    "collMod": _GENERIC_FIELDS | _COLLMOD_FIELDS | {"collMod"},
}
_TYPED_FIELDS = (("let", dict, "object"), ("c", dict, "object"), ("arrayFilters", list, "array"))
_BAD_DB_CHARS = set('/\\. "$*<>:|?\0')
_UNSUPPORTED_INDEX_OPTIONS = ("sparse", "partialFilterExpression", "expireAfterSeconds",
                              "weights", "default_language", "2dsphereIndexVersion", "wildcardProjection")


def _err(code: int, name: str, message: str) -> MongoError:
    return MongoError(code, name, message)


def check_fields(where: str, body: dict) -> None:
    """Refuses a field the command (or statement) ``where`` does not have, as mongod's parser does,
    and one of the documents/arrays it reads here that has another type."""
    allowed = _COMMAND_FIELDS[where]
    if not allowed.issuperset(body):
        unknown = next(k for k in body if k not in allowed)
        raise _err(40415, "Location40415", f"BSON field '{where}.{unknown}' is an unknown field.")
    for name, kind, expected in _TYPED_FIELDS:
        if name in body and not isinstance(body[name], kind):
            raise _err(14, "TypeMismatch", f"BSON field '{where}.{name}' is the wrong type "
                                           f"'{type_name(body[name])}', expected type '{expected}'")


@dataclass
class Session:
    """One client connection's state."""
    id: int
    peer: str = ""
    user: str | None = None
    tenant: str = ""
    compression: list[str] = field(default_factory=list)
    client: dict | None = None
    scram: scram.ScramServer | None = None
    scram_skip_empty: bool = False


@dataclass
class Command:
    name: str
    db: str
    body: dict
    sequences: dict
    # Kept for routing (the next issue): the read preference the driver passed through.
    read_preference: dict | None = None


@dataclass
class Cursor:
    id: int
    ns: str
    display: str
    docs: list
    pos: int
    owner: tuple
    used: float


class Commands:
    def __init__(self, store: Store, *, node_id: str, auth: bool, credentials: dict[str, scram.Credential],
                 max_message_bytes: int, compressors: tuple[str, ...] = ("zstd", "zlib"),
                 cursor_timeout: float = 600.0, metrics=None, clock: Clock | None = None) -> None:
        self.clock = clock or LoopClock()
        self.store = store
        self.node_id = node_id
        self.auth = auth
        self.credentials = credentials
        self.max_message_bytes = max_message_bytes
        self.compressors = compressors
        self.cursor_timeout = cursor_timeout
        self.cursors: dict[int, Cursor] = {}
        self._cursor_ids = itertools.count(int.from_bytes(os.urandom(4), "big") + 1)
        self.started = self.clock.wall()
        self.opcounters = dict.fromkeys(("insert", "query", "update", "delete", "getmore", "command"), 0)
        self.pool_reads = 0   # reads that outgrew LOOP_READ_BUDGET and ran in the thread pool
        # (tenant, user, lsid) → (txnNumber, future of its reply): retryable writes run once.
        self.retryable: collections.OrderedDict = collections.OrderedDict()
        self.retried_writes = 0
        self.on_commit = lambda: None   # after each local write commit (replication ships it)
        self.connections_current = 0
        self.connections_total = 0
        self.read_preferences = metrics.counter(
            "farts_db_read_preference_total", "Commands that carried a $readPreference, by mode",
            ("mode",)) if metrics else None
        self.handlers = {
            "hello": self.hello, "isMaster": self.hello, "ismaster": self.hello,
            "saslStart": self.sasl_start, "saslContinue": self.sasl_continue,
            "ping": self.ping, "buildInfo": self.build_info, "buildinfo": self.build_info,
            "getParameter": self.get_parameter, "endSessions": self.ping,
            "connectionStatus": self.connection_status, "killCursors": self.kill_cursors,
            "listDatabases": self.list_databases, "serverStatus": self.server_status,
            "insert": self.insert, "find": self.find, "getMore": self.get_more,
            "update": self.update, "delete": self.delete, "findAndModify": self.find_and_modify,
            "findandmodify": self.find_and_modify, "count": self.count, "distinct": self.distinct,
            "aggregate": self.aggregate, "create": self.create, "drop": self.drop,
            "dropDatabase": self.drop_database, "listCollections": self.list_collections,
            "createIndexes": self.create_indexes, "listIndexes": self.list_indexes,
            "dropIndexes": self.drop_indexes, "explain": self.explain, "collMod": self.coll_mod,
        }

    # ---- entry ----

    def parse(self, body: dict, sequences: dict) -> Command:
        if not body:
            raise _err(59, "CommandNotFound", "no command in an empty document")
        name = next(iter(body))
        db = body.get("$db")
        if not isinstance(db, str):
            raise _err(40571, "Location40571", "OP_MSG requests require a $db argument")
        rp = body.get("$readPreference")
        return Command(name, db, body, sequences, rp if isinstance(rp, dict) else None)

    def run(self, session: Session, cmd: Command):
        """The reply document, or an awaitable of it. Raises MongoError."""
        handler = self.handlers.get(cmd.name)
        if self.auth and session.user is None and cmd.name not in HANDSHAKE:
            raise _err(13, "Unauthorized", f"command {cmd.name} requires authentication")
        if handler is None:
            raise _err(59, "CommandNotFound", f"no such command: '{cmd.name}'")
        if "startTransaction" in cmd.body or "autocommit" in cmd.body:
            raise _err(20, "IllegalOperation", "multi-document transactions are not supported")
        for option in _UNSUPPORTED_OPTIONS:
            if cmd.body.get(option):
                raise _err(2, "BadValue", f"{cmd.name} option '{option}' is not supported")
        if cmd.name in views.WRITES and isinstance(cmd.body.get(cmd.name), str):
            ns = self.ns(session, cmd.db, cmd.body[cmd.name])
            if views.is_view(self.store.catalog.get(ns)):
                raise views.not_on_view(self.store.display_ns(ns))
        if cmd.read_preference is not None and self.read_preferences is not None:
            self.read_preferences.inc((str(cmd.read_preference.get("mode", "")),))
        return handler(session, cmd)

    # ---- namespaces ----

    def ns(self, session: Session, db: str, coll) -> str:
        check_db_name(db)
        if not isinstance(coll, str) or not coll or "\0" in coll or "$" in coll or coll.startswith("."):
            raise _err(73, "InvalidNamespace", f"Invalid collection name: {coll!r}")
        return f"{session.tenant}${db}.{coll}"

    def db_prefix(self, session: Session, db: str) -> str:
        check_db_name(db)
        return f"{session.tenant}${db}."

    def _coll_arg(self, cmd: Command) -> str:
        return cmd.body[cmd.name]

    def _utc_now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.wall(), datetime.UTC)

    # ---- handshake, auth, admin ----

    def hello(self, session: Session, cmd: Command) -> dict:
        b = cmd.body
        reply = {"isWritablePrimary" if cmd.name == "hello" else "ismaster": True,
                 "msg": "isdbgrid", "maxBsonObjectSize": MAX_BSON_OBJECT,
                 "maxMessageSizeBytes": self.max_message_bytes, "maxWriteBatchSize": 100000,
                 "localTime": self._utc_now(), "logicalSessionTimeoutMinutes": 30,
                 "connectionId": session.id, "minWireVersion": 0, "maxWireVersion": MAX_WIRE_VERSION,
                 "readOnly": False}
        if b.get("helloOk"):
            reply["helloOk"] = True   # drivers switch from legacy isMaster to hello
        if isinstance(b.get("client"), dict) and session.client is None:
            session.client = b["client"]
        if isinstance(b.get("compression"), list):
            session.compression = [c for c in b["compression"] if c in self.compressors]
            reply["compression"] = session.compression
        mechs = b.get("saslSupportedMechs")
        if isinstance(mechs, str):
            user = mechs.split(".", 1)[-1]
            if user in self.credentials:
                reply["saslSupportedMechs"] = [scram.MECHANISM]
        spec = b.get("speculativeAuthenticate")
        if isinstance(spec, dict) and spec.get("mechanism") == scram.MECHANISM:
            try:
                reply["speculativeAuthenticate"] = self._sasl_start(session, spec)
            except MongoError:
                pass  # the driver falls back to a full saslStart, which reports the error
        reply["ok"] = 1.0
        return reply

    def _sasl_start(self, session: Session, body: dict) -> dict:
        mech = body.get("mechanism")
        if mech != scram.MECHANISM:
            raise _err(334, "MechanismUnavailable",
                       f"Received authentication for mechanism {mech} which is not enabled")
        payload = body.get("payload")
        if not isinstance(payload, bytes):
            raise _err(14, "TypeMismatch", "saslStart payload must be binary")
        opts = body.get("options")
        session.scram = scram.ScramServer(self.credentials)
        session.scram_skip_empty = isinstance(opts, dict) and bool(opts.get("skipEmptyExchange"))
        try:
            out = session.scram.step(payload)
        except scram.AuthError as e:
            session.scram = None
            log.info("db auth failed from %s: %s", session.peer, e)
            raise _err(18, "AuthenticationFailed", "Authentication failed.") from None
        return {"conversationId": 1, "done": False, "payload": Binary(out)}

    def sasl_start(self, session: Session, cmd: Command) -> dict:
        return {**self._sasl_start(session, cmd.body), "ok": 1.0}

    def sasl_continue(self, session: Session, cmd: Command) -> dict:
        conv = session.scram
        payload = cmd.body.get("payload", b"")
        if conv is None or cmd.body.get("conversationId") != 1 or not isinstance(payload, bytes):
            raise _err(17, "ProtocolError", "No SASL session state found")
        if conv.done:
            session.scram = None
            return {"conversationId": 1, "done": True, "payload": Binary(b""), "ok": 1.0}
        try:
            out = conv.step(payload)
        except scram.AuthError as e:
            session.scram = None
            log.info("db auth failed from %s: %s", session.peer, e)
            raise _err(18, "AuthenticationFailed", "Authentication failed.") from None
        cred = conv.credential
        session.user, session.tenant = cred.user, cred.tenant
        for c in [c for c in self.cursors.values() if c.owner[0] == session.id]:
            self.cursors.pop(c.id, None)  # a new identity does not inherit cursors
        done = session.scram_skip_empty
        if done:
            session.scram = None
        return {"conversationId": 1, "done": done, "payload": Binary(out), "ok": 1.0}

    def ping(self, session: Session, cmd: Command) -> dict:
        return {"ok": 1.0}

    def build_info(self, session: Session, cmd: Command) -> dict:
        return {"version": "7.0.0", "versionArray": [7, 0, 0, 0], "gitVersion": "farts-edge",
                "bits": 64, "maxBsonObjectSize": MAX_BSON_OBJECT, "storageEngines": ["lmdb"],
                "modules": [], "javascriptEngine": "none", "ok": 1.0}

    def get_parameter(self, session: Session, cmd: Command) -> dict:
        known = {"featureCompatibilityVersion": {"version": "7.0"},
                 "authenticationMechanisms": [scram.MECHANISM],
                 "maxBSONDepth": 100}
        if cmd.body.get("getParameter") == "*":
            return {**known, "ok": 1.0}
        out = {k: v for k, v in known.items() if k in cmd.body}
        if not out:
            raise _err(72, "InvalidOptions", "no option found to get")
        return {**out, "ok": 1.0}

    def connection_status(self, session: Session, cmd: Command) -> dict:
        users = [{"user": session.user, "db": "admin"}] if session.user else []
        return {"authInfo": {"authenticatedUsers": users, "authenticatedUserRoles": []}, "ok": 1.0}

    def server_status(self, session: Session, cmd: Command) -> dict:
        up = self.clock.wall() - self.started
        return {"host": self.node_id, "version": "7.0.0", "process": "farts-edge", "pid": os.getpid(),
                "uptime": int(up), "uptimeMillis": Int64(int(up * 1000)),
                "localTime": self._utc_now(),
                "connections": {"current": self.connections_current, "totalCreated": self.connections_total},
                "opcounters": dict(self.opcounters),
                "storageEngine": {"name": "lmdb", "persistent": True},
                "farts": {"storeBytes": self.store.size_bytes(), "oplogLength": self.store.oplog_length(),
                          "commits": self.store.commits, "committedWrites": self.store.committed_ops,
                          "poolReads": self.pool_reads, "retriedWrites": self.retried_writes,
                          "openCursors": len(self.cursors), "validationWarnings": self.store.validation_warnings},
                "ok": 1.0}

    def list_databases(self, session: Session, cmd: Command) -> dict:
        prefix = f"{session.tenant}$"
        sizes: dict[str, int] = {}
        for ns in self.store.catalog:
            if ns.startswith(prefix):
                sizes[ns[len(prefix):].split(".", 1)[0]] = 0
        dbs = [{"name": n, "sizeOnDisk": 0, "empty": False} for n in sorted(sizes)]
        flt = cmd.body.get("filter")
        if flt:
            m = compile_filter(flt)
            dbs = [d for d in dbs if m(d)]
        if cmd.body.get("nameOnly"):
            dbs = [{"name": d["name"]} for d in dbs]
        return {"databases": dbs, "totalSize": 0, "ok": 1.0}

    # ---- cursors ----

    def _batch_size(self, value, default: int) -> int:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise _err(2, "BadValue", f"batchSize must be a non-negative number, got {value!r}")
        return int(value)

    def _cursor_reply(self, session: Session, ns: str, docs: list, batch: int, single: bool = False,
                      key: str = "firstBatch") -> dict:
        display = self.store.display_ns(ns)
        first, cid = _take(docs, 0, batch)
        if cid < len(docs) and not single:
            self._reap()
            cursor = Cursor(next(self._cursor_ids), ns, display, docs, cid, (session.id, session.user),
                            self.clock.monotonic())
            self.cursors[cursor.id] = cursor
            return {"cursor": {key: first, "id": Int64(cursor.id), "ns": display}, "ok": 1.0}
        return {"cursor": {key: first, "id": Int64(0), "ns": display}, "ok": 1.0}

    def _reap(self) -> None:
        cutoff = self.clock.monotonic() - self.cursor_timeout
        for cid in [c.id for c in self.cursors.values() if c.used < cutoff]:
            del self.cursors[cid]

    def get_more(self, session: Session, cmd: Command) -> dict:
        self.opcounters["getmore"] += 1
        check_fields("getMore", cmd.body)
        cid = cmd.body["getMore"]
        cursor = self.cursors.get(int(cid)) if isinstance(cid, int) else None
        if cursor is None or cursor.owner[1] != session.user or \
                cursor.ns != f"{session.tenant}${cmd.db}.{cmd.body.get('collection')}":
            raise _err(43, "CursorNotFound", f"cursor id {cid} not found")
        batch = self._batch_size(cmd.body.get("batchSize"), len(cursor.docs))
        docs, cursor.pos = _take(cursor.docs, cursor.pos, batch or len(cursor.docs))
        cursor.used = self.clock.monotonic()
        done = cursor.pos >= len(cursor.docs)
        if done:
            del self.cursors[cursor.id]
        return {"cursor": {"nextBatch": docs, "id": Int64(0 if done else cursor.id), "ns": cursor.display},
                "ok": 1.0}

    def kill_cursors(self, session: Session, cmd: Command) -> dict:
        ns = f"{session.tenant}${cmd.db}.{cmd.body.get('killCursors')}"   # (listCollections: $cmd...)
        killed, missing = [], []
        for cid in cmd.body.get("cursors") or []:
            c = self.cursors.get(int(cid)) if isinstance(cid, int) else None
            if c is not None and c.ns == ns and c.owner[1] == session.user:
                del self.cursors[c.id]
                killed.append(Int64(cid))
            else:
                missing.append(cid)
        return {"cursorsKilled": killed, "cursorsNotFound": missing, "cursorsAlive": [],
                "cursorsUnknown": [], "ok": 1.0}

    # ---- reads ----

    def _read(self, query):
        """query(txn, budget) on the loop if it stays small, else again in the pool."""
        try:
            with self.store.read() as txn:
                return query(txn, LOOP_READ_BUDGET)
        except TooBig:
            self.pool_reads += 1

        def in_pool():
            with self.store.read() as txn:
                return query(txn, None)

        return asyncio.get_running_loop().run_in_executor(None, in_pool)

    def _find_docs(self, txn, budget, ns: str, flt, sort, skip: int, limit: int, projection,
                   stats: ScanStats | None = None, raw: dict | None = None,
                   coll: collation.Collation | None = None) -> list:
        plan, matcher = collation.plan_and_matcher(flt, coll)
        stats = stats if stats is not None else ScanStats()
        docs = None
        if sort and limit:
            docs = self.store.scan_sorted(txn, ns, plan, matcher, parse_sort_spec(sort), skip + limit,
                                          stats, budget, raw)
        if docs is None:
            early = skip + limit if limit and not sort else None
            docs = self.store.scan(txn, ns, plan, matcher, stats, budget, limit=early, raw=raw)
            if sort:
                docs = sort_documents(docs, sort, coll.value if coll is not None else None)
        if skip:
            docs = docs[skip:]
        if limit:
            docs = docs[:limit]
        if projection:
            docs = [project(d, projection) for d in docs]
        return docs

    def _find_args(self, body: dict):
        flt = body.get("filter") or {}
        if not isinstance(flt, dict):
            raise _err(14, "TypeMismatch", "filter must be an object")
        sort = body.get("sort") or None
        projection = body.get("projection") or None
        skip, limit = body.get("skip") or 0, body.get("limit") or 0
        for name, v in (("skip", skip), ("limit", limit)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise _err(2, "BadValue", f"{name} must be a non-negative number")
        compile_filter(flt)  # errors (unknown operators) before any work
        return flt, sort, projection, int(skip), int(limit)

    def find(self, session: Session, cmd: Command):
        self.opcounters["query"] += 1
        body = cmd.body
        check_fields("find", body)
        ns = self.ns(session, cmd.db, self._coll_arg(cmd))
        if "hint" in body:
            check_hint(self.store.catalog, ns, body["hint"])
        coll = self._collation(ns, body.get("collation"))
        if views.is_view(self.store.catalog.get(ns)):
            return self._find_view(session, ns, body, coll)
        flt = body.get("filter")
        if flt and len(flt) == 1 and type(flt.get("_id")) in _ID_POINT_TYPES and not body.get("skip") and \
                coll is None and "let" not in body:
            return self._find_by_id(session, ns, flt["_id"], body.get("projection"))
        flt, sort, projection, skip, limit = self._find_args(body)
        let = body.get("let")
        if let is not None or filter_reads_variables(flt) or mentions_variables(projection):
            variables = self._variables(let)
            flt, projection = bind_filter(flt, variables), bind_projection(projection, variables)
        batch = self._batch_size(body.get("batchSize"), DEFAULT_BATCH)
        single = bool(body.get("singleBatch"))

        def query(txn, budget):
            raw = None if projection else {}
            docs = self._find_docs(txn, budget, ns, flt, sort, skip, limit, projection, raw=raw, coll=coll)
            return _as_stored(docs, raw) if raw else docs

        return self._then(self._read(query), lambda docs: self._cursor_reply(session, ns, docs, batch, single))

    def _find_view(self, session: Session, ns: str, body: dict, coll: collation.Collation | None):
        self._find_args(body)
        batch = self._batch_size(body.get("batchSize"), DEFAULT_BATCH)
        pipeline = bind_pipeline(views.find_pipeline(body), self._variables(body.get("let")))
        docs = self._pipeline_docs(ns, pipeline, coll=coll)
        return self._then(docs, lambda d: self._cursor_reply(session, ns, d, batch, bool(body.get("singleBatch"))))

    def _find_by_id(self, session: Session, ns: str, _id, projection) -> dict:
        """find({_id: value}): one key lookup, the hot path of most applications."""
        with self.store.read() as txn:
            data = self.store.get_raw(txn, ns, _id)
        if data is None:
            docs = []
        else:
            docs = [project(bson.decode(data), projection) if projection else RawBSONDocument(data)]
        return {"cursor": {"firstBatch": docs, "id": Int64(0), "ns": self.store.display_ns(ns)}, "ok": 1.0}

    def _variables(self, *scopes) -> dict:
        """$$NOW, $$CLUSTER_TIME and the user variables of a command (let, a statement's c)."""
        return command_variables(self._utc_now().replace(tzinfo=None), *scopes)

    def _bound_filter(self, flt, let):
        """The filter with the command's variables bound into its $expr parts (when it has any)."""
        if let is None and not filter_reads_variables(flt):
            return flt
        return bind_filter(flt, self._variables(let))

    def count(self, session: Session, cmd: Command):
        self.opcounters["command"] += 1
        check_fields("count", cmd.body)
        ns = self.ns(session, cmd.db, self._coll_arg(cmd))
        check_hint(self.store.catalog, ns, cmd.body.get("hint"))
        flt = cmd.body.get("query") or {}
        body = {"filter": flt, "skip": cmd.body.get("skip"), "limit": cmd.body.get("limit")}
        flt, _, _, skip, limit = self._find_args(body)
        coll = self._collation(ns, cmd.body.get("collation"))
        if views.is_view(self.store.catalog.get(ns)):
            docs = self._pipeline_docs(ns, views.find_pipeline({"filter": flt, "skip": skip, "limit": limit}), coll=coll)
            return self._then(docs, lambda d: {"n": len(d), "ok": 1.0})

        def query(txn, budget):
            if not flt:   # estimatedDocumentCount: count keys, decode nothing
                n = max(0, self.store.count_keys(txn, ns, budget and budget * 16) - skip)
                return min(n, limit) if limit else n
            return len(self._find_docs(txn, budget, ns, flt, None, skip, limit, None, coll=coll))

        return self._then(self._read(query), lambda n: {"n": n, "ok": 1.0})

    def distinct(self, session: Session, cmd: Command):
        self.opcounters["command"] += 1
        check_fields("distinct", cmd.body)
        ns = self.ns(session, cmd.db, self._coll_arg(cmd))
        check_hint(self.store.catalog, ns, cmd.body.get("hint"))
        key = cmd.body.get("key")
        if not isinstance(key, str) or not key:
            raise _err(14, "TypeMismatch", "distinct key must be a non-empty string")
        flt, _, _, _, _ = self._find_args({"filter": cmd.body.get("query") or {}})
        coll = self._collation(ns, cmd.body.get("collation"))
        collate = coll.value if coll is not None else None

        def query(txn, budget):
            return self._find_docs(txn, budget, ns, flt, None, 0, 0, None, coll=coll)

        def values(docs):
            seen = {}
            for d in docs:
                vals, _ = path_values(d, key)
                for v in vals:
                    if v is None and not _has_path(d, key):
                        continue
                    k = sort_key(collate(v) if collate else v)
                    seen.setdefault(repr(k), (k, v))
            return {"values": [v for _, v in sorted(seen.values(), key=lambda e: e[0])], "ok": 1.0}

        if views.is_view(self.store.catalog.get(ns)):
            return self._then(self._pipeline_docs(ns, views.find_pipeline({"filter": flt}), coll=coll), values)
        return self._then(self._read(query), values)

    def aggregate(self, session: Session, cmd: Command):
        self.opcounters["command"] += 1
        check_fields("aggregate", cmd.body)
        coll = self._coll_arg(cmd)
        pipeline = cmd.body.get("pipeline")
        if not isinstance(pipeline, list) or not all(isinstance(s, dict) for s in pipeline):
            raise _err(14, "TypeMismatch", "'pipeline' must be an array of objects")
        names = [output.stage_name(s) for s in pipeline]
        db_level = coll == 1 and not isinstance(coll, bool)
        if db_level:
            ns = f"{self.db_prefix(session, cmd.db)}$cmd.aggregate"
            if names and names[0] in _DB_LEVEL_STAGES:
                raise _err(2, "BadValue", f"{names[0]} is not supported by this server")
            if not names or names[0] != "$documents":
                raise _err(73, "InvalidNamespace", f"{{aggregate: 1}} is not valid for "
                                                   f"'{names[0] if names else 'an empty pipeline'}'; a collection "
                                                   "is required (the stage this server runs without one: $documents)")
        elif isinstance(coll, str):
            ns = self.ns(session, cmd.db, coll)
            check_hint(self.store.catalog, ns, cmd.body.get("hint"))
        else:
            raise _err(73, "InvalidNamespace", f"Invalid collection name: {coll!r}")
        for i, name in enumerate(names):
            if name == "$documents" and (i or not db_level):
                raise _err(40602, "Location40602", "$documents is only valid as the first stage of {aggregate: 1}")
            if name in output.WRITING_STAGES and i != len(names) - 1:
                raise _err(40601, "Location40601", f"{name} can only be the final stage in the pipeline")
        if "cursor" not in cmd.body and not cmd.body.get("explain"):
            raise _err(9, "FailedToParse", "The 'cursor' option is required, except for aggregate with the explain argument")
        cursor_opts = cmd.body.get("cursor") or {}
        batch = self._batch_size(cursor_opts.get("batchSize") if isinstance(cursor_opts, dict) else None,
                                 DEFAULT_BATCH)
        pipeline = bind_pipeline(pipeline, self._variables(cmd.body.get("let")))
        coll = None if db_level else self._collation(ns, cmd.body.get("collation"))
        if db_level and cmd.body.get("collation") is not None:
            coll = collation.parse(cmd.body["collation"])
        if not names or names[-1] not in output.WRITING_STAGES:
            docs = self._pipeline_docs(ns, pipeline, documents=db_level, coll=coll)
            return self._then(docs, lambda d: self._cursor_reply(session, ns, d, batch))
        out = output.parse(pipeline[-1], cmd.db)
        target = self.ns(session, out.db, out.coll)
        if views.is_view(self.store.catalog.get(target)):
            raise views.not_on_view(self.store.display_ns(target))
        docs = self._pipeline_docs(ns, pipeline[:-1], documents=db_level, coll=coll)
        bypass = bool(cmd.body.get("bypassDocumentValidation"))

        def fn(w, result):
            w.bypass_validation = bypass
            output.write(w, target, out, result, self.store.display_ns)

        async def run():
            result = await docs if asyncio.isfuture(docs) else docs
            await self._write(lambda w: fn(w, result))
            return self._cursor_reply(session, ns, [], batch)

        return run()

    def _collation(self, ns: str, spec=None) -> collation.Collation | None:
        """The command's collation, else the collection's default (None: binary)."""
        if spec is None:
            coll = self.store.catalog.get(ns)
            if coll is None or "collation" not in coll.options:
                return None
            spec = coll.options["collation"]
        return collation.parse(spec)

    def _pipeline_docs(self, ns: str, pipeline: list, documents: bool = False,
                       coll: collation.Collation | None = None):
        """What pipeline outputs over ns (a collection or a view; nothing with documents,
        {aggregate: 1}): a list, or a future of it when the read moved to the pool."""
        if not documents and (resolved := views.resolve(self.store.catalog, ns)) is not None:
            ns, pipeline = resolved[0], resolved[1] + pipeline
        first = pipeline[0].get("$match") if pipeline and len(pipeline[0]) == 1 else None
        flt = first if isinstance(first, dict) else {}
        compile_filter(flt)

        def query(txn, budget):
            docs = [] if documents else self._find_docs(txn, budget, ns, flt, None, 0, 0, None, coll=coll)
            return run_pipeline(docs, pipeline, coll)

        return self._read(query)

    def explain(self, session: Session, cmd: Command):
        inner = cmd.body.get("explain")
        if not isinstance(inner, dict) or not inner:
            raise _err(9, "FailedToParse", "explain requires a command object")
        name = next(iter(inner))
        if name not in ("find", "count", "aggregate"):
            raise _err(72, "InvalidOptions", f"explain is supported for find, count and aggregate, not {name}")
        ns = self.ns(session, cmd.db, inner[name])
        if name == "find":   # the find it explains is refused as it would be on its own
            check_fields("find", inner)
            check_hint(self.store.catalog, ns, inner.get("hint"))
        if views.is_view(self.store.catalog.get(ns)):   # its plan is the view's pipeline's: not described here
            raise _err(2, "BadValue", f"explain of a view ({self.store.display_ns(ns)}) is not supported")
        if name == "aggregate":
            pipeline = inner.get("pipeline") or []
            first = pipeline[0].get("$match") if pipeline and isinstance(pipeline[0], dict) else None
            args = ((first or {}), None, None, 0, 0)
        else:
            args = self._find_args(inner if name == "find" else {"filter": inner.get("query") or {}})
        flt, sort, projection, skip, limit = args
        flt = self._bound_filter(flt, inner.get("let"))
        coll = self._collation(ns, inner.get("collation"))
        stats = ScanStats()

        def query(txn, budget):
            stats.keys = stats.docs = 0
            return self._find_docs(txn, budget, ns, flt, sort, skip, limit, projection, stats, coll=coll)

        def reply(docs):
            scan = {"stage": stats.plan}
            if stats.index:
                scan = {"stage": "FETCH", "inputStage": {"stage": "IXSCAN", "indexName": stats.index}}
            if sort and not stats.sorted:
                scan = {"stage": "SORT", "inputStage": scan}
            display = self.store.display_ns(ns)
            return {"queryPlanner": {"namespace": display, "winningPlan": scan, "rejectedPlans": []},
                    "executionStats": {"executionSuccess": True, "nReturned": len(docs),
                                       "totalKeysExamined": stats.keys, "totalDocsExamined": stats.docs},
                    "ok": 1.0}

        return self._then(self._read(query), reply)

    def list_collections(self, session: Session, cmd: Command) -> dict:
        prefix = self.db_prefix(session, cmd.db)
        out = []
        for ns in sorted(self.store.catalog):
            if not ns.startswith(prefix):
                continue
            options = self.store.catalog[ns].options
            if "viewOn" in options:
                out.append({"name": ns[len(prefix):], "type": "view", "options": options, "info": {"readOnly": True}})
            else:
                out.append({"name": ns[len(prefix):], "type": "collection", "options": options,
                            "info": {"readOnly": False}, "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}})
        flt = cmd.body.get("filter")
        if flt:
            m = compile_filter(flt)
            out = [c for c in out if m(c)]
        if cmd.body.get("nameOnly"):
            out = [{"name": c["name"], "type": c["type"]} for c in out]
        opts = cmd.body.get("cursor")
        batch = self._batch_size(opts.get("batchSize") if isinstance(opts, dict) else None, len(out) or 1)
        return self._cursor_reply(session, f"{prefix}$cmd.listCollections", out, batch)

    def list_indexes(self, session: Session, cmd: Command) -> dict:
        ns = self.ns(session, cmd.db, self._coll_arg(cmd))
        coll = self.store.catalog.get(ns)
        if coll is None:
            raise _err(26, "NamespaceNotFound", f"ns does not exist: {self.store.display_ns(ns)}")
        specs = [{"v": 2, "key": {"_id": 1}, "name": "_id_"}] + [i.spec() for i in coll.indexes]
        return self._cursor_reply(session, ns, specs, len(specs))

    # ---- writes ----

    async def _write(self, fn, exclusive: bool = False):
        result = await asyncio.wrap_future(self.store.submit(fn, exclusive))
        self.on_commit()
        return result

    def _write_once(self, session: Session, cmd: Command, fn):
        """A retryable write (lsid + txnNumber, as drivers send by default) runs once: the
        retry a driver sends after losing the connection gets the first attempt's answer
        instead of inserting or incrementing again. Kept in memory (not across restarts)."""
        if cmd.body.get("bypassDocumentValidation"):
            fn = _bypassing_validation(fn)
        lsid, number = cmd.body.get("lsid"), cmd.body.get("txnNumber")
        if not isinstance(lsid, dict) or not isinstance(number, int) or isinstance(number, bool):
            return self._write(fn)
        key = (session.tenant, session.user, bytes(lsid.get("id") or b""))
        seen = self.retryable.get(key)
        if seen is not None:
            if number < seen[0]:
                raise _err(225, "TransactionTooOld",
                           f"txnNumber {number} is older than the last one of this session ({seen[0]})")
            if number == seen[0] and not (seen[1].done() and seen[1].exception() is not None):
                self.retried_writes += 1
                return asyncio.shield(seen[1])
        fut = asyncio.ensure_future(self._write(fn))
        self.retryable[key] = (number, fut)
        self.retryable.move_to_end(key)
        while len(self.retryable) > MAX_RETRYABLE_SESSIONS:
            self.retryable.popitem(last=False)
        return asyncio.shield(fut)

    def _docs_arg(self, cmd: Command, key: str) -> list:
        docs = cmd.body.get(key)
        if docs is None:
            docs = cmd.sequences.get(key)
        if not isinstance(docs, list) or not all(isinstance(d, dict) for d in docs):
            raise _err(14, "TypeMismatch", f"'{key}' must be an array of objects")
        if len(docs) > 100000:
            raise _err(10334, "BSONObjectTooLarge", f"write batch of {len(docs)} is over 100000")
        return docs

    def insert(self, session: Session, cmd: Command):
        check_fields("insert", cmd.body)
        ns = self.ns(session, cmd.db, self._coll_arg(cmd))
        docs = self._docs_arg(cmd, "documents")
        ordered = cmd.body.get("ordered", True) is not False
        self.opcounters["insert"] += len(docs)

        def fn(w):
            def one(doc):
                check_id_field(doc)
                return w.insert(ns, doc)
            done, errors = _each_statement(w, docs, ordered, one)
            return _write_reply(len(done), errors)

        return self._write_once(session, cmd, fn)

    def update(self, session: Session, cmd: Command):
        check_fields("update", cmd.body)
        ns = self.ns(session, cmd.db, self._coll_arg(cmd))
        statements = self._docs_arg(cmd, "updates")
        ordered = cmd.body.get("ordered", True) is not False
        let = cmd.body.get("let")
        self.opcounters["update"] += len(statements)
        for s in statements:
            check_fields("update.updates", s)
            if not isinstance(s.get("q", {}), dict) or not isinstance(s.get("u"), (dict, list)):
                raise _err(9, "FailedToParse", "each update needs a 'q' object and a 'u' object")

        default = self._collation(ns)

        def fn(w):
            now = self._utc_now().replace(tzinfo=None)
            done, errors = _each_statement(w, statements, ordered,
                                           lambda s: _update_one_statement(w, ns, s, now, let, default))
            upserted = [{"index": i, "_id": up} for i, (_, _, up) in done if up is not None]
            reply = _write_reply(sum(m for _, (m, _, _) in done) + len(upserted), errors)
            reply["nModified"] = sum(mod for _, (_, mod, _) in done)
            if upserted:
                reply["upserted"] = upserted
            return reply

        return self._write_once(session, cmd, fn)

    def delete(self, session: Session, cmd: Command):
        check_fields("delete", cmd.body)
        ns = self.ns(session, cmd.db, self._coll_arg(cmd))
        statements = self._docs_arg(cmd, "deletes")
        ordered = cmd.body.get("ordered", True) is not False
        self.opcounters["delete"] += len(statements)
        parsed = []
        default = self._collation(ns)
        for s in statements:
            check_fields("delete.deletes", s)
            q, limit = s.get("q"), s.get("limit", 0)
            if not isinstance(q, dict) or limit not in (0, 1):
                raise _err(9, "FailedToParse", "each delete needs a 'q' object and a 'limit' of 0 or 1")
            coll = collation.parse(s["collation"]) if s.get("collation") is not None else default
            parsed.append((self._bound_filter(q, cmd.body.get("let")), coll, limit, s.get("hint")))

        def fn(w):
            def one(statement):
                # A filter's errors are the statement's (a writeError), as mongod reports them.
                q, coll, limit, hint = statement
                plan, matcher = collation.plan_and_matcher(q, coll)
                check_hint(w.catalog, ns, hint)
                docs = w.find(ns, plan, matcher, limit=1 if limit else None)
                for d in docs:
                    w.delete(ns, d)
                return len(docs)
            done, errors = _each_statement(w, parsed, ordered, one)
            return _write_reply(sum(n for _, n in done), errors)

        return self._write_once(session, cmd, fn)

    def find_and_modify(self, session: Session, cmd: Command):
        b = cmd.body
        check_fields("findAndModify", b)
        ns = self.ns(session, cmd.db, self._coll_arg(cmd))
        query = b.get("query") or {}
        sort, fields = b.get("sort") or None, b.get("fields") or None
        remove, update = bool(b.get("remove")), b.get("update")
        if remove == (update is not None):
            raise _err(9, "FailedToParse", "Either an update or remove=true must be specified")
        if remove and b.get("upsert"):
            raise _err(9, "FailedToParse", "Cannot specify both upsert=true and remove=true")
        if update is not None and not isinstance(update, (dict, list)):
            raise _err(9, "FailedToParse", "Update argument must be either an object or an array")
        let = b.get("let")
        variables = self._variables(let) if let is not None or isinstance(update, list) or \
            filter_reads_variables(query) else {}
        query = bind_filter(query, variables)
        coll = self._collation(ns, b.get("collation"))
        plan, matcher = collation.plan_and_matcher(query, coll)
        if update is not None:
            update = Update(update, b.get("arrayFilters"), variables)
        check_hint(self.store.catalog, ns, b.get("hint"))
        self.opcounters["command"] += 1

        def fn(w):
            docs = w.find(ns, plan, matcher)
            if sort:
                docs = sort_documents(docs, sort, coll.value if coll is not None else None)
            doc = docs[0] if docs else None
            if remove:
                if doc is not None:
                    w.delete(ns, doc)
                return _fam_reply(doc, {"n": int(doc is not None)}, fields)
            now = self._utc_now().replace(tzinfo=None)
            if doc is None:
                if not b.get("upsert"):
                    return _fam_reply(None, {"n": 0, "updatedExisting": False}, fields)
                new = _upsert(w, ns, query, update, now)
                return _fam_reply(new if b.get("new") else None,
                                  {"n": 1, "updatedExisting": False, "upserted": new["_id"]}, fields)
            new = update.apply(doc, now=now, filter=query)
            _write_changed(w, ns, doc, new, update, now)
            return _fam_reply(new if b.get("new") else doc, {"n": 1, "updatedExisting": True}, fields)

        return self._write_once(session, cmd, fn)

    def create(self, session: Session, cmd: Command):
        ns = self.ns(session, cmd.db, self._coll_arg(cmd))
        b = cmd.body
        check_fields("create", b)
        for opt in ("capped", "timeseries", "clusteredIndex"):
            if b.get(opt):
                raise _err(72, "InvalidOptions", f"create option '{opt}' is not supported")
        options = {k: b[k] for k in validation.OPTIONS if k in b}
        if (default := collation.parse(b.get("collation"))) is not None:
            options["collation"] = default.spec
        views.check_options({**options, **{k: b[k] for k in ("viewOn", "pipeline") if k in b}})
        validation.check_options(options)

        def fn(w):
            opts = options
            if "viewOn" in b:
                opts = views.check_definition(w.catalog, ns, b["viewOn"], b.get("pipeline", []),
                                              self.store.display_ns)
            w.create_collection(ns, opts)

        async def run():
            await self._write(fn, exclusive=True)
            return {"ok": 1.0}

        return run()

    def coll_mod(self, session: Session, cmd: Command):
        ns = self.ns(session, cmd.db, self._coll_arg(cmd))
        b = cmd.body
        for opt in _UNSUPPORTED_COLLMOD:
            if opt in b:
                raise _err(72, "InvalidOptions", f"collMod option '{opt}' is not supported")
        check_fields("collMod", b)
        changes = {k: b[k] for k in (*validation.OPTIONS, "viewOn", "pipeline") if k in b}
        display = self.store.display_ns

        def fn(w):
            coll = w.catalog.get(ns)
            if coll is None:
                raise _err(26, "NamespaceNotFound", f"ns does not exist: {display(ns)}")
            options = dict(coll.options)
            if views.is_view(coll):
                if any(k in changes for k in validation.OPTIONS):
                    raise _err(72, "InvalidOptions", f"option not supported on a view: "
                                                     f"{next(k for k in changes if k in validation.OPTIONS)}")
                if changes:
                    if "viewOn" not in changes or "pipeline" not in changes:
                        raise _err(72, "InvalidOptions", "must specify both 'viewOn' and 'pipeline' when "
                                                         "applying collMod to a view")
                    options = views.check_definition(w.catalog, ns, changes["viewOn"], changes["pipeline"], display)
            else:
                if "viewOn" in changes or "pipeline" in changes:
                    raise _err(72, "InvalidOptions", f"'viewOn' and 'pipeline' are options of views; "
                                                     f"{display(ns)} is a collection")
                options.update(changes)
                validation.check_options(options)
            w.set_options(ns, options)
            return {"ok": 1.0}

        return self._write(fn, exclusive=True)

    def drop(self, session: Session, cmd: Command):
        ns = self.ns(session, cmd.db, self._coll_arg(cmd))

        async def run():
            await self._write(lambda w: w.drop_collection(ns), exclusive=True)
            self._kill_ns(lambda n: n == ns)
            return {"ns": self.store.display_ns(ns), "nIndexesWas": 0, "ok": 1.0}

        return run()

    def drop_database(self, session: Session, cmd: Command):
        prefix = self.db_prefix(session, cmd.db)

        async def run():
            await self._write(lambda w: w.drop_database(prefix), exclusive=True)
            self._kill_ns(lambda n: n.startswith(prefix))
            return {"dropped": cmd.db, "ok": 1.0}

        return run()

    def _kill_ns(self, pred) -> None:
        for cid in [c.id for c in self.cursors.values() if pred(c.ns)]:
            del self.cursors[cid]

    def create_indexes(self, session: Session, cmd: Command):
        ns = self.ns(session, cmd.db, self._coll_arg(cmd))
        specs = cmd.body.get("indexes")
        if not isinstance(specs, list) or not specs:
            raise _err(2, "BadValue", "'indexes' must be a non-empty array")
        indexes = [(parse_index_spec(s), "collation" in s) for s in specs]

        def fn(w):
            before = w.catalog.get(ns)
            created_coll = before is None
            # An index without a collation of its own has the collection's default one (as in MongoDB).
            default = collation.parse(before.options.get("collation")) if before is not None else None
            n_before = 1 + (len(before.indexes) if before else 0)
            for idx, own in indexes:
                w.create_index(ns, idx if own or default is None else replace(idx, collation=default.identity))
            return {"numIndexesBefore": n_before, "numIndexesAfter": 1 + len(w.catalog[ns].indexes),
                    "createdCollectionAutomatically": created_coll, "ok": 1.0}

        return self._write(fn, exclusive=True)

    def drop_indexes(self, session: Session, cmd: Command):
        ns = self.ns(session, cmd.db, self._coll_arg(cmd))
        which = cmd.body.get("index")

        def fn(w):
            coll: Collection | None = w.catalog.get(ns)
            if coll is None:
                raise _err(26, "NamespaceNotFound", f"ns not found {self.store.display_ns(ns)}")
            n = 1 + len(coll.indexes)
            if which == "*":
                names = [i.name for i in coll.indexes]
            elif isinstance(which, str):
                names = [which]
            elif isinstance(which, list):
                names = list(which)
            elif isinstance(which, dict):
                fields = tuple((k, int(v)) for k, v in which.items())
                names = [i.name for i in coll.indexes if i.fields == fields]
                if not names:
                    raise _err(27, "IndexNotFound", f"can't find index with key: {which}")
                if len(names) > 1:   # the same key pattern in several collations
                    raise _err(119, "AmbiguousIndexKeyPattern", f"{len(names)} indexes found for key: {which}, "
                                                                f"identify by name instead: {', '.join(names)}")
            else:
                raise _err(14, "TypeMismatch", "'index' must be a name, a key pattern or '*'")
            for name in names:
                w.drop_index(ns, name)
            return {"nIndexesWas": n, "ok": 1.0}

        return self._write(fn, exclusive=True)

    # ---- helpers ----

    @staticmethod
    def _then(value, fn):
        if asyncio.isfuture(value) or asyncio.iscoroutine(value):
            async def chain():
                return fn(await value)
            return chain()
        return fn(value)


def check_hint(catalog, ns: str, hint) -> None:
    """A hint only picks a plan here, but one that names no index of the collection is refused as
    mongod refuses it (a misspelt hint would otherwise go unnoticed)."""
    if hint is None or hint == "" or hint == {}:
        return
    if not isinstance(hint, (str, dict)):
        raise _err(9, "FailedToParse", "hint must be a string or an object")
    coll = catalog.get(ns)
    if coll is None or (isinstance(hint, dict) and set(hint) == {"$natural"}):
        return   # no collection: nothing to plan (mongod answers an empty result too)
    if isinstance(hint, str):
        found = hint == "_id_" or coll.index(hint) is not None
    else:
        try:
            fields = tuple((k, int(v)) for k, v in hint.items())
        except (TypeError, ValueError, OverflowError):   # not a direction: no index has it
            fields = ()
        found = fields == (("_id", 1),) or any(i.fields == fields for i in coll.indexes)
    if not found:
        raise _err(2, "BadValue", "error processing query: planner returned error :: caused by :: "
                                  "hint provided does not correspond to an existing index")


def _bypassing_validation(fn):
    def run(w):
        w.bypass_validation = True
        return fn(w)
    return run


def check_db_name(db) -> None:
    if not isinstance(db, str) or not db or len(db) >= 64 or any(c in _BAD_DB_CHARS for c in db):
        raise _err(73, "InvalidNamespace", f"Invalid database name: {db!r}")


def parse_index_spec(spec) -> Index:
    if not isinstance(spec, dict) or not isinstance(spec.get("key"), dict) or not spec["key"]:
        raise _err(9, "FailedToParse", "an index spec needs a non-empty 'key' object")
    fields = []
    for path, direction in spec["key"].items():
        if isinstance(direction, str):
            raise _err(67, "CannotCreateIndex", f"index type '{direction}' (on {path}) is not supported")
        if isinstance(direction, bool) or not isinstance(direction, (int, float)) or direction not in (1, -1):
            raise _err(67, "CannotCreateIndex", f"index key values must be 1 or -1, got {direction!r} for {path}")
        fields.append((path, int(direction)))
    for opt in _UNSUPPORTED_INDEX_OPTIONS:
        if opt in spec:
            raise _err(67, "CannotCreateIndex", f"index option '{opt}' is not supported")
    name = spec.get("name") or "_".join(f"{p}_{d}" for p, d in fields)
    if not isinstance(name, str):
        raise _err(14, "TypeMismatch", "index name must be a string")
    coll = collation.parse(spec.get("collation"))   # {locale: "simple"}: binary, as without one
    return Index(name, tuple(fields), bool(spec.get("unique")), collation=coll.identity if coll else ())


def _as_stored(docs: list, raw: dict) -> list:
    """Documents as their stored BSON where they are unchanged (no decode-encode round trip)."""
    out = []
    for d in docs:
        entry = raw.get(id(d))
        out.append(RawBSONDocument(entry[1]) if entry is not None and entry[0] is d else d)
    return out


def _bson_size(doc) -> int:
    return len(doc.raw) if type(doc) is RawBSONDocument else len(bson.encode(doc))


def _take(docs: list, pos: int, n: int) -> tuple[list, int]:
    """Up to n documents from pos (n = 0: all), fewer if they would pass 16 MB in one reply."""
    end = min(len(docs), pos + n) if n else len(docs)
    if end - pos > 1:
        size, stop = 0, pos
        while stop < end:
            size += _bson_size(docs[stop])
            if size > MAX_BSON_OBJECT and stop > pos:
                break
            stop += 1
        end = stop
    return docs[pos:end], end


def _has_path(doc, path: str) -> bool:
    cur = doc
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return isinstance(cur, list)
    return True


def _write_error(i: int, e: MongoError) -> dict:
    out = {"index": i, "code": e.code, "codeName": e.code_name, "errmsg": e.message}
    out.update(getattr(e, "details", None) or {})
    return out


def _each_statement(w, statements: list, ordered: bool, one) -> tuple[list, list]:
    """Runs ``one(statement)`` for each statement of a write command, each in its own
    atomic step: ([(index, result)...] of those that succeeded, writeErrors); an ordered
    command stops at its first error."""
    done, errors = [], []
    for i, statement in enumerate(statements):
        try:
            done.append((i, w.atomic(lambda statement=statement: one(statement))))
        except MongoError as e:
            errors.append(_write_error(i, e))
            if ordered:
                break
    return done, errors


def _write_reply(n: int, errors: list) -> dict:
    reply = {"n": n, "ok": 1.0}
    if errors:
        reply["writeErrors"] = errors
    return reply


def _write_changed(w, ns: str, old: dict, new: dict, update: Update, now) -> bool:
    """Writes new over old if it differs; the oplog gets the operators, the field changes a
    pipeline made (so replication merges them field by field, as operators) or the replacement."""
    if bson.encode(new) == bson.encode(old):
        return False
    operators = update.update if update.kind == "operators" else \
        field_changes(old, new) if update.kind == "pipeline" else None
    if operators is not None:
        w.replace(ns, old, new, {"op": "u", "u": operators, "now": now})
    else:
        w.replace(ns, old, new, {"op": "r", "doc": new})
    return True


def _upsert(w, ns: str, q: dict, update: Update, now) -> dict:
    """Inserts what an upsert that matched nothing makes of the filter's equality fields."""
    seed = upsert_seed(q)
    # Operators replicate as an upsert (their commuting parts merge); a pipeline as its result.
    return w.insert(ns, update.apply(seed, is_upsert_insert=True, now=now),
                    upsert=(seed, update.update) if update.kind != "pipeline" else None)


def _update_one_statement(w, ns: str, s: dict, now, let, default=None) -> tuple[int, int, object]:
    q, u = s.get("q") or {}, s["u"]
    if let is not None or "c" in s or isinstance(u, list) or filter_reads_variables(q):
        variables = command_variables(now, let, s.get("c"))
        q = bind_filter(q, variables)
    else:
        variables = {}
    update = Update(u, s.get("arrayFilters"), variables)
    check_hint(w.catalog, ns, s.get("hint"))
    multi, upsert = bool(s.get("multi")), bool(s.get("upsert"))
    coll = collation.parse(s["collation"]) if s.get("collation") is not None else default
    if update.kind == "replacement" and multi and u:
        raise _err(9, "FailedToParse", "multi update is not supported for replacement-style update")
    if len(q) == 1 and type(q.get("_id")) in _ID_POINT_TYPES and coll is None:   # by _id: one key lookup
        doc = w.get(ns, q["_id"])
        docs = [doc] if doc is not None else []
    else:
        docs = w.find(ns, *collation.plan_and_matcher(q, coll), limit=None if multi else 1)
    modified = 0
    for doc in docs:
        new = update.apply(doc, now=now, filter=q)
        modified += _write_changed(w, ns, doc, new, update, now)
    if docs or not upsert:
        return len(docs), modified, None
    return 0, 0, _upsert(w, ns, q, update, now)["_id"]


def _fam_reply(doc, last_error: dict, fields) -> dict:
    if doc is not None and fields:
        doc = project(doc, fields)
    return {"lastErrorObject": last_error, "value": doc, "ok": 1.0}

