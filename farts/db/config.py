"""The database config section ``[db]``."""
from __future__ import annotations

from dataclasses import dataclass

from farts.config import PORT, POSITIVE, Check, Section, setting


@dataclass(frozen=True)
class DBUser:
    name: str
    password: str
    tenant: str   # the user sees only this tenant's databases


@dataclass(frozen=True)
class DBConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = setting(27017, PORT)
    # false: no authentication needed (MongoDB's localhost exception); true: SCRAM-SHA-256 first.
    auth: bool = False
    users: list[DBUser] = setting([])
    # fsync every commit before acknowledging a write (group commit shares one fsync).
    sync: bool = True
    max_message_bytes: int = setting(48_000_000, Check(lambda v: 1024 <= v <= 48_000_000,
                                                          "an integer 1024-48000000"))
    # The largest the LMDB file may grow to (address space; the file grows as used).
    map_size: int = setting(4 << 30, Check(lambda v: v >= 1 << 20, "an integer >= 1048576"))
    # With auth = true, what a client may do before it has authenticated: its largest
    # message, how many commands (the handshake and SASL take a handful), and how long;
    # past any of them it is answered with the error and closed.
    preauth_max_message_bytes: int = setting(65536, Check(lambda v: 1024 <= v <= 48_000_000,
                                                           "an integer 1024-48000000"))
    preauth_max_commands: int = setting(32, POSITIVE)
    auth_timeout: float = setting(30.0, POSITIVE)
    # Connections beyond this are closed on accept (drivers keep pools of them open).
    max_connections: int = setting(10000, POSITIVE)
    # Secondary indexes over all collections and tenants (each is an LMDB sub-database,
    # and every read transaction costs more the more of them are allowed).
    max_indexes: int = setting(500, Check(lambda v: 1 <= v <= 30000, "an integer 1-30000"))
    # Replication (when the mesh is enabled, every node's database is a replica of one
    # deployment-wide database). The oplog keeps other origins' records for peers that
    # are behind: at most this many per origin, and none older than this; a peer further
    # behind gets a snapshot. A node's own records stay until every member has them.
    oplog_retain_records: int = setting(100_000, POSITIVE)
    oplog_retain_seconds: float = setting(24 * 3600.0, POSITIVE)
    # How often a node tells its peers what it has applied (also sent as acks and on
    # reconnect): bounds how long a causal read or w: "majority" waits for an idle peer.
    status_interval: float = setting(0.2, Check(lambda v: 0.01 <= v <= 60, "a number of seconds 0.01-60"))
    # The node id reads with readPreference primary (the driver's default) go to; "":
    # every node answers them itself.
    primary: str = ""


SECTION = Section("db", DBConfig, DBConfig)
