"""The webhooks service on a real LMDB store, delivering to a real aiohttp receiver that
checks signatures: failed first attempts, a slow receiver, a receiver down for a
while, dead letters and retry by hand, request forgery refused, the MongoDB collection
claimed, outcomes fenced by the master's epoch."""
from __future__ import annotations

import asyncio

import pytest
from conftest import free_port
from webhook_receiver import Receiver, until

from farts.clock import LoopClock
from farts.config import Tenant
from farts.db.store import Store
from farts.metrics import Metrics
from farts.transport.client import Client
from farts.webhooks import queue
from farts.webhooks.config import WebhooksConfig
from farts.webhooks.service import Webhooks

SECRETS = {"demo": b"demo-hook-secret", "other": b"other-secret"}
TENANTS = [Tenant("demo", ["localhost"], ["demo-key"], "demo-secret"),
           Tenant("other", ["other.test"], ["other-key"], "other-secret")]


class Setup:
    def __init__(self, tmp_path, **overrides) -> None:
        # (the circuit breaker stays out of the way but where a test is about it)
        opts = dict(enabled=True, allow_loopback=True, backoff_min=0.05, backoff_max=0.2, scan_interval=0.05,
                    secrets={"demo": "demo-hook-secret"}, breaker_failures=10**6)
        opts.update(overrides)
        self.store = Store(tmp_path / "db", "n1", sync=False)
        self.clock = LoopClock()
        self.client = Client(self.clock)
        self.metrics = Metrics()
        self.hooks = Webhooks(WebhooksConfig(**opts), TENANTS, lambda: self.store, self.metrics, self.clock,
                              self.client)

    async def start(self) -> Webhooks:
        await self.hooks.start()
        return self.hooks

    def count(self, name: str, key: tuple = ()) -> float:
        return self.metrics.get(name).get(key)

    def states(self) -> tuple[int, int]:
        lst = queue.listing(self.store)
        return lst["pending"]["count"], lst["dead"]["count"]

    async def close(self) -> None:
        await self.hooks.stop()
        self.client.close()
        self.store.close()


def items(port: int, n: int, path: str = "/hook/demo") -> list[dict]:
    return [{"url": f"http://127.0.0.1:{port}{path}", "event": "comment.created", "payload": {"n": i}}
            for i in range(n)]

def run(tmp_path, body, receivers=(), **overrides) -> None:
    """``body(s, hooks, *ports)``: a started service and the receivers listening."""
    async def main():
        ports = [await rx.start() for rx in receivers]
        s = Setup(tmp_path, **overrides)
        hooks = await s.start()
        try:
            await body(s, hooks, *ports)
        finally:
            await s.close()
            for rx in receivers:
                await rx.stop()
    asyncio.run(main())


def test_signed_deliveries_after_failed_first_attempts_only_while_master(tmp_path):
    rx = Receiver(SECRETS, fail_first=2)
    async def body(s, hooks, port):
        ids = await hooks.enqueue("demo", items(port, 50))
        await asyncio.sleep(0.3)
        assert not rx.attempts                        # not the master: nothing is delivered
        assert s.states() == (50, 0)
        hooks.set_master(1)
        await until(lambda: len(rx.delivered) == 50, what="50 deliveries")
        await until(lambda: s.states() == (0, 0), what="an empty queue")
        assert rx.bad_signatures == 0
        assert all(rx.attempts[i] == 3 and rx.delivered[i] == 1 for i in ids)
        assert sorted(rx.bodies[i]["data"]["n"] for i in ids) == list(range(50))
        assert rx.headers[ids[0]]["webhook-attempt"] == "3"
        assert s.count("farts_webhooks_delivered_total") == 50
        assert s.count("farts_webhooks_retried_total", ("http_5xx",)) == 100
    run(tmp_path, body, [rx])


def test_slow_receiver_times_out_and_is_retried_with_the_same_id(tmp_path):
    rx = Receiver(SECRETS, slow_first=1.5)
    async def body(s, hooks, port):
        ids = await hooks.enqueue("demo", items(port, 5))
        hooks.set_master(1)
        await until(lambda: s.states() == (0, 0), what="an empty queue")
        assert all(rx.attempts[i] == 2 for i in ids)
        assert s.count("farts_webhooks_retried_total", ("timeout",)) == 5
        await until(lambda: all(rx.delivered[i] == 2 for i in ids), what="the slow first answers")
    run(tmp_path, body, [rx], timeout=0.3)


def test_receiver_down_for_a_while_opens_the_circuit_then_everything_arrives(tmp_path):
    rx = Receiver(SECRETS)
    async def body(s, hooks):
        port = free_port()
        ids = await hooks.enqueue("demo", items(port, 20))
        hooks.set_master(1)
        key = f"http://127.0.0.1:{port}"
        await until(lambda: hooks.active.scheduler.dests.get(key) is not None
                    and hooks.active.scheduler.dests[key].open_until > 0, what="the circuit to open")
        assert s.count("farts_webhooks_retried_total", ("connection",)) >= 3
        await rx.start(port)
        try:
            await until(lambda: all(rx.delivered[i] >= 1 for i in ids), what="every delivery once the receiver is up")
            await until(lambda: s.states() == (0, 0), what="an empty queue")
        finally:
            await rx.stop()
        assert hooks.active.scheduler.dests[key].open_until == 0
        assert s.count("farts_webhooks_dead_lettered_total", ("window",)) == 0
    run(tmp_path, body, breaker_failures=3, breaker_cooldown=0.3)


def test_dead_letters_after_the_window_and_retry_by_hand(tmp_path):
    rx = Receiver(SECRETS, fail_first=10**9)
    async def body(s, hooks, port):
        ids = await hooks.enqueue("demo", items(port, 4))
        hooks.set_master(1)
        await until(lambda: s.states() == (0, 4), what="4 dead letters")
        assert s.count("farts_webhooks_dead_lettered_total", ("window",)) == 4
        dead = queue.listing(s.store)["dead"]["deliveries"]
        assert {d["_id"] for d in dead} == set(ids) and all(d["error"] == "HTTP 500" for d in dead)
        rx.fail_first = 0
        assert await hooks.retry(ids[0]) == "queued"
        assert await hooks.retry("wh_nothing") == "unknown"
        await until(lambda: rx.delivered[ids[0]] == 1, what="the retried delivery")
        await until(lambda: s.states() == (0, 3), what="3 dead letters left")
    run(tmp_path, body, [rx], window=0.5)


def test_request_forgery_refused_at_enqueue_or_when_resolved(tmp_path):
    rx = Receiver(SECRETS)
    async def body(s, hooks, port):
        for url in (f"http://127.0.0.1:{port}/hook", "http://169.254.169.254/latest/meta-data/",
                    "http://[::1]/", "http://10.0.0.1/", "file:///etc/passwd"):
            with pytest.raises(queue.BadDelivery):
                await hooks.enqueue("demo", [{"url": url, "event": "e", "payload": {}}])
        (did,) = await hooks.enqueue("demo", [{"url": f"http://localhost:{port}/hook", "event": "e", "payload": {}}])
        hooks.set_master(1)
        await until(lambda: s.states() == (0, 1), what="the dead letter")
        (dead,) = queue.listing(s.store)["dead"]["deliveries"]
        assert dead["_id"] == did and "loopback" in dead["error"]
        assert not rx.attempts
        assert s.count("farts_webhooks_dead_lettered_total", ("refused",)) == 1
    run(tmp_path, body, [rx], allow_loopback=False)


def test_documents_inserted_into_the_collection_are_claimed_and_delivered(tmp_path):
    rx = Receiver(SECRETS)
    async def body(s, hooks, port):
        ns = "demo$farts.webhooks"

        def insert(w):
            w.insert(ns, {"_id": 1, "url": f"http://127.0.0.1:{port}/hook/demo", "event": "a", "payload": {"x": 1}})
            w.insert(ns, {"_id": 2, "url": "gopher://nowhere\x1b[2J", "event": "b\x1b]0;pwned\x07", "payload": {}})
        await asyncio.wrap_future(s.store.submit(insert))
        hooks.set_master(1)
        good, bad = queue.claimed_id(s.store, "demo", 1), queue.claimed_id(s.store, "demo", 2)
        await until(lambda: rx.delivered[good] == 1, what="the claimed delivery")
        await until(lambda: s.states() == (0, 1), what="the bad one dead-lettered")
        assert rx.bodies[good]["data"] == {"x": 1}
        (dead,) = queue.listing(s.store)["dead"]["deliveries"]
        assert dead["_id"] == bad and "not enqueued" in dead["error"]
        # (shown on an operator's terminal by `webhooks list`: no control characters kept)
        assert dead["url"] == "gopher://nowhere?[2J" and dead["event"] == "b?]0;pwned?"
        with s.store.read() as txn:
            assert s.store.count_keys(txn, ns) == 0
        assert s.count("farts_webhooks_enqueued_total", ("mongodb",)) == 2
        # found through the operation log: one full scan (the first look), then the log's
        assert s.count("farts_webhooks_queue_looks_total", ("full",)) == 1
        assert s.count("farts_webhooks_queue_looks_total", ("log",)) > 0
    run(tmp_path, body, [rx])


def test_outcomes_are_fenced_by_the_epoch(tmp_path):
    async def body(s, hooks):
        a, b = await hooks.enqueue("demo", items(9, 2))
        submit = lambda fn: asyncio.wrap_future(s.store.submit(fn))   # noqa: E731
        assert await submit(lambda w: queue.record(w, 5, [("retry", a, {"attempts": 1, "due": 0.0, "error": "x",
                                                                       "status": 500})])) == [queue.DONE]
        # epoch 3 lost its lease: it may not delete what epoch 5 wrote
        assert await submit(lambda w: queue.record(w, 3, [("delivered", a), ("delivered", b)])) == \
            [queue.FENCED, queue.DONE]
        assert await submit(lambda w: queue.record(w, 5, [("delivered", b)])) == [queue.GONE]
        assert s.states() == (1, 0)
    run(tmp_path, body)


def test_bad_enqueues_are_refused_with_the_field_named(tmp_path):
    async def body(s, hooks):
        cases = [({"url": "http://127.0.0.1/", "event": "", "payload": {}}, "event"),
                 ({"url": "http://127.0.0.1/", "event": "e", "payload": "x" * 2000}, "max_payload_bytes"),
                 ({"url": None, "event": "e", "payload": {}}, "url"),
                 ("nope", "expected")]
        for item, words in cases:
            with pytest.raises(queue.BadDelivery, match=words):
                await hooks.enqueue("demo", [item])
        with pytest.raises(queue.BadDelivery, match="secret"):
            await hooks.enqueue("nobody", items(9, 1))
        assert s.states() == (0, 0)
    run(tmp_path, body, max_payload_bytes=1000)


def test_the_watch_reads_changes_from_the_oplog_and_says_when_it_cannot(tmp_path):
    async def body(s, hooks):
        (first,) = await hooks.enqueue("demo", items(9, 1))
        watch = queue.Watch(s.store, queue.QUEUE_NS)
        assert watch.changed() == set()
        second = await hooks.enqueue("demo", items(9, 2))
        await asyncio.wrap_future(s.store.submit(lambda w: w.insert("demo$app.other", {"_id": 1})))
        await asyncio.wrap_future(s.store.submit(lambda w: queue.record(w, 1, [("delivered", first)])))
        watch.BUDGET = 2                               # (a look reads at most BUDGET records: here, 2 of 4)
        # the insert in the other namespace is not among them; the delete of first is
        assert [watch.changed() for _ in range(3)] == [set(second), {first}, set()]
        await hooks.enqueue("demo", items(9, 1))
        await asyncio.wrap_future(s.store.truncate("n1", s.store.applied()["n1"][0]))   # dropped unread
        assert watch.changed() is None
    run(tmp_path, body)


def test_a_master_does_not_send_what_a_higher_epoch_holds(tmp_path):
    rx = Receiver(SECRETS)
    async def body(s, hooks, port):
        a, b = await hooks.enqueue("demo", items(port, 2))
        await asyncio.wrap_future(s.store.submit(lambda w: queue.record(
            w, 5, [("retry", a, {"attempts": 1, "due": 0.0, "error": "x", "status": 500})])))
        hooks.set_master(3)                     # an older master than the one that wrote a
        await until(lambda: rx.delivered[b] == 1 and s.states() == (1, 0), what="b delivered")
        assert rx.attempts[a] == 0
    run(tmp_path, body, [rx])


def test_410_gone_dead_letters_at_once_and_other_4xx_are_retried(tmp_path):
    gone, refusing = Receiver(SECRETS, status=410), Receiver(SECRETS, status=422)
    async def body(s, hooks, gone_port, refusing_port):
        (g,) = await hooks.enqueue("demo", items(gone_port, 1))
        (r,) = await hooks.enqueue("demo", items(refusing_port, 1))
        hooks.set_master(1)
        await until(lambda: s.states()[1] == 1 and refusing.attempts[r] >= 3, what="410 dead, 422 retried")
        assert gone.attempts[g] == 1 and s.count("farts_webhooks_dead_lettered_total", ("gone",)) == 1
        assert s.count("farts_webhooks_retried_total", ("http_4xx",)) >= 2
    run(tmp_path, body, [gone, refusing])


def test_a_large_insert_into_the_collection_is_claimed_a_batch_per_look(tmp_path, monkeypatch):
    # (an app inserting a million documents must not make one look decode and move them all)
    from farts.webhooks import service
    monkeypatch.setattr(service, "CLAIM_BATCH", 5)
    rx = Receiver(SECRETS)
    async def body(s, hooks, port):
        ns = "demo$farts.webhooks"
        await asyncio.wrap_future(s.store.submit(lambda w: [
            w.insert(ns, {"_id": i, "url": f"http://127.0.0.1:{port}/hook/demo", "event": "a", "payload": i})
            for i in range(12)]))
        hooks.set_master(1)          # one look now, the next one scan_interval (an hour) later
        await until(lambda: s.count("farts_webhooks_enqueued_total", ("mongodb",)) == 5, what="one batch claimed")
        with s.store.read() as txn:
            assert s.store.count_keys(txn, ns) == 7
    run(tmp_path, body, [rx], scan_interval=3600.0)


def test_a_claimed_delivery_keeps_its_id_across_versions():
    """Two nodes of different releases claiming the same document make one delivery: the
    id comes from the _id's key bytes (the values below are what releases before the
    store handed its key layout over computed)."""
    assert queue.claimed_id(Store, "demo", "m1") == "wh_a3ad903a7be091be943502f9"
    assert queue.claimed_id(Store, "demo", 1) == "wh_d40cc25966768bf5cef8598b"
    assert queue.claimed_id(Store, "demo", 1.0) != queue.claimed_id(Store, "demo", "1")
