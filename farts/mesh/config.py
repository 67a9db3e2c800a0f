"""The mesh config section ``[mesh]``."""
from __future__ import annotations

from dataclasses import dataclass

from farts.config import NON_NEGATIVE, PORT, POSITIVE, Check, Section, address_ok, setting


@dataclass(frozen=True)
class MeshConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = setting(7946, PORT)
    seeds: list[str] = setting([], Check(lambda v: all(address_ok(s) for s in v), "a list of 'host:port'"))
    # "host:port" peers dial to reach this node (empty: host:port above).
    advertise: str = setting("", Check(lambda v: not v or address_ok(v), "'host:port' or empty"))
    # Addresses clients are sent to (the DNS answers with them); empty: the HTTP listener's host.
    public_addresses: list[str] = setting([])
    # The cluster CA and this node's certificate (CN and URI SAN farts-node:<node.id>),
    # relative to data_dir; `farts-edge ca init/issue` writes them.
    ca: str = "mesh/ca.crt"
    cert: str = "mesh/node.crt"
    key: str = "mesh/node.key"
    # SWIM: one probe per interval, an ack within probe_timeout or k indirect probes,
    # then suspicion for suspicion_timeout (x log10(members) past 10 members, up to
    # suspicion_max_mult times more while no other member confirms) before "dead".
    probe_interval: float = setting(1.0, POSITIVE)
    probe_timeout: float = setting(0.5, POSITIVE)
    indirect_probes: int = setting(3, NON_NEGATIVE)
    suspicion_timeout: float = setting(1.5, POSITIVE)
    suspicion_max_mult: float = setting(2.0, Check(lambda v: v >= 1, "a number >= 1"))
    retransmit_mult: int = setting(4, POSITIVE)
    push_pull_interval: float = setting(15.0, POSITIVE)
    # Links: redial backoff (doubling, with jitter), handshake limit, frame and queue limits.
    reconnect_min: float = setting(0.1, POSITIVE)
    reconnect_max: float = setting(5.0, POSITIVE)
    handshake_timeout: float = setting(5.0, POSITIVE)
    max_frame_bytes: int = setting(1024 * 1024, Check(lambda v: v >= 1024, "an integer >= 1024"))
    queue_max_bytes: int = setting(8 * 1024 * 1024, POSITIVE)
    # On shutdown the node drains first (peers' DNS stops giving it out) and keeps serving
    # this long before it leaves: set it to the geo names' TTL for restarts no client sees.
    drain_seconds: float = setting(0.0, NON_NEGATIVE)


SECTION = Section("mesh", MeshConfig, MeshConfig)
