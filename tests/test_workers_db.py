"""The MongoDB endpoint with worker processes: every worker accepts on its SO_REUSEPORT
socket and hands the connection to the node process (farts/workers/sockets.py), which
serves it with its one store. pymongo over many connections (each client keeps one, so
the kernel places each anew): inserts, finds, and a cursor opened on one connection and
continued with getMore on others.
"""
from __future__ import annotations

import pytest
from conftest import BASE_CONFIG
from pymongo import MongoClient
from test_db_pymongo import DB_CONFIG, db_address

CLIENTS = 12   # the chance that all land on one of three workers: 3 * 3^-12


def clients(node, n: int) -> list[MongoClient]:
    host, port = db_address(node)
    out = [MongoClient(host, port, maxPoolSize=1, serverSelectionTimeoutMS=20000) for _ in range(n)]
    for c in out:
        c.admin.command("ping")   # (connected now: each its own connection)
    return out


@pytest.mark.parametrize("workers", [1, 3])
def test_inserts_finds_and_cursors_across_connections(node_factory, workers):
    base = BASE_CONFIG.replace('data_dir = "{data_dir}"', f'data_dir = "{{data_dir}}"\nworkers = {workers}')
    node = node_factory(DB_CONFIG, base=base)
    cs = clients(node, CLIENTS)
    try:
        for i, c in enumerate(cs):
            c.app.items.insert_many([{"_id": i * 100 + j, "by": i, "j": j} for j in range(50)])
        for i, c in enumerate(cs):   # every write seen from every connection
            assert c.app.items.count_documents({}) == CLIENTS * 50
            assert c.app.items.find_one({"_id": ((i + 1) % CLIENTS) * 100 + 7})["j"] == 7
        # One cursor, its batches fetched over every connection in turn.
        first = cs[0].app.command("find", "items", sort={"_id": 1}, batchSize=10)
        seen = [d["_id"] for d in first["cursor"]["firstBatch"]]
        cursor_id, turn = first["cursor"]["id"], 1
        while cursor_id:
            more = cs[turn % CLIENTS].app.command("getMore", cursor_id, collection="items", batchSize=25)
            seen += [d["_id"] for d in more["cursor"]["nextBatch"]]
            cursor_id, turn = more["cursor"]["id"], turn + 1
        assert seen == sorted(i * 100 + j for i in range(CLIENTS) for j in range(50))
        assert turn > CLIENTS   # (every connection continued it)
        assert cs[0].admin.command("serverStatus")["connections"]["current"] >= CLIENTS
    finally:
        for c in cs:
            c.close()
