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


SECTION = Section("db", DBConfig, DBConfig)
