"""/healthz: whether this node can do its job, part by part, so a load balancer or a
deploy can trust a 200.

Parts (each "ok" or the reason it fails):

- ``listeners.<name>``: every listening socket of the node (HTTP, HTTPS, admin, DB,
  DNS over TCP and UDP, mesh) is open and accepting: its server is serving and it is
  below its connection limit (a listener at ``max_connections`` refuses new clients).
- ``store``: the DB store takes a write: a transaction that puts a ``PROBE_BYTES`` record
  and deletes it again goes through the store's writer thread and commits, within
  ``STORE_TIMEOUT`` (no data changes). A full map (no room for a record of that size),
  a failed disk or a dead writer fails it. The answer is
  kept for ``STORE_EVERY`` seconds, so health checks in a loop cost one commit a second.
- ``mesh`` (when configured): the mesh runs and has joined: it is not leaving, and
  when it has seeds, it knows at least one other member (a node whose seeds all failed
  never joined; one whose peers died later still serves, and says so in its members).
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

STORE_TIMEOUT = 2.0
STORE_EVERY = 1.0
PROBE_BYTES = 16 * 1024


def kit_state(kit) -> str:
    """'ok' or why a listener kit does not accept connections."""
    if not kit.accepting:
        return "not listening"
    if kit.open >= kit.max_connections:
        return f"not accepting: at its connection limit ({kit.open} of {kit.max_connections} open)"
    return "ok"


class Health:
    def __init__(self, listeners: Callable[[], dict[str, str]],
                 store_write: Callable[[], Awaitable] | None,
                 mesh: Callable[[], str] | None, monotonic: Callable[[], float]) -> None:
        """``listeners()``: name -> state; ``store_write()``: an awaitable that raises when
        the store cannot commit; ``mesh()``: its state ('ok' or why not)."""
        self.listeners = listeners
        self.store_write = store_write
        self.mesh = mesh
        self.monotonic = monotonic
        self._store: tuple[float, str] | None = None
        self._probe: asyncio.Future | None = None

    async def _store_state(self) -> str:
        now = self.monotonic()
        if self._store is not None and now - self._store[0] < STORE_EVERY:
            return self._store[1]
        if self._probe is None:  # one probe at a time, whatever the number of callers
            self._probe = asyncio.ensure_future(self._run_store_probe())
        probe = self._probe
        try:
            return await asyncio.shield(probe)
        finally:
            if probe.done() and self._probe is probe:
                self._probe = None

    async def _run_store_probe(self) -> str:
        try:
            await asyncio.wait_for(self.store_write(), STORE_TIMEOUT)
            state = "ok"
        except TimeoutError:
            state = f"not writable: a write did not commit within {STORE_TIMEOUT:g} s"
        except Exception as e:  # noqa: BLE001 - any failure of the store is the answer
            state = f"not writable: {e}"
        self._store = (self.monotonic(), state)
        return state

    async def check(self) -> tuple[bool, dict[str, str]]:
        parts = {f"listeners.{name}": state for name, state in self.listeners().items()}
        if self.store_write is not None:
            parts["store"] = await self._store_state()
        if self.mesh is not None:
            parts["mesh"] = self.mesh()
        return all(v == "ok" for v in parts.values()), parts
