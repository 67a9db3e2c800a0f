"""The lease's adapter alone (no mesh, no database: a deployment of one node on a real
loop): the promise is written before anything that depends on it, and a promise that
cannot be written holds everything back until it can."""
from __future__ import annotations

import asyncio
import json

from farts import config
from farts.clock import LoopClock
from farts.master.service import MasterService
from farts.metrics import Metrics


def service(tmp_path) -> MasterService:
    cfg = config.parse(f'[node]\ndata_dir = "{tmp_path}"\n[db]\nenabled = true\n'
                       '[master]\nenabled = true\nlease_seconds = 0.5\n', str(tmp_path / "farts.toml"))
    return MasterService(cfg, Metrics(), LoopClock(), lambda: None)


async def until(check, seconds: float) -> bool:
    for _ in range(int(seconds / 0.05)):
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


def test_a_promise_that_cannot_be_written_holds_the_master_back_until_it_can(tmp_path):
    blocker = tmp_path / "master" / "lease-global.tmp"   # where the write goes before its rename
    blocker.mkdir(parents=True)
    roles = []

    async def main():
        s = service(tmp_path)
        s.on_role(lambda active, epoch: roles.append((active, epoch)))
        await s.start()
        assert await until(lambda: s.persist_failures.get() >= 2, 10)
        assert not s.acting() and roles == []           # no role before the promise is durable
        blocker.rmdir()
        assert await until(s.acting, 10)
        s.stop()
        # Each role that started stopped, with its epoch (a loaded machine may renew late
        # and start again above; an epoch whose lease ran out during the retries never started).
        assert roles and roles[0::2] == [(True, e) for _, e in roles[1::2]]
        assert roles[1::2] == [(False, e) for _, e in roles[0::2]] and not s.acting()
        promise = json.loads((tmp_path / "master" / "lease-global.json").read_text())
        assert promise == {"deployment": "global", "epoch": roles[-1][1], "holder": "node-1"}
    asyncio.run(main())


def test_a_restarted_node_goes_on_above_its_persisted_promise(tmp_path):
    (tmp_path / "master").mkdir()
    (tmp_path / "master" / "lease-global.json").write_text(
        json.dumps({"deployment": "global", "epoch": 41, "holder": "node-9"}))

    async def main():
        s = service(tmp_path)
        await s.start()
        assert await until(s.acting, 10)   # after the restored promise ran out (one lease)
        assert s.epoch() == 42
        s.stop()
    asyncio.run(main())
