"""The `farts-edge` command."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

from farts import __version__, config


def _with_flags(cfg: config.Config, args) -> config.Config:
    if args.access_log is not None:
        cfg = dataclasses.replace(cfg, http=dataclasses.replace(cfg.http, access_log_sample=args.access_log))
    if getattr(args, "workers", None) is not None:
        cfg = dataclasses.replace(cfg, node=dataclasses.replace(cfg.node, workers=args.workers))
    return cfg


UP_PORTS = ("http", "https", "admin", "dns", "db")


def _up_flags_into(path: Path, args) -> None:
    """`up`'s flags go into the config it writes: `serve --config` then runs the same node."""
    from farts import quickstart

    quickstart.apply_flags(path, cdn_origin=args.cdn_origin, access_log=args.access_log,
                           ports={name: getattr(args, f"{name}_port") for name in UP_PORTS
                                  if getattr(args, f"{name}_port") is not None})


def _serve(cfg: config.Config, banner: str = "", takeover: bool = False) -> int:
    import uvloop

    from farts.node import Node

    async def main() -> None:
        node = Node(cfg)
        successor = None
        if takeover:   # the running node of this config hands its sockets and work over
            from farts.release.handover import take_over
            successor = await take_over(node)
        await node.start()
        if successor is not None:
            successor.ready()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        workers = f" ({node.supervisor.count} worker processes)" if node.supervisor is not None else ""
        print(f"farts-edge {__version__}: node {cfg.node.id} is up{workers}", flush=True)
        for name, url in node.urls().items():
            print(f"  {name:6} {url}", flush=True)
        if banner:
            print(banner, flush=True)
        print("Ctrl-C stops the node.", flush=True)  # the last line: tests wait for it
        await stop.wait()
        print("stopping...", flush=True)
        await node.stop()

    try:
        uvloop.run(main())
    except OSError as e:
        print(f"farts-edge: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


def cmd_up(args) -> int:
    from farts import quickstart

    data_dir = Path(args.data_dir)
    if args.nodes > 1:
        configs = quickstart.prepare_cluster(data_dir, args.nodes)
        for path in configs:
            _up_flags_into(path, args)
        return _up_cluster(args, configs)
    path = quickstart.prepare(data_dir)
    _up_flags_into(path, args)
    cfg = config.load(path)
    # (The API key is a secret: its place is printed, not the key, which would end up
    # in terminal scrollback and CI logs on every start.)
    banner = (f"  status page {_admin_url(path)}\n  config {path}\n  CA     {data_dir / 'ca' / 'ca.crt'} (curl --cacert it for HTTPS)\n"
              f"  tenant demo: its API key is tenants[0].api_keys in the config")
    return _serve(cfg, banner)


def _up_cluster(args, configs: list[Path]) -> int:
    """One `serve` process per node (so one can be killed), output prefixed by node;
    Ctrl-C or SIGTERM stops them all."""
    # The children import farts from where this process did (PYTHONSAFEPATH: not from the
    # working folder, which may hold another farts/ source tree, e.g. a checkout).
    import farts
    root = str(Path(farts.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONSAFEPATH": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}

    async def main() -> int:
        procs = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "farts.cli", "--log-level", args.log_level, "serve", "--config", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
            start_new_session=True)  # a terminal's Ctrl-C reaches the parent, which stops them in order
            for path in configs]
        ready = asyncio.Event()
        up: set[int] = set()

        async def forward(i: int, proc) -> None:
            async for line in proc.stdout:
                text = line.decode(errors="replace").rstrip()
                if text == "Ctrl-C stops the node.":
                    up.add(i)
                    if len(up) == len(procs):
                        ready.set()
                    continue
                print(f"[node-{i}] {text}", flush=True)
            code = await proc.wait()
            print(f"[node-{i}] exited ({code})", flush=True)

        tasks = [asyncio.ensure_future(forward(i, p)) for i, p in enumerate(procs, 1)]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        waiting = asyncio.ensure_future(ready.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([waiting, stopping], return_when=asyncio.FIRST_COMPLETED)
        if ready.is_set():
            admin = _admin_url(configs[0])
            print(f"farts-edge {__version__}: {len(procs)} nodes up, one CA: "
                  f"{Path(args.data_dir) / 'ca' / 'ca.crt'}\n"
                  f"  status page: {admin} (live: every node of the mesh; each node serves it "
                  f"on its admin listener)\n"
                  f"  mesh view: farts-edge status --admin {admin}\n"
                  "Ctrl-C stops the cluster.", flush=True)
        await stopping
        print("stopping the cluster...", flush=True)
        for p in procs:   # (the group: a node restarted by a deploy is a new process in it)
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), 20)
        except TimeoutError:
            for p in procs:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return 0

    return asyncio.run(main())


def _admin_url(path: Path) -> str:
    admin = config.load(path).listeners.admin
    host = f"[{admin.host}]" if ":" in admin.host else admin.host
    return f"http://{host}:{admin.port}/"


def cmd_ca_init(args) -> int:
    from farts import pki

    crt, key = pki.make_ca(Path(args.dir))
    print(f"CA certificate {crt}\nCA key         {key} (keep it private)")
    return 0


def cmd_ca_issue(args) -> int:
    from farts import pki

    ca_dir = Path(args.dir)
    if not (ca_dir / "ca.crt").exists():
        print(f"farts-edge: no CA in {ca_dir} (farts-edge ca init --dir {ca_dir})", file=sys.stderr)
        return 2
    crt, key = pki.issue_node(ca_dir, Path(args.out or args.dir), args.node_id, args.name)
    print(f"node certificate {crt} (id {args.node_id})\nnode key         {key}\n"
          f"set mesh.ca = {ca_dir / 'ca.crt'}, mesh.cert and mesh.key to them")
    return 0


def cmd_status(args) -> int:
    import json
    import urllib.request

    url = args.admin.rstrip("/") + "/api/mesh"
    token = args.token or os.environ.get("FARTS_ADMIN_TOKEN", "")
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            data = json.load(r)
    except (OSError, ValueError) as e:
        print(f"farts-edge: cannot read {url}: {e}", file=sys.stderr)
        return 1
    versions = data.get("versions") or {}   # (each member's own word, in its status sample)
    rows = [("ID", "REGION", "STATE", "INC", "RTT", "LAST HEARD", "LINK", "VERSION")]
    for m in data["members"]:
        rows.append((m["id"] + (" *" if m["self"] else ""), m["region"] or "-", m["state"], str(m["incarnation"]),
                     "-" if m["rtt_ms"] is None else f"{m['rtt_ms']:.2f} ms",
                     "-" if m["self"] or m["last_heard_s"] is None else f"{m['last_heard_s']:.1f} s ago",
                     "-" if m["link"] is None else ("up" if m["link"] else "down"), versions.get(m["id"]) or "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    print(f"({data['node']} is the node asked, marked *; "
          + ", ".join(f"{n} {s}" for s, n in data["counts"].items() if n) + ")")
    lag = (data.get("replication") or {}).get("lag_ms")
    if lag is not None:
        print("db replication lag: " + (", ".join(f"{o} {ms} ms" for o, ms in sorted(lag.items())) or "-"))
    for deployment, m in sorted((data.get("masters") or {}).items()):
        print(f"master of {deployment}: {m['master'] or 'none (being elected)'}, epoch {m['epoch']}")
    return 0


def _admin_json(args, path: str, body: dict | None = None):
    """GET (or POST body) a node's admin API; None after printing why it failed."""
    import json
    import urllib.error
    import urllib.request

    url = args.admin.rstrip("/") + path
    token = getattr(args, "token", "") or os.environ.get("FARTS_ADMIN_TOKEN", "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data, headers["content-type"] = json.dumps(body).encode(), "application/json"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        print(f"farts-edge: {url}: {e.code} {e.read().decode(errors='replace').strip()}", file=sys.stderr)
    except (OSError, ValueError) as e:
        print(f"farts-edge: cannot read {url}: {e} (is [master] enabled on that node?)", file=sys.stderr)
    return None


def _when(t) -> str:
    import datetime
    return "-" if t is None else datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_crons(args) -> int:
    data = _admin_json(args, "/api/master/crons")
    if data is None:
        return 1
    m = data["master"]
    print(f"deployment {m['deployment']}: master {m['deployments'].get(m['deployment'], {}).get('master') or 'none'}")
    for c in data["crons"]:
        print(f"{c['name']}  {c['schedule']} ({c['timezone']})  {c['action']} {c['target']}  "
              f"catch_up {c['catch_up']}  next {_when(c['next'])}")
        for r in c["history"][:args.last]:
            detail = r.get("error") or (f"HTTP {r['status']}" if r.get("status") else "")
            print(f"    {r['key']}  {r['state']:8} epoch {r['epoch']}  attempts {r.get('attempts', 0)}  {detail}")
    return 0


def cmd_alerts(args) -> int:
    if args.alerts_command == "ack":
        data = _admin_json(args, "/api/master/alerts/ack", {"id": args.id, "by": args.by})
        if data is None:
            return 1
        print(f"acknowledged {data['id']}: escalation stops")
        return 0
    data = _admin_json(args, "/api/master/alerts")
    if data is None:
        return 1
    for a in data["alerts"]:
        state = "resolved" if a.get("resolved") else "acked" if a.get("acked") else "firing"
        print(f"{a['id']}  {a['severity']:8} {state:8} tier {a.get('tier') or '-'}  since {_when(a['first_seen'])}  "
              f"{a['summary']}")
    if not data["alerts"]:
        print("no alerts")
    return 0


def cmd_drain(args) -> int:
    import json
    import urllib.request

    url = args.admin.rstrip("/") + "/api/drain"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=5) as r:
            data = json.load(r)
    except (OSError, ValueError) as e:
        print(f"farts-edge: cannot drain through {url}: {e}", file=sys.stderr)
        return 1
    print(f"{data['node']} is draining" + ("" if data["changed"] else " (it was already)")
          + ": peers no longer give it out in DNS answers; it keeps serving until stopped")
    return 0


def cmd_certs(args) -> int:
    import json
    import urllib.request

    if args.certs_command == "list":
        from cryptography import x509

        from farts.transport.tls import names_in
        cfg = config.load(args.config)
        cert_dir = cfg.path(cfg.listeners.https.cert_dir)
        for path in sorted(cert_dir.glob("*.crt")):
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            print(f"{path.name:20} until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC  "
                  f"issuer {cert.issuer.rfc4514_string()}  names {', '.join(names_in(path))}")
        return 0
    renew = args.certs_command == "renew"
    url = args.admin.rstrip("/") + ("/api/certs/renew" if renew else "/api/certs")
    try:
        req = urllib.request.Request(url, data=b"" if renew else None, method="POST" if renew else "GET")
        with urllib.request.urlopen(req, timeout=10) as r:
            print(json.dumps(json.load(r), indent=1))
    except (OSError, ValueError) as e:
        print(f"farts-edge: cannot read {url}: {e} (is [certs] enabled on that node?)", file=sys.stderr)
        return 1
    return 0


def cmd_serve(args) -> int:
    return _serve(_with_flags(config.load(args.config), args), takeover=args.takeover)


def cmd_config_check(args) -> int:
    cfg = config.load(args.file)
    print(f"{args.file}: ok ({len(cfg.tenants)} tenants, {len(cfg.routes)} routes, "
          f"{len(cfg.upstreams)} upstream groups)")
    return 0


def cmd_config_example(args) -> int:
    sys.stdout.write(config.EXAMPLE)
    return 0


def _http_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError("expected an http:// or https:// URL")
    return text


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("expected a number between 0 and 1")
    return value


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise argparse.ArgumentTypeError('expected a number of processes 1-256, or "auto"')
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="farts-edge", description="An edge node: TLS, HTTP, proxy, and more.")
    p.add_argument("--version", action="version", version=f"farts-edge {__version__}")
    p.add_argument("--log-level", default="INFO", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start a node on embedded defaults (writes a CA, certs and a config on first run)")
    up.add_argument("--data-dir", default="./farts-data")
    up.add_argument("--cdn-origin", metavar="URL", type=_http_url,
                    help="the origin of the /media/ CDN route (default: files in DATA_DIR/origin/)")
    up.add_argument("--nodes", type=int, default=1, choices=range(1, 255), metavar="N",
                    help="a local cluster of N nodes, node i on 127.0.0.i, data in DIR/node-i (default 1)")
    for name, default in zip(UP_PORTS, (8080, 8443, 9100, 5353, 27017), strict=True):
        up.add_argument(f"--{name}-port", type=int, metavar="PORT",
                        help=f"the {name} port (default {default}; 0: any free port)")
    up.epilog = ("Every flag is written into DATA_DIR/farts.toml (each node's, with --nodes), "
                 "so `farts-edge serve --config` runs the same node; edit that file for the rest.")
    up.set_defaults(func=cmd_up)

    serve = sub.add_parser("serve", help="run one node from a config file")
    serve.add_argument("--config", required=True)
    serve.add_argument("--takeover", action="store_true",
                       help="take over the node running this config (its sockets, subscribers and "
                            "history) without dropping work: a restart, e.g. onto a new release")
    serve.add_argument("--workers", type=_workers, metavar="N|auto",
                       help="processes serving the public listeners: HTTP/HTTPS, DNS, MongoDB (overrides node.workers; "
                            "auto: one per core)")
    serve.set_defaults(func=cmd_serve)

    for command in (up, serve):
        command.add_argument("--access-log", type=_fraction, metavar="FRACTION",
                             help="log this fraction of requests as JSON lines to standard error "
                                  "(1: all; overrides http.access_log_sample)")

    cfg = sub.add_parser("config", help="check or print configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = cfg_sub.add_parser("check", help="validate a config file")
    check.add_argument("file")
    check.set_defaults(func=cmd_config_check)
    example = cfg_sub.add_parser("example", help="print a complete, commented example config")
    example.set_defaults(func=cmd_config_example)

    ca = sub.add_parser("ca", help="the cluster CA that mesh certificates come from")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    ca_init = ca_sub.add_parser("init", help="make a cluster CA (kept if DIR has one)")
    ca_init.add_argument("--dir", required=True)
    ca_init.set_defaults(func=cmd_ca_init)
    ca_issue = ca_sub.add_parser("issue", help="issue a node certificate (the node id in it)")
    ca_issue.add_argument("node_id")
    ca_issue.add_argument("--dir", required=True, help="the CA's directory")
    ca_issue.add_argument("--out", help="where NODE_ID.crt/.key go (default: --dir)")
    ca_issue.add_argument("--name", action="append", default=[], help="a DNS name or IP to add (repeatable)")
    ca_issue.set_defaults(func=cmd_ca_issue)

    status = sub.add_parser("status", help="the mesh as a node sees it (its members table)")
    status.add_argument("--admin", default="http://127.0.0.1:9100/", help="the node's admin listener URL")
    status.add_argument("--token", default="", help="admin.token of that node, if it has one "
                        "(default: $FARTS_ADMIN_TOKEN)")
    status.set_defaults(func=cmd_status)
    crons = sub.add_parser("crons", help="the master's crons ([master]): schedules and last runs")
    crons_sub = crons.add_subparsers(dest="crons_command", required=True)
    c = crons_sub.add_parser("list", help="each cron's schedule, next slot and last runs")
    c.add_argument("--admin", default="http://127.0.0.1:9100/", help="any node's admin listener URL")
    c.add_argument("--last", type=int, default=5, help="runs shown per cron")
    c.set_defaults(func=cmd_crons)
    alerts = sub.add_parser("alerts", help="the master's alerts ([master.alerts])")
    alerts_sub = alerts.add_subparsers(dest="alerts_command", required=True)
    c = alerts_sub.add_parser("list", help="open and recent alerts")
    c.add_argument("--admin", default="http://127.0.0.1:9100/", help="any node's admin listener URL")
    c.set_defaults(func=cmd_alerts)
    c = alerts_sub.add_parser("ack", help="acknowledge an alert: its escalation stops")
    c.add_argument("id", help="the alert's id (alerts list) or its dedupe key")
    c.add_argument("--by", default=os.environ.get("USER", "operator"), help="who acknowledges")
    c.add_argument("--admin", default="http://127.0.0.1:9100/", help="any node's admin listener URL")
    c.set_defaults(func=cmd_alerts)
    drain = sub.add_parser("drain", help="take the node out of every node's DNS answers (it keeps serving)")
    drain.add_argument("--admin", default="http://127.0.0.1:9100/", help="the node's admin listener URL")
    drain.set_defaults(func=cmd_drain)

    certs = sub.add_parser("certs", help="the ACME certificates ([certs])")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    for name, text in (("status", "the ACME certificate's state on a node"),
                       ("renew", "order a new certificate now")):
        c = certs_sub.add_parser(name, help=text)
        c.add_argument("--admin", default="http://127.0.0.1:9100/", help="the node's admin listener URL")
        c.set_defaults(func=cmd_certs)
    c = certs_sub.add_parser("list", help="the certificates the HTTPS listener serves, from a config")
    c.add_argument("--config", default="./farts-data/farts.toml")
    c.set_defaults(func=cmd_certs)

    dns = sub.add_parser("dns", help="geo DNS tools")
    dns_sub = dns.add_subparsers(dest="dns_command", required=True)
    lookup = dns_sub.add_parser("lookup", help="which nodes a client gets for a name, and why")
    lookup.add_argument("name")
    lookup.add_argument("--client", required=True, help="the client's (or its ECS subnet's) address")
    lookup.add_argument("--subnet", type=int, metavar="PREFIX",
                        help="treat --client as an ECS subnet of this prefix length")
    lookup.add_argument("--type", default="A", choices=["A", "AAAA"])
    lookup.add_argument("--config", default="./farts-data/farts.toml")
    lookup.set_defaults(func=cmd_dns_lookup)

    hooks = sub.add_parser("webhooks", help="the webhook queue ([webhooks])")
    hooks_sub = hooks.add_subparsers(dest="webhooks_command", required=True)
    w = hooks_sub.add_parser("list", help="the queue as a node's replica has it: pending and dead letters")
    w.add_argument("--limit", type=int, default=100, help="deliveries shown per state")
    w = hooks_sub.add_parser("retry", help="put a dead letter back into the queue (a new retry window)")
    w.add_argument("id", help="the delivery id (wh_...)")
    for w in hooks_sub.choices.values():
        w.add_argument("--admin", default="http://127.0.0.1:9100/", help="the node's admin listener URL")
        w.add_argument("--token", default="", help="admin.token of that node (default: $FARTS_ADMIN_TOKEN)")
        w.set_defaults(func=cmd_webhooks)
    from farts.release.cli import add_parsers as add_release_parsers
    add_release_parsers(sub)   # release keygen|build|verify, deploy
    return p


def cmd_webhooks(args) -> int:
    import json
    import urllib.error
    import urllib.request

    retry = args.webhooks_command == "retry"
    url = args.admin.rstrip("/") + (f"/api/webhooks/retry/{args.id}" if retry else "/api/webhooks")
    token = args.token or os.environ.get("FARTS_ADMIN_TOKEN", "")
    req = urllib.request.Request(url, data=b"" if retry else None, method="POST" if retry else "GET",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            data = json.load(r)
    except urllib.error.HTTPError as e:
        if e.code == 404 and retry:
            print(f"farts-edge: no delivery {args.id} in the queue or the dead letters", file=sys.stderr)
            return 1
        print(f"farts-edge: {url}: HTTP {e.code} (is [webhooks] enabled on that node?)", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"farts-edge: cannot read {url}: {e}", file=sys.stderr)
        return 1
    if retry:
        print(f"{data['id']}: " + {"queued": "back in the queue", "pending": "already in the queue"}[data["state"]])
        return 0
    print(f"this node: {'master, epoch ' + str(data['epoch']) if data['master'] else 'not the master'}")
    for state in ("pending", "dead"):
        rows = [("ID", "TENANT", "EVENT", "ATTEMPTS", "LAST", "URL")]
        for d in data[state]["deliveries"][:args.limit]:
            rows.append((d["_id"], d["tenant"], d["event"], str(d["attempts"]),
                         d["error"] or (str(d["status"]) if d["status"] else "-"), d["url"]))
        print(f"\n{state}: {data[state]['count']}")
        if len(rows) > 1:
            widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
            for r in rows:
                print("  ".join(v[:60].ljust(min(w, 60)) for v, w in zip(r, widths, strict=False)) + "  " + r[-1])
    return 0


def cmd_dns_lookup(args) -> int:
    from farts.dns.lookup import explain_text

    print(explain_text(config.load(args.config), args.name, args.client, args.type, args.subnet))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except config.ConfigError as e:
        print(f"farts-edge: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
