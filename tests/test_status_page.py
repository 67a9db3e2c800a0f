"""The status page in a real browser: Debian's chromium, driven by Playwright (its own
browser downloads are never used: executable_path is the system's chromium), against a
3-node `farts-edge up --nodes 3` cluster.

Loads the page from node 1's admin listener; sees three alive members on the table and
the map; runs a bounded load and sees the request rates move on two nodes (node 2's
numbers reach node 1's page through the mesh); a request to an upstream answering in
150 ms shows in the slow-request table and one at 50 ms does not; kills node 3 by its
PID and sees it turn dead on the page; no console errors. A screenshot goes to the
test's tmp_path (and to docs/status.png with FARTS_DOCS_SCREENSHOT=1; the README's is
taken by ops/status_screenshot.py, after minutes of a mixed load).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from mesh_helpers import start_up_cluster
from playwright import sync_api
from test_admin import DelayedUpstream
from test_mesh_up import _cmdline

from farts import quickstart

CHROMIUM = "/usr/bin/chromium"   # Debian's package (ci/setup installs it)


def _start_upstream():
    from http.server import ThreadingHTTPServer
    server = ThreadingHTTPServer(("127.0.0.1", 0), DelayedUpstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.slow
def test_status_page_shows_the_cluster_live_in_chromium(tmp_path):
    assert os.path.exists(CHROMIUM), "no /usr/bin/chromium: ci/setup installs Debian's chromium"
    upstream = _start_upstream()
    data = tmp_path / "cluster"
    # The cluster's config, written first so /widget/ goes to our delayed upstream
    # (`up` keeps a config it finds).
    configs = quickstart.prepare_cluster(data, 3)
    for path in configs:
        path.write_text(path.read_text().replace('servers = ["127.0.0.1:3000"]',
                                                 f'servers = ["127.0.0.1:{upstream.server_address[1]}"]'))
    proc, out = start_up_cluster(data)
    errors: list[str] = []
    try:
        assert b"Ctrl-C stops the cluster." in out, out.decode(errors="replace")
        url = re.search(rb"status page: (http://\S+)", out).group(1).decode()
        assert url == "http://127.0.0.1:9100/"

        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1300})
                page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}")
                        if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
                # (Predicates are given as functions: a bare expression would be eval'd in
                # the page, which the page's CSP rightly refuses.)
                page.goto(url)
                alive = "document.querySelectorAll('#members tbody tr[data-state=alive]').length"
                page.wait_for_function(f"() => {alive} === 3", timeout=30_000)
                assert page.locator("#map circle.node.alive").count() == 3
                assert page.locator("#conn").inner_text() == "live"
                versions = page.locator("#members tbody tr td:nth-child(7)").all_inner_texts()
                assert versions == ["0.1.0"] * 3, versions

                def rps(node: str) -> float:
                    v = page.locator(f"#nodes .card[data-node='{node}']").get_attribute("data-rps")
                    return float(v) if v not in (None, "null") else 0.0
                assert rps("node-1") == 0 and rps("node-2") == 0   # idle before the load

                def load() -> None:   # bounded: 400 requests to each of two nodes
                    with httpx.Client(timeout=10) as c:
                        for i in range(400):
                            c.get("http://127.0.0.1:8080/")
                            c.get("http://127.0.0.2:8080/")
                            if i % 100 == 0:
                                time.sleep(0.5)
                worker = threading.Thread(target=load)
                worker.start()
                moving = ("(n) => { const c = document.querySelector(`#nodes .card[data-node='${n}']`);"
                          " return c && parseFloat(c.dataset.rps) > 0; }")
                page.wait_for_function(moving, arg="node-1", timeout=30_000)
                page.wait_for_function(moving, arg="node-2", timeout=30_000)   # through the mesh
                worker.join(60)
                assert not worker.is_alive()

                with httpx.Client(timeout=10) as c:
                    assert c.get("http://127.0.0.1:8080/widget/wait/150").status_code == 200
                    assert c.get("http://127.0.0.1:8080/widget/wait/5").status_code == 200
                    assert c.get("http://127.0.0.2:8080/widget/wait/151").status_code == 200  # node 2's
                page.wait_for_function(
                    "() => ['/widget/wait/150', '/widget/wait/151'].every("
                    "t => document.querySelector('#slow tbody').textContent.includes(t))", timeout=30_000)
                assert "/widget/wait/5" not in page.locator("#slow tbody").inner_text()
                rows = {r.locator("td:nth-child(6)").inner_text(): r.locator("td:nth-child(2)").inner_text()
                        for r in page.locator("#slow tbody tr").all()}
                assert rows == {"GET /widget/wait/150": "node-1", "GET /widget/wait/151": "node-2"}, rows
                # The HTTPS certificate's days left (up writes a certificate valid for a year or more).
                certs = page.locator("#nodes .card[data-node='node-2'] dd[data-key=certificates]").inner_text()
                assert re.fullmatch(r"localhost \d+ d", certs) and int(certs.split()[1]) > 300, certs
                page.wait_for_function(   # the charts have lines
                    "() => document.querySelectorAll('#charts svg[data-chart=rps] polyline').length >= 2",
                    timeout=30_000)
                shot = tmp_path / "status.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                if os.environ.get("FARTS_DOCS_SCREENSHOT") == "1":
                    docs = Path(__file__).resolve().parent.parent / "docs"
                    docs.mkdir(exist_ok=True)
                    shutil.copy(shot, docs / "status.png")

                # Kill node 3: within the failure detection bound (probe interval + probe
                # timeout + suspicion timeout x its max multiplier, plus a sample) the page
                # shows it dead; the deadline here is generous.
                node3 = next(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                             and str(data / "node-3" / "farts.toml").encode() in _cmdline(p))
                killed = time.monotonic()
                os.kill(node3, signal.SIGKILL)
                page.wait_for_function(
                    "() => document.querySelector(\"#members tbody tr[data-node='node-3']\").dataset.state === 'dead'",
                    timeout=30_000)
                print(f"node-3 dead on the page {time.monotonic() - killed:.1f} s after SIGKILL")
                assert page.locator("#map circle.node.dead").count() == 1
                assert page.locator("#members tbody tr[data-state=alive]").count() == 2
                page.screenshot(path=str(tmp_path / "status-node3-dead.png"), full_page=True)
            finally:
                browser.close()
        assert errors == [], errors
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        upstream.shutdown()
        upstream.server_close()


def test_status_page_asks_for_the_admin_token_and_then_goes_live(node_factory):
    assert os.path.exists(CHROMIUM), "no /usr/bin/chromium: ci/setup installs Debian's chromium"
    token = "a-long-random-admin-token"
    node = node_factory(f'[admin]\ntoken = "{token}"\n')
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(node.url("admin", "/"))
            page.wait_for_function("() => !document.getElementById('auth').hidden", timeout=30_000)
            assert page.locator("#conn").inner_text() == "token needed"
            assert page.locator("#members tbody tr").count() == 0   # nothing without the token
            page.fill("#token", token)
            page.click("#auth button")
            page.wait_for_function("() => document.querySelectorAll('#members tbody tr[data-state=alive]')"
                                   ".length === 1", timeout=30_000)
            assert page.locator("#conn").inner_text() == "live" and page.locator("#auth").is_hidden()
        finally:
            browser.close()
    # The browser's 401s are the expected answers, not errors of the page's own.
    assert [e for e in errors if "401" not in e] == [], errors
