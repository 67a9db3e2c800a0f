"""Latency on one link, from a delaying TCP relay: the slow pair keep each other alive
through indirect probes via a third node, and the RTT they report shows the delay."""
from __future__ import annotations

import asyncio
import re
import threading
import time

from mesh_helpers import make_ca, mesh_address, mesh_view, metric, start_mesh_node, states

DELAY = 0.4  # one way: an RTT of 0.8 s, past the test config's 0.25 s probe timeout


class DelayRelay:
    """Forwards TCP to a target, each chunk held back DELAY seconds (order kept)."""

    def __init__(self) -> None:
        self.target: tuple[str, int] | None = None
        self.delay = 0.0
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _pipe(self, reader, writer) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if data is None:
                    writer.close()
                    return
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(data)

        sender = asyncio.ensure_future(send())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((time.monotonic() + self.delay, data))
        except ConnectionError:
            pass
        queue.put_nowait((time.monotonic() + self.delay, None))
        await sender

    async def _client(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except (OSError, TypeError):  # TypeError: no target yet
            writer.close()
            return
        self.connections += 1
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer),
                             return_exceptions=True)

    async def _shutdown(self) -> None:
        self.server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_a_slow_link_is_bridged_by_indirect_probes(tmp_path):
    ca = make_ca(tmp_path)
    relay = DelayRelay()
    nodes = []
    try:
        n1 = start_mesh_node(tmp_path, ca, "node-1", [])
        nodes.append(n1)
        n3 = start_mesh_node(tmp_path, ca, "node-3", [mesh_address(n1)])
        nodes.append(n3)
        # node-2 joins through node-3 and tells the others to dial it through the relay;
        # node-1 (the smaller id) does, so the node-1/node-2 link carries the delay.
        n2 = start_mesh_node(tmp_path, ca, "node-2", [mesh_address(n3)],
                             extra=f'advertise = "127.0.0.1:{relay.port}"\n')
        nodes.append(n2)
        real = re.search(rb"mesh\s+mesh://127\.0\.0\.1:(\d+)/", b"".join(n2.output)).group(1)
        relay.target = ("127.0.0.1", int(real))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            views = [states(n) for n in nodes]
            links = {m["id"]: m["link"] for m in mesh_view(n1)["members"]}
            # ... and node-1's own link through the relay has replaced node-2's seed link.
            if (all(len(v) == 3 and {s for s, _ in v.values()} == {"alive"} for v in views) and links["node-2"]
                    and relay.connections):
                break
            time.sleep(0.2)
        else:
            raise AssertionError([states(n) for n in nodes])

        relay.delay = DELAY
        before = metric(n1, "farts_mesh_indirect_probes_total")
        end = time.monotonic() + 6
        while time.monotonic() < end:
            for n in nodes:
                assert "dead" not in {s for s, _ in states(n).values()}, [states(x) for x in nodes]
            time.sleep(0.2)
        assert metric(n1, "farts_mesh_indirect_probes_total") > before
        rtt = next(m["rtt_ms"] for m in mesh_view(n3)["members"] if m["id"] == "node-2")
        assert rtt < DELAY * 1000  # node-3's own link to node-2 is not delayed
        assert all(s == "alive" for s, _ in states(n1).values())
    finally:
        for n in nodes:
            n.stop()
        relay.close()
