"""Deliveries leaving through an HTTP CONNECT egress proxy (proxy.py, a real forward
proxy in its own process), over plain HTTP and over TLS inside the tunnel (the
certificate checked for the URL's name while the tunnel goes to the checked address)."""
from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys

from conftest import free_port
from test_webhooks_service import SECRETS, Setup
from webhook_receiver import Receiver, until

from farts import pki
from farts.transport.client import Client


def start_proxy(tmp_path, port: int) -> subprocess.Popen:
    log = open(tmp_path / "proxy.log", "wb")   # noqa: SIM115 - the process writes it
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", str(port),
                             "--num-workers", "1", "--num-acceptors", "1", "--log-level", "INFO"],
                            stdout=log, stderr=subprocess.STDOUT)
    return proc


def test_deliveries_go_through_the_connect_proxy_plain_and_tls(tmp_path):
    async def main():
        ca = tmp_path / "ca"
        pki.make_ca(ca)
        pki.issue(ca, tmp_path / "rx.crt", tmp_path / "rx.key", ["localhost"])
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(tmp_path / "rx.crt", tmp_path / "rx.key")
        plain, secure = Receiver(SECRETS), Receiver(SECRETS)
        plain_port = await plain.start()
        tls_port = await secure.start(ssl_context=tls)
        proxy_port = free_port()
        s = Setup(tmp_path, proxies=[f"127.0.0.1:{proxy_port}"], breaker_failures=10**6)
        s.client.close()
        s.hooks.client = s.client = Client(s.clock, ca_file=str(ca / "ca.crt"))
        hooks = await s.start()
        ids = await hooks.enqueue("demo", [{"url": f"http://127.0.0.1:{plain_port}/hook", "event": "p", "payload": i}
                                           for i in range(5)])
        ids += await hooks.enqueue("demo", [{"url": f"https://localhost:{tls_port}/hook", "event": "t", "payload": i}
                                            for i in range(5)])
        hooks.set_master(1)
        # The proxy is not there yet: nothing can leave (the receivers are up, but not asked).
        await until(lambda: s.count("farts_webhooks_retried_total", ("connection",)) >= 10, what="failed attempts")
        assert not plain.attempts and not secure.attempts
        proc = start_proxy(tmp_path, proxy_port)
        try:
            await until(lambda: all(plain.delivered[i] + secure.delivered[i] >= 1 for i in ids), timeout=120,
                        what="every delivery through the proxy")
            assert len(plain.delivered) == 5 and len(secure.delivered) == 5
            assert plain.bad_signatures == secure.bad_signatures == 0
            for _ in range(100):   # (the proxy logs a CONNECT when its tunnel closes)
                text = (tmp_path / "proxy.log").read_text(errors="replace")
                if f"CONNECT 127.0.0.1:{tls_port}" in text and f"CONNECT 127.0.0.1:{plain_port}" in text:
                    break
                s.client.close()
                await asyncio.sleep(0.1)
            assert f"CONNECT 127.0.0.1:{tls_port}" in text and f"CONNECT 127.0.0.1:{plain_port}" in text
        finally:
            proc.terminate()
            proc.wait(10)
            await s.close()
            await plain.stop()
            await secure.stop()
    asyncio.run(main())
