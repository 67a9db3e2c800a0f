"""The layering DESIGN.md asks for, read from the imports: a service package never
imports another one. Services stand on fast/, the shared modules (farts/*.py: config,
clock, peer, metrics...) and the transport; farts/node.py wires them, and a worker
process (farts/workers/) is the same wiring in a process of its own."""
from __future__ import annotations

import ast
from pathlib import Path

FARTS = Path(__file__).resolve().parent.parent / "farts"
SHARED = {"transport"}              # the layer every service stands on
WIRING = {"workers"}                # node.py's counterpart in a worker process
SERVICES = sorted(p.name for p in FARTS.iterdir()
                  if p.is_dir() and (p / "__init__.py").exists() and p.name not in SHARED | WIRING)


def farts_imports(path: Path) -> set[str]:
    """The farts packages a module imports (farts.X.… -> X), lazily imported ones included."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "farts" and len(parts) > 1:
                out.add(parts[1])
    return out


def test_no_service_package_imports_another():
    assert {"db", "webhooks", "master", "proxy", "cdn"} <= set(SERVICES)   # (the walk finds them)
    crossing = []
    for service in SERVICES:
        for module in sorted((FARTS / service).rglob("*.py")):
            for other in sorted(farts_imports(module) & set(SERVICES) - {service}):
                crossing.append(f"{module.relative_to(FARTS.parent)} imports farts.{other}")
    assert crossing == []


def test_the_walk_sees_a_crossing_import(tmp_path):
    module = tmp_path / "queue.py"
    module.write_text("from farts.db.store import Store\nimport farts.pubsub.service\n"
                      "def f():\n    from farts.cdn import service\n")
    assert farts_imports(module) == {"db", "pubsub", "cdn"}
