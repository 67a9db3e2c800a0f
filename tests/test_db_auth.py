"""SCRAM-SHA-256 and tenant isolation on the MongoDB endpoint, with real drivers:
pymongo here, and the Node.js mongodb driver (tests/node/db_smoke.js)."""
from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import bson
import pymongo
import pytest
from conftest import start_node
from pymongo.errors import OperationFailure
from test_db_pymongo import db_address, read_reply

from farts.db import scram

AUTH_CONFIG = """
[db]
enabled = true
port = 0
auth = true
[[db.users]]
name = "alice"
password = "alice-secret"
tenant = "demo"
[[db.users]]
name = "bob"
password = "bob-secret"
tenant = "other"
[[db.users]]
name = "carol"
password = "carol-secret"
tenant = "demo"
"""
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = start_node(tmp_path_factory.mktemp("dbauth"), AUTH_CONFIG)
    yield n
    n.stop()


def connect(node, user=None, password=None, **kw) -> pymongo.MongoClient:
    host, port = db_address(node)
    creds = {"username": user, "password": password} if user else {}
    return pymongo.MongoClient(host, port, serverSelectionTimeoutMS=5000, **creds, **kw)


def test_unauthenticated_clients_get_only_the_handshake(node):
    with connect(node) as c:
        assert c.admin.command("hello")["isWritablePrimary"]
        for call in (lambda: c.app.things.find_one(), lambda: c.app.things.insert_one({}),
                     lambda: c.list_database_names(), lambda: c.admin.command("ping")):
            with pytest.raises(OperationFailure) as e:
                call()
            assert e.value.code == 13


def test_speculative_authentication_in_hello(node):
    """pymongo puts saslStart inside its hello; when the server answers it there, the
    driver goes straight to saslContinue."""
    from pymongo import monitoring

    class Names(monitoring.CommandListener):
        def __init__(self):
            self.names = []

        def started(self, event):
            self.names.append(event.command_name)

        def succeeded(self, event):
            pass

        def failed(self, event):
            pass

    listener = Names()
    with connect(node, "alice", "alice-secret", event_listeners=[listener]) as c:
        c.spec.c.find_one()
    assert "saslContinue" in listener.names and "saslStart" not in listener.names


def test_wrong_password_and_unknown_user_fail(node):
    for user, pw in (("alice", "nope"), ("mallory", "x")):
        with connect(node, user, pw, authMechanism="SCRAM-SHA-256") as c:
            with pytest.raises(OperationFailure) as e:
                c.app.things.find_one()
            assert e.value.code == 18


def test_tenants_never_see_each_other(node):
    with connect(node, "alice", "alice-secret", authMechanism="SCRAM-SHA-256") as alice, \
            connect(node, "bob", "bob-secret") as bob, connect(node, "carol", "carol-secret") as carol:
        alice.shop.orders.insert_many([{"_id": i, "who": "alice"} for i in range(30)])
        bob.shop.orders.insert_one({"_id": 0, "who": "bob"})     # same names, another tenant
        assert alice.shop.orders.count_documents({}) == 30
        assert bob.shop.orders.count_documents({}) == 1
        assert bob.shop.orders.find_one({"_id": 0})["who"] == "bob"
        assert alice.shop.orders.find_one({"_id": 0})["who"] == "alice"
        assert carol.shop.orders.count_documents({}) == 30        # same tenant as alice
        assert "shop" in bob.list_database_names() and len(bob.list_database_names()) == 1
        # A cursor belongs to its user: bob cannot page through alice's results.
        reply = alice.shop.command("find", "orders", batchSize=2)
        cursor_id = reply["cursor"]["id"]
        with pytest.raises(OperationFailure) as e:
            bob.shop.command("getMore", cursor_id, collection="orders")
        assert e.value.code == 43
        assert len(alice.shop.command("getMore", cursor_id, collection="orders")["cursor"]["nextBatch"]) == 28
        bob.drop_database("shop")
        assert alice.shop.orders.count_documents({}) == 30


def _scram_client(sock: socket.socket, user: str, password: str) -> None:
    """The client side of SCRAM-SHA-256 over raw OP_MSG, to own the socket afterwards."""
    def call(body, rid):
        payload = b"\0\0\0\0\0" + bson.encode({**body, "$db": "admin"})
        sock.sendall(struct.pack("<iiii", 16 + len(payload), rid, 0, 2013) + payload)
        reply = read_reply(sock)
        assert reply["ok"] == 1, reply
        return reply

    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n={user},r={nonce}"
    r = call({"saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": f"n,,{first_bare}".encode(),
              "options": {"skipEmptyExchange": True}}, 1)
    final = scram.client_final(user, password, nonce, r["payload"].decode())
    r = call({"saslContinue": 1, "conversationId": 1, "payload": final.encode()}, 2)
    assert r["done"]


def test_garbage_after_authentication_closes_only_that_connection(node):
    with connect(node, "alice", "alice-secret") as alice:
        alice.g.c.insert_one({"_id": 1})
        s = socket.create_connection(db_address(node), timeout=5)
        _scram_client(s, "carol", "carol-secret")
        payload = b"\0\0\0\0\0" + bson.encode({"find": "c", "$db": "g"})
        s.sendall(struct.pack("<iiii", 16 + len(payload), 3, 0, 2013) + payload)
        assert read_reply(s)["cursor"]["firstBatch"] == [{"_id": 1}]   # authenticated as carol (demo)
        # No database name reaches into another tenant's namespace ('$' is the separator).
        payload = b"\0\0\0\0\0" + bson.encode({"find": "orders", "$db": "other$shop"})
        s.sendall(struct.pack("<iiii", 16 + len(payload), 4, 0, 2013) + payload)
        assert read_reply(s)["code"] == 73
        s.sendall(b"\x10\x00\x00\x00garbage!" + os.urandom(200))
        s.settimeout(5)
        data = b""
        try:
            while chunk := s.recv(4096):
                data += chunk
        except ConnectionResetError:
            pass
        s.close()
        assert node.alive()
        assert alice.g.c.find_one() == {"_id": 1}


@pytest.mark.skipif(shutil.which("node") is None, reason="node (Node.js) is not installed; ci/setup installs it")
def test_node_driver_against_the_node(node):
    host, port = db_address(node)
    env = {**os.environ, "NODE_PATH": str(ROOT / "tests" / "node" / "node_modules")}
    script = str(ROOT / "tests" / "node" / "db_smoke.js")
    out = subprocess.run(["node", script, str(port), "alice", "alice-secret"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["ping"] == 1 and r["inserted"] == 300
    assert r["one"] == {"_id": 42, "group": 0, "name": "n42", "tags": []}
    assert r["cursor"] == {"seen": 300, "ordered": True, "getMores": 11}
    assert r["count"] == 43 and r["estimated"] == 300
    assert r["indexName"] == "name_1" and r["indexes"] == ["_id_", "name_1", "group_1__id_-1"]
    assert r["explain"] == {"docs": 43, "n": 43, "stage": "IXSCAN"}
    assert r["dup"] == {"code": 11000, "keyValue": {"name": "n5"}}
    assert (r["update"], r["updateMany"], r["upsert"], r["replaced"]) == (1, 43, 1000, 1)
    assert r["fam"]["k"] == 1 and r["deleted"] == 42 and r["deletedOne"] == 1
    assert r["agg"] == [{"_id": 0, "n": 43, "maxId": 294}, {"_id": 1, "n": 43, "maxId": 295},
                        {"_id": 2, "n": 42, "maxId": 296}]
    assert r["distinct"] == 6 and r["projected"] == [{"name": "n11"}, {"name": "n10"}]
    assert r["paged"] == ["n102", "n103", "n105"] and r["secondaryRead"] == 1
    assert r["collections"] == ["items"] and "nodeapp" in r["databases"]
    assert r["badOp"]["code"] == 2 and "$where" in r["badOp"]["message"]
    assert r["operators"] == {"l": [3, 2], "tags": True, "group": -1, "top": 7, "at": True}
    assert r["aggOps"] == [{"n": 18, "avg": 356 / 18, "lo": 1, "first": 1, "last": 39}]
    assert r["aggCount"] == [{"n": 5}]
    assert r["killCursors"] == 1 and r["endSessions"] == 1
    assert (r["buildInfo"], r["serverStatus"], r["getParameter"], r["createTwice"]) == (7, "lmdb", "7.0", 48)
    assert r["dropIndex"] == 1 and r["dropped"] is True
    assert r["dropDatabase"] is True and "nodeapp" not in r["afterDropDatabase"]
    # The wrong password fails in the Node driver too.
    bad = subprocess.run(["node", script, str(port), "alice", "wrong"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1 and "Authentication failed" in bad.stderr
    # Bob (another tenant) saw none of it.
    with connect(node, "bob", "bob-secret") as bob:
        assert "nodeapp" not in bob.list_database_names()


def _op_msg(body: dict, request_id: int) -> bytes:
    payload = b"\0\0\0\0\0" + bson.encode(body)
    return struct.pack("<iiii", 16 + len(payload), request_id, 0, 2013) + payload


def _until_closed(s: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_before_authentication_a_client_gets_small_messages_few_commands_and_little_time(tmp_path):
    n = start_node(tmp_path, AUTH_CONFIG.replace("auth = true", "auth = true\nauth_timeout = 1.0\n"
                                                               "preauth_max_commands = 5"))
    try:
        address = db_address(n)
        # A 1 MB message from a client that has not authenticated: the error, then closed.
        s = socket.create_connection(address, timeout=10)
        s.sendall(_op_msg({"hello": 1, "$db": "admin", "pad": "x" * 1_000_000}, 1))
        reply = _until_closed(s)
        assert b"outside 16..65536" in reply, reply[:200]
        # Five commands, then the sixth is refused and the connection closed.
        s = socket.create_connection(address, timeout=10)
        for i in range(5):
            s.sendall(_op_msg({"hello": 1, "$db": "admin"}, 10 + i))
            assert read_reply(s)["ok"] == 1.0
        s.sendall(_op_msg({"hello": 1, "$db": "admin"}, 20))
        assert read_reply(s)["codeName"] == "Unauthorized"
        assert _until_closed(s) == b""
        # Connected and silent: closed once db.auth_timeout has passed.
        s = socket.create_connection(address, timeout=10)
        assert _until_closed(s) == b""
        # Authenticated clients keep the full limits (a 1 MB document) and no deadline.
        with connect(n, "alice", "alice-secret") as alice:
            alice.g.big.insert_one({"_id": 1, "pad": "y" * 1_000_000})
            assert len(alice.g.big.find_one()["pad"]) == 1_000_000
        text = subprocess.run(["curl", "-sS", n.url("admin", "/metrics")], capture_output=True, text=True,
                              timeout=10).stdout
        assert 'farts_db_timeouts_total{kind="auth",listener="db"} 1.0' in text or \
            'farts_db_timeouts_total{listener="db",kind="auth"} 1.0' in text, \
            [ln for ln in text.splitlines() if "timeouts" in ln]
        assert n.alive()
    finally:
        n.stop()
