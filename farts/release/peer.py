"""A release bundle from the deploy's runner to a node, over the mesh (typed peer messages).

The runner offers the bundle (``BundleOffer``: its version, SHA-256 and size); the node
pulls it chunk by chunk as any blob (farts/transfer.py: ``BundleAsk``/``BundleChunk``, a
window of them, asked again when they stall, the whole bundle's SHA-256 checked), then
verifies it as any bundle (signature, hashes, platform, downgrade: ``ReleaseNode.stage``)
and answers ``BundleVerdict``, which a failed transfer answers too. A node installs
nothing it did not verify itself; the runner's word is never taken for it. The runner
gives up on a node that asks nothing and answers nothing for ``STALL`` seconds.

(``release.chunk`` is version 2: version 1 was pushed by the runner and acknowledged;
a node of a release before this one refuses a version-2 chunk, so its runner's bundle
reaches it over HTTP only when it is outside the mesh.)
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from farts import transfer
from farts.clock import Clock, Timer
from farts.members import SERVING
from farts.peer import Envelope, PeerBus, PeerMessage, need

log = logging.getLogger("farts.release")

MAX_BUNDLE = 1 << 30        # what a node accepts to hold (a bundle is a wheel or a few: tens of MB)
STALL = 60.0                # seconds without an ask or a verdict from the node: the transfer failed


@dataclass(frozen=True, slots=True)
class BundleOffer(PeerMessage):
    TYPE = "release.offer"
    VERSION = 1
    version: str
    sha256: str             # of the whole bundle (hex)
    size: int
    allow_downgrade: bool

    def to_wire(self) -> dict:
        return {"version": self.version, "sha256": self.sha256, "size": self.size,
                "allow_downgrade": self.allow_downgrade}

    @classmethod
    def from_wire(cls, body: Any) -> BundleOffer:
        blob = transfer.offered(cls, body, MAX_BUNDLE)
        need(cls, isinstance(body.get("version"), str) and 0 < len(body["version"]) <= 100, "version")
        need(cls, isinstance(body.get("allow_downgrade"), bool), "allow_downgrade")
        return cls(body["version"], blob.sha256, blob.size, body["allow_downgrade"])


class BundleAsk(transfer.Ask):
    __slots__ = ()
    TYPE = "release.ask"


class BundleChunk(transfer.Chunk):
    __slots__ = ()
    TYPE = "release.chunk"
    VERSION = 2


@dataclass(frozen=True, slots=True)
class BundleVerdict(PeerMessage):
    TYPE = "release.verdict"
    VERSION = 1
    version: str
    ok: bool
    reason: str             # why the node refused it ("" when ok)

    def to_wire(self) -> list:
        return [self.version, self.ok, self.reason]

    @classmethod
    def from_wire(cls, body: Any) -> BundleVerdict:
        need(cls, isinstance(body, list) and len(body) == 3 and isinstance(body[0], str)
             and isinstance(body[1], bool) and isinstance(body[2], str) and len(body[2]) <= 4096,
             "[version, ok, reason]")
        return cls(*body)


@dataclass(slots=True)
class _Sending:
    """The runner's side of one bundle to one node."""
    version: str
    sha256: str
    data: bytes
    done: asyncio.Future
    timer: Timer | None = field(default=None)


class BundlePeer:
    """Both sides on one node: ``send`` (the runner) and the pulling of offered bundles,
    verified with ``stage(data, allow_downgrade) -> version`` (blocking, run in the thread
    pool; raises ``bundle.Refused``)."""

    def __init__(self, me: str, bus: PeerBus, clock: Clock, stage: Callable[[bytes, bool], Any],
                 refused: type[Exception]) -> None:
        self.me, self.bus, self.clock, self.stage, self.refused = me, bus, clock, stage, refused
        self.offers: dict[str, BundleOffer] = {}           # runner -> the bundle pulled from it
        self.outgoing: dict[str, _Sending] = {}            # node -> the bundle offered to it
        self.transfers = transfer.Transfers(bus, clock, BundleAsk, BundleChunk, find=self._find,
                                            received=self._received, failed=self._failed,
                                            served=self._served)
        bus.subscribe(BundleOffer, self._offer)
        bus.subscribe(BundleVerdict, self._verdict)

    # -- the runner ------------------------------------------------------------------------------
    def linked(self, node: str) -> bool:
        return node != self.me and any(m.id == node and m.state in SERVING for m in self.bus.members())

    async def send(self, node: str, version: str, data: bytes, allow_downgrade: bool) -> tuple[bool, str]:
        """The bundle to ``node``; (ok, why not) once the node has verified it (or not)."""
        self._end(node, (False, "superseded by a new transfer"))
        loop = asyncio.get_running_loop()
        sha256 = await loop.run_in_executor(None, lambda: hashlib.sha256(data).hexdigest())
        sending = self.outgoing[node] = _Sending(version, sha256, data, loop.create_future())
        if self.bus.send(node, BundleOffer(version, sha256, len(data), allow_downgrade)):
            self._served(node, sha256)
        else:
            self._end(node, (False, f"no mesh link to {node} (or its queue is full)"))
        return await sending.done

    def _find(self, sha256: str) -> bytes | None:
        return next((s.data for s in self.outgoing.values() if s.sha256 == sha256), None)

    def _served(self, node: str, sha256: str) -> None:
        """The node asked for a chunk (or was offered the bundle): its time to answer starts again."""
        sending = self.outgoing.get(node)
        if sending is None or sending.sha256 != sha256:
            return
        if sending.timer is not None:
            sending.timer.cancel()
        sending.timer = self.clock.call_later(
            STALL, self._end, node, (False, f"no answer over the mesh from {node} for {STALL:g} s"))

    def _verdict(self, msg: BundleVerdict, env: Envelope) -> None:
        sending = self.outgoing.get(env.origin)
        if sending is not None and sending.version == msg.version:
            self._end(env.origin, (msg.ok, msg.reason))

    def _end(self, node: str, result: tuple[bool, str]) -> None:
        sending = self.outgoing.pop(node, None)
        if sending is None:
            return
        if sending.timer is not None:
            sending.timer.cancel()
        if not sending.done.done():
            sending.done.set_result(result)

    # -- a node ----------------------------------------------------------------------------------
    def _offer(self, msg: BundleOffer, env: Envelope) -> None:
        self.offers[env.origin] = msg
        log.info("release %s: pulling it over the mesh from %s (%d bytes)", msg.version, env.origin, msg.size)
        try:
            self.transfers.pull(env.origin, transfer.Blob(msg.sha256, msg.size), env.origin, MAX_BUNDLE)
        except transfer.Failed as e:
            self._failed(env.origin, None, e)

    def _failed(self, origin: str, pull: transfer.Pull | None, e: transfer.Failed) -> None:
        offer = self._offered(origin, pull)
        if offer is not None:
            self.bus.send(origin, BundleVerdict(offer.version, False, f"the transfer failed: {e}"[:4096]))

    def _offered(self, origin: str, pull: transfer.Pull | None) -> BundleOffer | None:
        """The offer that ``pull`` (None: not started) answers, done with; None when a newer
        offer from that runner replaced it meanwhile."""
        offer = self.offers.get(origin)
        if offer is None or (pull is not None and offer.sha256 != pull.blob.sha256):
            return None
        return self.offers.pop(origin)

    async def _received(self, origin: str, pull: transfer.Pull, data: bytes) -> None:
        offer = self._offered(origin, pull)
        if offer is None:
            return
        log.info("release %s: received over the mesh from %s (%d bytes); verifying it", offer.version,
                 origin, len(data))
        ok, reason = True, ""
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.stage, data, offer.allow_downgrade)
        except self.refused as e:      # (stage logged and counted it)
            ok, reason = False, str(e)
        except OSError as e:
            log.warning("release %s from %s: cannot stage it: %s", offer.version, origin, e)
            ok, reason = False, f"cannot stage it: {e}"
        self.bus.send(origin, BundleVerdict(offer.version, ok, reason[:4096]))

    def stop(self) -> None:
        self.transfers.stop()
        for node in list(self.outgoing):
            self._end(node, (False, "this node stops"))
