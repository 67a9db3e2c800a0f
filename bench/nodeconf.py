"""The node config (TOML) the bench scripts write: sections as dicts in, the text out.

``node_toml({"node": {...}, "listeners": {"http": {...}}, "routes": [{...}, {...}]})``:
a dict is a table (``[listeners.http]``; one holding only tables gets no header of its
own), a list of dicts an array of tables (``[[routes]]``), anything else a value.
``local_node`` is what most bench nodes start from: the node, its listeners on
127.0.0.1 (https off), one tenant; ``proxy_to`` the proxy route of bench/http.py and
bench/proxy_inprocess.py.
"""
from __future__ import annotations

import json
from typing import Any


def local_node(data_dir: str, http_port: int = 0, admin_port: int = 0, *, node_id: str = "bench",
               hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), **node: Any) -> dict:
    """[node] (``node``: its other keys, e.g. workers), [listeners.*] on 127.0.0.1 (port 0:
    one the node picks), https off, and the tenant "bench" answering ``hosts`` (none: no
    tenant)."""
    tenants = {"tenants": [{"id": "bench", "hosts": list(hosts)}]} if hosts else {}
    return {"node": {"id": node_id, "data_dir": str(data_dir), **node},
            "listeners": {"http": {"host": "127.0.0.1", "port": http_port}, "https": {"enabled": False},
                          "admin": {"host": "127.0.0.1", "port": admin_port}}, **tenants}


def proxy_to(upstream: str, pipeline: int = 1) -> dict:
    """[upstreams.up] at ``upstream`` (host:port) and the route /proxy to it. ``pipeline``
    is written only when over 1, so a tree from before the key (bench/ab.py's "before"
    side) runs the default."""
    return {"upstreams": {"up": {"servers": [upstream], **({"pipeline": pipeline} if pipeline > 1 else {})}},
            "routes": [{"prefix": "/proxy", "kind": "proxy", "upstream": "up"}]}


def node_toml(sections: dict[str, Any], comment: str = "") -> str:
    lines = [f"# {comment}"] if comment else []
    for name, value in sections.items():
        _table(lines, name, value)
    return "\n".join(lines) + "\n"


def _is_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table(lines: list[str], path: str, value: Any) -> None:
    if _is_tables(value):
        for entry in value:
            lines.append(f"[[{path}]]")
            _body(lines, path, entry)
        return
    keys = {k: v for k, v in value.items() if not isinstance(v, dict) and not _is_tables(v)}
    if keys or len(keys) == len(value):   # (an empty table is written too: it turns a service on)
        lines.append(f"[{path}]")
    _body(lines, path, value)


def _body(lines: list[str], path: str, table: dict) -> None:
    """A table's keys, then its sub-tables (TOML needs them in that order)."""
    subtables = []
    for key, value in table.items():
        if isinstance(value, dict) or _is_tables(value):
            subtables.append((key, value))
        else:
            lines.append(f"{key} = {_value(value)}")
    for key, value in subtables:
        _table(lines, f"{path}.{key}", value)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)     # (a JSON string is a TOML basic string)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"no TOML value for {v!r}")
