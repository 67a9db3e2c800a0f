"""The webhook queue in the node's replicated store (the DB service's, handed over by
node.py: its writes, its reads and ``key``, the layout of its keys).

Two reserved namespaces (no client can name them: a client's namespace is always
``tenant$db.coll``, these have no ``$``): ``farts:webhooks`` holds the deliveries still to
be made, ``farts:webhooks.dead`` the dead letters. A delivery is one document::

    {_id: "wh_…" (the delivery id), tenant, url, event, body (the exact bytes sent),
     created, since (wall seconds: the retry window starts here), due, attempts,
     error, status (the last attempt's), epoch (the master's fencing token, 0 at enqueue)}

An enqueue is one insert, committed to the local LMDB before it is acknowledged and
replicated to every node from there, so whichever node is master has it. The master
deletes a delivery once delivered, updates it after a failed attempt and moves it to
the dead letters at the end of its window; each of those writes carries the master's
epoch and is refused (``FENCED``) when the document bears a higher one: a master that
lost its lease does not undo what the next one wrote.

The functions taking ``w`` run in the store's writer thread (``Store.submit``); the
others read with a read transaction and never wait.
"""
from __future__ import annotations

import datetime
import hashlib
import secrets
from typing import Any

import bson

from . import signing, ssrf

Store = Any   # the DB service's store (farts/db/store.py), duck-typed as the master's state is

QUEUE_NS = "farts:webhooks"
DEAD_NS = "farts:webhooks.dead"
DONE, FENCED, GONE = "done", "fenced", "gone"
MAX_EVENT = 200


class BadDelivery(ValueError):
    """A delivery that cannot be enqueued (the message names the field)."""


def new_id() -> str:
    return "wh_" + secrets.token_hex(12)


def claimed_id(store: Store, tenant: str, source_id) -> str:
    """The delivery id of a document inserted into the MongoDB collection: the same
    whichever node claims it (two claims make one delivery, not two): from the bytes of
    its _id's key (type and value)."""
    return "wh_" + hashlib.sha256(tenant.encode() + b"\0" + store.id_key(source_id)).hexdigest()[:24]


def make(tenant: str, url, event, data, now: float, max_payload_bytes: int,
         delivery_id: str | None = None) -> dict:
    """A delivery document; raises BadDelivery."""
    try:
        ssrf.parse_url(url)
    except ssrf.Refused as e:
        raise BadDelivery(str(e)) from None
    if not isinstance(event, str) or not event or len(event) > MAX_EVENT or not event.isprintable():
        raise BadDelivery(f"event: a printable string of 1-{MAX_EVENT} characters")
    delivery_id = delivery_id or new_id()
    try:
        body = signing.envelope(delivery_id, event, now, data)
    except (TypeError, ValueError) as e:
        raise BadDelivery(f"payload: not JSON ({e})") from None
    if len(body) > max_payload_bytes:
        raise BadDelivery(f"payload: {len(body)} bytes, over webhooks.max_payload_bytes ({max_payload_bytes})")
    return {"_id": delivery_id, "tenant": tenant, "url": url, "event": event, "body": body,
            "created": now, "since": now, "due": now, "attempts": 0, "error": "", "status": 0, "epoch": 0}


def enqueue(w, docs: list[dict]) -> None:
    for doc in docs:
        w.insert(QUEUE_NS, doc)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def fenced(doc: dict, epoch: int) -> bool:
    """A master with a higher epoch has written this delivery."""
    return doc.get("epoch", 0) > epoch


def record(w, epoch: int, results: list[tuple]) -> list[str]:
    """The outcomes of attempts, in one write: ("delivered", id), ("retry", id, fields)
    or ("dead", id, fields). Returns each one's DONE, FENCED or GONE (not queued here any
    more: delivered or moved by another node)."""
    out = []
    for kind, did, *rest in results:
        doc = w.get(QUEUE_NS, did)
        if doc is None:
            out.append(GONE)
            continue
        if fenced(doc, epoch):
            out.append(FENCED)
            continue
        if kind == "delivered":
            w.delete(QUEUE_NS, doc)
        else:
            changes = {**rest[0], "epoch": epoch}
            new = {**doc, **changes}
            if kind == "retry":
                w.replace(QUEUE_NS, doc, new, {"op": "u", "u": {"$set": changes}, "now": _now()})
            else:
                w.delete(QUEUE_NS, doc)
                _put_dead(w, new)
        out.append(DONE)
    return out


def _put_dead(w, doc: dict) -> None:
    old = w.get(DEAD_NS, doc["_id"])
    if old is None:
        w.insert(DEAD_NS, doc)
    else:   # dead-lettered before (a retry ran into its window again)
        w.replace(DEAD_NS, old, doc, {"op": "r", "doc": doc})


def retry(w, delivery_id: str, now: float) -> str:
    """A dead letter back in the queue with a new window: "queued", "pending" (it was
    not dead) or "unknown"."""
    doc = w.get(DEAD_NS, delivery_id)
    if doc is None:
        return "pending" if w.get(QUEUE_NS, delivery_id) is not None else "unknown"
    w.delete(DEAD_NS, doc)
    if w.get(QUEUE_NS, delivery_id) is None:
        w.insert(QUEUE_NS, {**doc, "since": now, "due": now, "attempts": 0, "error": "", "status": 0})
    return "queued"


def claim(w, source_ns: str, tenant: str, source_ids: list, now: float, max_payload_bytes: int) -> list[str]:
    """Moves documents a tenant's app inserted into the MongoDB collection into the queue
    (``{url, event, payload}``); one that is not a valid delivery goes to the dead letters
    with the reason. Returns the delivery ids."""
    out = []
    for sid in source_ids:
        src = w.get(source_ns, sid)
        if src is None:
            continue   # claimed already
        did = claimed_id(w.store, tenant, sid)
        try:
            doc = make(tenant, src.get("url"), src.get("event"), src.get("payload"), now, max_payload_bytes, did)
            ns = QUEUE_NS
        except BadDelivery as e:
            doc = {"_id": did, "tenant": tenant, "url": _shown(src.get("url"), 2048), "event": _shown(src.get("event"), 200),
                   "body": b"", "created": now, "since": now, "due": now, "attempts": 0,
                   "error": f"not enqueued: {e}", "status": 0, "epoch": 0}
            ns = DEAD_NS
        w.delete(source_ns, src)
        if w.get(QUEUE_NS, did) is None and w.get(DEAD_NS, did) is None:
            w.insert(ns, doc)
        out.append(did)
    return out


def _shown(value, limit: int) -> str:
    """A field of a refused document as the dead letter keeps it: printable only (listings
    and `farts-edge webhooks list` show it on an operator's terminal; an ESC would not be)."""
    return "".join(c if c.isprintable() else "?" for c in str(value)[:limit])


# ---- reads ----

def scan(store: Store, ns: str, known: dict[bytes, object]) -> tuple[list[dict], list[bytes]]:
    """(documents of ns whose key is not in ``known``, keys in ``known`` no longer there):
    keys only are read for what is known (a look every scan_interval stays cheap)."""
    prefix = store.key(ns)
    new: list[dict] = []
    seen: set[bytes] = set()
    with store.read() as txn:
        cur = txn.cursor()
        if cur.set_range(prefix):
            for k in cur.iternext(keys=True, values=False):
                if not k.startswith(prefix):
                    break
                seen.add(k)
                if k not in known:
                    new.append(bson.decode(txn.get(k)))
    return new, [k for k in known if k not in seen]


def first_docs(store: Store, ns: str, limit: int) -> list[dict]:
    """The first ``limit`` documents of ns (in key order)."""
    prefix = store.key(ns)
    out: list[dict] = []
    with store.read() as txn:
        cur = txn.cursor()
        if cur.set_range(prefix):
            for k, v in cur:
                if not k.startswith(prefix) or len(out) >= limit:
                    break
                out.append(bson.decode(v))
    return out


class Watch:
    """What may have changed in a namespace since the last look, from the store's operation
    log: the ids of every record on it, of any origin (this node's writes, the records
    applied from its peers), since the positions of the last look. An id is a hint, its
    document in the store is the truth (a record may have lost to a later one by the
    merge rules). ``changed()`` is None when records were dropped before they were read
    (a snapshot installed, retention): then only a full scan knows."""

    BATCH = 2000
    BUDGET = 20000   # records read per look at most (the rest at the next: the loop goes on)

    def __init__(self, store: Store, ns: str) -> None:
        self.store, self.ns = store, ns
        self.positions = {origin: seq for origin, (seq, _) in store.applied().items()}

    def changed(self) -> set | None:
        ids: set = set()
        budget = self.BUDGET
        for origin, (seq, _) in self.store.applied().items():
            have = self.positions.get(origin, 0)
            while have < seq and budget > 0:
                records = self.store.records_after(origin, have, min(self.BATCH, budget))
                if not records:
                    return None
                ids.update(r.id for r in records if r.ns == self.ns)
                have = records[-1].seq
                budget -= len(records)
            self.positions[origin] = have
        return ids


def counts(store: Store) -> dict[str, int]:
    """Pending deliveries and dead letters (keys counted, nothing decoded)."""
    with store.read() as txn:
        return {"pending": store.count_keys(txn, QUEUE_NS), "dead": store.count_keys(txn, DEAD_NS)}


def listing(store: Store, limit: int = 100) -> dict:
    """For `farts-edge webhooks list`: counts and the first deliveries of each state."""
    out: dict = {}
    for state, n in counts(store).items():
        rows = [{f: d.get(f) for f in ("_id", "tenant", "url", "event", "attempts", "due", "created", "since",
                                       "error", "status", "epoch")}
                for d in first_docs(store, QUEUE_NS if state == "pending" else DEAD_NS, limit)]
        out[state] = {"count": n, "deliveries": rows}
    return out
