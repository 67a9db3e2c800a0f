"""The MongoDB endpoint against pymongo: a real node (`farts-edge serve`) with [db] enabled.

One node serves the whole module (auth off, as on loopback by default); each test uses
its own database so they stay independent.
"""
from __future__ import annotations

import re
import socket
import struct
import time
import urllib.request

import bson
import pymongo
import pytest
import zstandard
from conftest import start_node
from pymongo import monitoring
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

DB_CONFIG = """
[db]
enabled = true
port = 0
"""
DB_URL = re.compile(rb"^\s+db\s+mongodb://([\d.]+):(\d+)/", re.M)


def db_address(node) -> tuple[str, int]:
    m = DB_URL.search(b"".join(node.output))
    assert m, node.output
    return m.group(1).decode(), int(m.group(2))


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.names: list[str] = []
        self.ok: list[str] = []

    def started(self, event):
        self.names.append(event.command_name)

    def succeeded(self, event):
        self.ok.append(event.command_name)

    def failed(self, event):
        pass


@pytest.fixture(scope="module", params=[1, 3], ids=["workers1", "workers3"])
def node(tmp_path_factory, request):
    """The node in one process, then with three workers (farts/workers/: they accept and
    hand the connections to the node process)."""
    n = start_node(tmp_path_factory.mktemp("dbnode"), DB_CONFIG, workers=request.param)
    yield n
    n.stop()


@pytest.fixture(scope="module")
def listener():
    return Commands()


@pytest.fixture(scope="module")
def client(node, listener):
    host, port = db_address(node)
    c = pymongo.MongoClient(host, port, compressors="zlib", serverSelectionTimeoutMS=5000,
                            event_listeners=[listener])
    yield c
    c.close()


def test_crud(client):
    col = client.crud.people
    assert col.insert_one({"_id": 1, "name": "ada", "n": 1}).inserted_id == 1
    ids = col.insert_many([{"name": f"p{i}", "n": i, "tags": ["a"]} for i in range(10)]).inserted_ids
    assert len(ids) == 10 and col.count_documents({}) == 11
    assert col.find_one({"_id": 1}) == {"_id": 1, "name": "ada", "n": 1}
    r = col.update_one({"_id": 1}, {"$inc": {"n": 5}, "$set": {"a.b": "x"}, "$push": {"l": {"$each": [1, 2]}},
                                    "$currentDate": {"at": True}})
    assert (r.matched_count, r.modified_count) == (1, 1)
    doc = col.find_one({"_id": 1})
    assert doc["n"] == 6 and doc["a"] == {"b": "x"} and doc["l"] == [1, 2] and "at" in doc
    col.update_one({"_id": 1}, {"$pull": {"l": 1}, "$unset": {"a": ""}, "$min": {"n": 2}, "$max": {"top": 9}})
    col.update_one({"_id": 1}, {"$addToSet": {"l": {"$each": [3, 2]}}})
    doc = col.find_one({"_id": 1}, {"_id": 0, "l": 1, "n": 1, "top": 1, "a": 1})
    assert doc == {"n": 2, "l": [2, 3], "top": 9}
    assert col.update_one({"_id": 1}, {"$set": {"n": 2}}).modified_count == 0   # no-op
    assert col.update_many({"n": {"$gte": 5}}, {"$set": {"big": True}}).modified_count == 5
    assert col.count_documents({"big": True}) == 5
    r = col.update_one({"name": "new"}, {"$set": {"n": 100}, "$setOnInsert": {"fresh": 1}}, upsert=True)
    assert r.upserted_id is not None
    assert col.find_one({"_id": r.upserted_id}, {"_id": 0}) == {"name": "new", "n": 100, "fresh": 1}
    assert col.replace_one({"name": "new"}, {"name": "newer"}).modified_count == 1
    assert col.find_one({"_id": r.upserted_id}, {"_id": 0}) == {"name": "newer"}
    before = col.find_one_and_update({"_id": 1}, {"$inc": {"n": 1}})
    after = col.find_one_and_update({"_id": 1}, {"$inc": {"n": 1}}, return_document=pymongo.ReturnDocument.AFTER)
    assert (before["n"], after["n"]) == (2, 4)
    gone = col.find_one_and_delete({"name": "newer"})
    assert gone["name"] == "newer" and col.find_one({"name": "newer"}) is None
    assert col.find_one_and_replace({"_id": 1}, {"v": 2}, return_document=True) == {"_id": 1, "v": 2}
    assert col.delete_one({"tags": "a"}).deleted_count == 1
    assert col.delete_many({"tags": "a"}).deleted_count == 9
    assert col.count_documents({}) == 1
    with pytest.raises(OperationFailure) as e:
        col.update_one({"_id": 1}, {"$set": {"_id": 2}})
    assert e.value.code == 66


def test_positional_updates_through_the_wire(client):
    """'a.$' needs the statement's query to find the element it matched."""
    col = client.crud.positional
    col.insert_one({"_id": 1, "grades": [80, 85, 90], "items": [{"k": "a", "n": 1}, {"k": "b", "n": 1}]})
    assert col.update_one({"_id": 1, "grades": 85}, {"$set": {"grades.$": 86}}).modified_count == 1
    col.update_many({"items.k": "b"}, {"$inc": {"items.$.n": 10}})
    col.find_one_and_update({"_id": 1, "items.k": "a"}, {"$set": {"items.$.seen": True}})
    assert col.find_one({"_id": 1}) == {"_id": 1, "grades": [80, 86, 90],
                                        "items": [{"k": "a", "n": 1, "seen": True}, {"k": "b", "n": 11}]}


def test_query_semantics_through_the_wire(client):
    col = client.q.items
    col.insert_many([{"_id": i, "v": i, "arr": [i, i + 10], "sub": {"k": i % 3}, "s": f"s{i:02d}"}
                     for i in range(20)])
    ids = lambda f, **kw: [d["_id"] for d in col.find(f, **kw)]  # noqa: E731
    assert ids({"v": {"$in": [3, 5]}, "sub.k": 2}, sort=[("_id", 1)]) == [5]
    assert ids({"arr": 15}, sort=[("_id", 1)]) == [5, 15]
    assert ids({"$or": [{"v": 1}, {"s": {"$regex": "^s1[89]"}}]}, sort=[("_id", 1)]) == [1, 18, 19]
    assert ids({}, sort=[("sub.k", -1), ("v", 1)], skip=2, limit=3) == [8, 11, 14]
    assert ids({"arr": {"$elemMatch": {"$gt": 25, "$lt": 28}}}, sort=[("_id", 1)]) == [16, 17]
    assert ids({"missing": {"$exists": False}, "v": {"$lt": 2}}, sort=[("_id", 1)]) == [0, 1]
    with pytest.raises(OperationFailure) as e:
        col.find_one({"v": {"$where": "x"}})
    assert e.value.code == 2 and "$where" in str(e.value)
    # Options that change the answer are applied (collation: tests/test_db_collation.py), not ignored.
    assert col.find_one({"s": "S01"}, collation={"locale": "en", "strength": 2})["_id"] == 1
    assert col.update_one({"s": "S01"}, {"$set": {"x": 1}}, collation={"locale": "en", "strength": 2}).modified_count == 1


def test_cursor_many_batches_and_kill(client, listener):
    col = client.cur.big
    col.insert_many([{"_id": i, "pad": "x" * 50} for i in range(1000)])
    listener.names.clear()
    got = [d["_id"] for d in col.find({}, batch_size=7).sort("_id", 1)]
    assert got == list(range(1000))
    assert listener.names.count("getMore") == (1000 - 7 + 6) // 7   # ceil(993 / 7)
    cursor = col.find({}, batch_size=10)
    next(cursor)
    assert client.admin.command("serverStatus")["farts"]["openCursors"] >= 1
    cursor.close()
    assert "killCursors" in listener.names
    assert client.admin.command("serverStatus")["farts"]["openCursors"] == 0
    with pytest.raises(OperationFailure) as e:
        client.cur.command("getMore", bson.Int64(123456789), collection="big")
    assert e.value.code == 43


def test_index_is_used_instead_of_a_scan(client):
    col = client.ix.events
    col.insert_many([{"_id": i, "user": i % 100, "at": i, "kind": f"k{i % 5}"} for i in range(3000)])
    pool_reads = client.admin.command("serverStatus")["farts"]["poolReads"]
    scan = col.find({"user": 42}).explain()["executionStats"]
    assert scan["totalDocsExamined"] == 3000 and scan["nReturned"] == 30
    # 3000 documents examined: too many for the event loop, so the read ran in the pool.
    assert client.admin.command("serverStatus")["farts"]["poolReads"] == pool_reads + 1
    assert col.create_index("user") == "user_1"
    col.create_index([("kind", 1), ("at", -1)])
    plan = col.find({"user": 42}).explain()
    assert client.admin.command("serverStatus")["farts"]["poolReads"] == pool_reads + 1   # 30: on the loop
    assert plan["queryPlanner"]["winningPlan"]["inputStage"]["indexName"] == "user_1"
    assert plan["executionStats"]["totalDocsExamined"] == 30 == plan["executionStats"]["nReturned"]
    assert sorted(d["_id"] for d in col.find({"user": 42})) == list(range(42, 3000, 100))
    ranged = col.find({"user": {"$gte": 10, "$lt": 12}}).explain()["executionStats"]
    assert ranged["totalDocsExamined"] == 60 == ranged["nReturned"]
    compound = col.find({"kind": "k3", "at": {"$gt": 2900}}).explain()["executionStats"]
    assert compound["totalDocsExamined"] == compound["nReturned"] == 20
    # A page of a listing sorted by an indexed field reads only the page.
    page = col.find({"kind": "k3"}).sort("at", -1).skip(2).limit(5)
    assert [d["at"] for d in page] == [2988, 2983, 2978, 2973, 2968]
    paged = col.find({"kind": "k3"}).sort("at", -1).skip(2).limit(5).explain()
    assert paged["executionStats"]["totalDocsExamined"] == 7
    assert paged["queryPlanner"]["winningPlan"]["stage"] == "FETCH"   # no SORT stage
    unindexed = col.find({}).sort("at", 1).limit(5).explain()
    assert unindexed["queryPlanner"]["winningPlan"]["stage"] == "SORT"
    by_id = col.find({"_id": {"$in": [5, 7, 99999]}}).explain()["executionStats"]
    assert by_id["totalDocsExamined"] == 2
    # Index maintenance follows updates and deletes.
    col.update_many({"user": 42}, {"$set": {"user": 4242}})
    assert col.count_documents({"user": 42}) == 0 and col.count_documents({"user": 4242}) == 30
    col.delete_many({"user": 4242})
    assert col.find({"user": 4242}).explain()["executionStats"]["totalKeysExamined"] == 0
    names = [i["name"] for i in col.list_indexes()]
    assert names == ["_id_", "user_1", "kind_1_at_-1"]
    col.drop_index("user_1")
    assert col.find({"user": 7}).explain()["executionStats"]["totalDocsExamined"] == 2970


def test_unique_index_violations(client):
    col = client.uq.users
    col.create_index("email", unique=True)
    col.insert_one({"email": "a@x"})
    with pytest.raises(DuplicateKeyError) as e:
        col.insert_one({"email": "a@x"})
    assert e.value.code == 11000 and e.value.details["keyValue"] == {"email": "a@x"}
    assert "email_1 dup key" in e.value.details["errmsg"]
    with pytest.raises(DuplicateKeyError):
        col.insert_one({"_id": col.find_one()["_id"], "email": "b@x"})
    with pytest.raises(BulkWriteError) as e:
        col.insert_many([{"email": "c@x"}, {"email": "a@x"}, {"email": "d@x"}], ordered=False)
    assert e.value.details["nInserted"] == 2 and e.value.details["writeErrors"][0]["index"] == 1
    with pytest.raises(DuplicateKeyError):
        col.update_one({"email": "c@x"}, {"$set": {"email": "d@x"}})
    assert col.count_documents({}) == 3 and col.find_one({"email": "c@x"}) is not None
    col2 = client.uq.dups
    col2.insert_many([{"k": 1}, {"k": 1}])
    with pytest.raises(OperationFailure) as e:
        col2.create_index("k", unique=True)
    assert e.value.code == 11000
    assert [i["name"] for i in col2.list_indexes()] == ["_id_"]
    # The failed build left nothing behind: the same index without unique builds and serves.
    assert col2.create_index("k") == "k_1"
    col2.insert_one({"k": 1})
    plan = col2.find({"k": 1}).explain()
    assert plan["queryPlanner"]["winningPlan"]["inputStage"]["indexName"] == "k_1"
    assert plan["executionStats"]["nReturned"] == 3


def test_aggregation_and_counts(client):
    col = client.agg.orders
    col.insert_many([{"cust": c, "amount": a, "items": ["x"] * (a % 3 + 1)} for c in "abc" for a in range(1, 6)])
    out = list(col.aggregate([{"$match": {"amount": {"$gte": 2}}},
                              {"$group": {"_id": "$cust", "total": {"$sum": "$amount"}, "n": {"$count": {}},
                                          "avg": {"$avg": "$amount"}, "lo": {"$min": "$amount"},
                                          "first": {"$first": "$amount"}, "last": {"$last": "$amount"}}},
                              {"$sort": {"_id": -1}}, {"$skip": 1}, {"$limit": 1}]))
    assert out == [{"_id": "b", "total": 14, "n": 4, "avg": 3.5, "lo": 2, "first": 2, "last": 5}]
    unwound = list(col.aggregate([{"$match": {"cust": "a"}}, {"$unwind": "$items"}, {"$count": "n"}]))
    assert unwound == [{"n": 2 + 3 + 1 + 2 + 3}]
    projected = list(col.aggregate([{"$match": {"cust": "c", "amount": 5}}, {"$project": {"_id": 0, "amount": 1}}]))
    assert projected == [{"amount": 5}]
    assert col.count_documents({"cust": "a", "amount": {"$gt": 3}}) == 2
    assert col.estimated_document_count() == 15
    assert [client.agg.command("count", "orders", skip=sk, limit=li)["n"] for sk, li in ((10, 3), (14, 5), (20, 0))] \
        == [3, 1, 0]
    assert client.agg.command("count", "orders", query={"cust": "b"}, skip=1)["n"] == 4
    assert sorted(col.distinct("cust")) == ["a", "b", "c"]
    assert col.distinct("amount", {"cust": "a"}) == [1, 2, 3, 4, 5]
    with pytest.raises(OperationFailure) as e:
        list(col.aggregate([{"$lookup": {"from": "x"}}]))
    assert "$lookup" in str(e.value)


def test_admin_commands(client):
    db = client.adm
    db.create_collection("c1")
    with pytest.raises(OperationFailure) as e:
        db.command("create", "c1")
    assert e.value.code == 48
    db.c2.insert_one({})
    assert sorted(db.list_collection_names()) == ["c1", "c2"]
    assert "adm" in client.list_database_names()
    for i in range(3, 8):
        db.create_collection(f"c{i}")
    paged = db.command("listCollections", nameOnly=True, cursor={"batchSize": 2})
    names = [c["name"] for c in paged["cursor"]["firstBatch"]]
    more = db.command("getMore", paged["cursor"]["id"], collection="$cmd.listCollections")
    assert names + [c["name"] for c in more["cursor"]["nextBatch"]] == [f"c{i}" for i in range(1, 8)]
    for i in range(3, 8):
        db.drop_collection(f"c{i}")
    db.drop_collection("c1")
    assert db.list_collection_names() == ["c2"]
    client.drop_database("adm")
    assert "adm" not in client.list_database_names()
    assert client.admin.command("ping")["ok"] == 1
    info = client.admin.command("buildInfo")
    assert info["versionArray"][0] == 7
    assert client.admin.command("getParameter", 1, featureCompatibilityVersion=1)["featureCompatibilityVersion"]
    status = client.admin.command("serverStatus")
    assert status["storageEngine"]["name"] == "lmdb" and status["connections"]["current"] >= 1
    hello = client.admin.command("hello")
    assert hello["isWritablePrimary"] and hello["msg"] == "isdbgrid" and hello["maxWireVersion"] == 21
    legacy = client.admin.command("isMaster", helloOk=True)
    assert legacy["ismaster"] and legacy["helloOk"] and "isWritablePrimary" not in legacy
    with pytest.raises(OperationFailure) as e:
        client.admin.command("frobnicate")
    assert e.value.code == 59 and "frobnicate" in str(e.value)


def test_sessions_end_when_the_client_closes(node):
    listener = Commands()
    c = pymongo.MongoClient(*db_address(node), event_listeners=[listener], serverSelectionTimeoutMS=5000)
    c.sess.c.insert_one({})
    c.close()
    assert "endSessions" in listener.names and "endSessions" in listener.ok


def test_read_preference_passes_through_and_metrics(client, node):
    col = client.rp.get_collection("c", read_preference=pymongo.ReadPreference.NEAREST)
    col.database.c.insert_one({"x": 1})
    assert col.find_one({"x": 1})["x"] == 1
    with pytest.raises(OperationFailure):
        client.admin.command("no-such-command")
    host, port = node.urls["admin"].split("//")[1].rstrip("/").split(":")
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
    assert 'farts_db_read_preference_total{mode="nearest"}' in text
    assert re.search(r'farts_db_commands_total\{command="insert",outcome="ok"\} [1-9]', text)
    assert re.search(r'farts_db_commands_total\{command="unknown",outcome="error"\} [1-9]', text)
    assert "farts_db_command_seconds_bucket" in text
    assert re.search(r'farts_db_compressed_messages_total\{compressor="zlib"\} [1-9]', text)   # negotiated
    assert re.search(r"farts_db_oplog_entries [1-9]", text) and re.search(r"farts_db_store_bytes [1-9]", text)
    assert "farts_db_open_cursors" in text


# ---- bad input on raw sockets: the server answers or closes, and nothing else is affected ----

def raw(node) -> socket.socket:
    s = socket.create_connection(db_address(node), timeout=5)
    return s


def msg(body: dict, request_id: int = 1) -> bytes:
    payload = b"\0\0\0\0\0" + bson.encode(body)
    return struct.pack("<iiii", 16 + len(payload), request_id, 0, 2013) + payload


def read_reply(s: socket.socket) -> dict | None:
    head = b""
    while len(head) < 16:
        chunk = s.recv(16 - len(head))
        if not chunk:
            return None
        head += chunk
    length, _, _, op = struct.unpack("<iiii", head)
    body = b""
    while len(body) < length - 16:
        body += s.recv(length - 16 - len(body))
    if op == 2012:
        _, size, _ = struct.unpack_from("<iiB", body)
        body = zstandard.ZstdDecompressor().decompress(body[9:], max_output_size=size)
    return bson.decode(body[5:])


def closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def test_bad_input_keeps_the_server_and_other_clients_alive(node, client):
    client.bad.c.insert_one({"_id": 1})
    # Truncated: a header promising more than ever arrives, then the client hangs up.
    s = raw(node)
    s.sendall(msg({"ping": 1, "$db": "admin"})[:25])
    s.close()
    # Invalid BSON: an error reply with InvalidBSON, and the connection still works.
    s = raw(node)
    body = bson.encode({"ping": 1, "$db": "admin"})
    bad = b"\0\0\0\0\0" + body[:-1] + b"\x09"
    s.sendall(struct.pack("<iiii", 16 + len(bad), 5, 0, 2013) + bad)
    reply = read_reply(s)
    assert reply["ok"] == 0 and reply["code"] == 22
    s.sendall(msg({"ping": 1, "$db": "admin"}, 6))
    assert read_reply(s)["ok"] == 1
    # Unknown command and unknown operator: MongoDB's error documents.
    s.sendall(msg({"nope": 1, "$db": "admin"}, 7))
    assert read_reply(s)["code"] == 59
    s.sendall(msg({"find": "c", "filter": {"a": {"$bogus": 1}}, "$db": "bad"}, 8))
    r = read_reply(s)
    assert r["ok"] == 0 and "$bogus" in r["errmsg"]
    s.sendall(msg({"find": "c", "$db": "no$pe"}, 9))
    assert read_reply(s)["code"] == 73
    # OP_COMPRESSED with zstd is answered in zstd.
    inner = b"\0\0\0\0\0" + bson.encode({"ping": 1, "$db": "admin"})
    packed = zstandard.ZstdCompressor().compress(inner)
    s.sendall(msg({"hello": 1, "compression": ["zstd"], "$db": "admin"}, 10))
    assert read_reply(s)["compression"] == ["zstd"]
    s.sendall(struct.pack("<iiii", 25 + len(packed), 11, 0, 2012) + struct.pack("<iiB", 2013, len(inner), 3) + packed)
    assert read_reply(s)["ok"] == 1
    # OP_QUERY is only the legacy handshake: isMaster answers (OP_REPLY), a find does not.
    for query, check in (({"isMaster": 1}, lambda r: r["ismaster"] is True and r["msg"] == "isdbgrid"),
                         ({"find": "c"}, lambda r: r["code"] == 352)):
        q = struct.pack("<i", 0) + b"bad.$cmd\0" + struct.pack("<ii", 0, -1) + bson.encode(query)
        s.sendall(struct.pack("<iiii", 16 + len(q), 20, 0, 2004) + q)
        head = s.recv(16, socket.MSG_WAITALL)
        length, _, response_to, op = struct.unpack("<iiii", head)
        body = s.recv(length - 16, socket.MSG_WAITALL)
        assert (op, response_to) == (1, 20) and check(bson.decode(body[20:]))
    s.close()
    # Oversized: an error reply, then the server closes.
    s = raw(node)
    s.sendall(struct.pack("<iiii", 64 * 1024 * 1024, 12, 0, 2013))
    reply = read_reply(s)
    assert reply["code"] == 10334 and closed(s)
    # Unknown opcode: closed.
    s = raw(node)
    s.sendall(struct.pack("<iiii", 20, 13, 0, 2002) + b"\0\0\0\0")
    read_reply(s)
    assert closed(s)
    # Pure garbage.
    s = raw(node)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\xff" * 100)
    assert read_reply(s) is None or closed(s)
    s.close()
    time.sleep(0.1)
    assert node.alive() and client.bad.c.find_one({"_id": 1}) == {"_id": 1}


def test_connection_limit(tmp_path):
    """In-process DBService: the connection over db.max_connections is closed, the others serve."""
    import asyncio

    from farts.db.config import DBConfig
    from farts.db.server import DBService
    from farts.metrics import Metrics

    async def main():
        svc = DBService(DBConfig(enabled=True, port=0, max_connections=2), tmp_path / "db", "n", Metrics())
        await svc.start()
        try:
            host, port = svc.address
            conns = [await asyncio.open_connection(host, port) for _ in range(3)]
            assert await asyncio.wait_for(conns[2][0].read(), 5) == b""
            reader, writer = conns[0]
            writer.write(msg({"ping": 1, "$db": "admin"}))
            head = await asyncio.wait_for(reader.readexactly(16), 5)
            body = await reader.readexactly(struct.unpack("<i", head[:4])[0] - 16)
            assert bson.decode(body[5:])["ok"] == 1
            assert svc.stats.refused.get(("db", "max_connections")) == 1
            for _, w in conns:
                w.close()
        finally:
            await svc.stop()

    asyncio.run(main())


def test_a_client_that_does_not_read_its_replies_is_paused(node, client):
    client.slow.big.insert_one({"_id": 1, "blob": "x" * (1 << 20)})
    before = client.admin.command("serverStatus")["opcounters"]["query"]
    s = raw(node)
    request = msg({"find": "big", "filter": {"_id": 1}, "$db": "slow"})
    s.sendall(request * 200)        # 200 MB of answers asked for, none read yet
    time.sleep(1.0)
    answered = client.admin.command("serverStatus")["opcounters"]["query"] - before
    assert answered < 50            # the server stopped reading once its replies piled up
    assert client.slow.big.find_one({}, {"_id": 1}) == {"_id": 1}   # everyone else is served
    for _ in range(200):
        assert read_reply(s)["cursor"]["firstBatch"][0]["_id"] == 1
    s.close()


def test_retryable_writes_apply_once(node, client):
    """A driver that lost the reply resends the write with the same lsid and txnNumber."""
    import uuid

    from bson.binary import Binary

    lsid = {"id": Binary(uuid.uuid4().bytes, 4)}
    before = client.admin.command("serverStatus")["farts"]["retriedWrites"]
    first, second = raw(node), raw(node)
    insert = {"insert": "c", "documents": [{"_id": 1, "n": 0}], "lsid": lsid, "txnNumber": bson.Int64(1),
              "$db": "retry"}
    first.sendall(msg(insert, 1))
    assert read_reply(first) == {"n": 1, "ok": 1.0}
    first.close()                    # as if the reply had been lost with the connection
    second.sendall(msg(insert, 2))
    assert read_reply(second) == {"n": 1, "ok": 1.0}   # the first answer, not a duplicate key
    inc = {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$inc": {"n": 1}}}], "lsid": lsid,
           "$db": "retry"}
    for number, rid in ((2, 3), (2, 4), (3, 5)):
        second.sendall(msg({**inc, "txnNumber": bson.Int64(number)}, rid))
        assert read_reply(second)["nModified"] == 1
    second.sendall(msg({**inc, "txnNumber": bson.Int64(1)}, 6))
    assert read_reply(second)["code"] == 225
    second.close()
    assert client.retry.c.find_one({"_id": 1}) == {"_id": 1, "n": 2}
    assert client.admin.command("serverStatus")["farts"]["retriedWrites"] == before + 2
