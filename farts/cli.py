"""The `farts-edge` command."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from pathlib import Path

from farts import __version__, config


def _with_flags(cfg: config.Config, args) -> config.Config:
    if args.access_log is not None:
        cfg = dataclasses.replace(cfg, http=dataclasses.replace(cfg.http, access_log_sample=args.access_log))
    if getattr(args, "cdn_origin", None) and "media" in cfg.cdn.origins:
        media = config.CDNOrigin(kind="http", url=args.cdn_origin)
        cfg = dataclasses.replace(cfg, cdn=dataclasses.replace(cfg.cdn, origins={**cfg.cdn.origins, "media": media}))
    return cfg


def _serve(cfg: config.Config, banner: str = "") -> int:
    import uvloop

    from farts.node import Node

    async def main() -> None:
        node = Node(cfg)
        await node.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"farts-edge {__version__}: node {cfg.node.id} is up", flush=True)
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
    path = quickstart.prepare(data_dir)
    cfg = _with_flags(config.load(path), args)
    key = cfg.tenants[0].api_keys[0] if cfg.tenants and cfg.tenants[0].api_keys else "-"
    banner = (f"  config {path}\n  CA     {data_dir / 'ca' / 'ca.crt'} (curl --cacert it for HTTPS)\n"
              f"  tenant demo, API key {key}")
    return _serve(cfg, banner)


def cmd_serve(args) -> int:
    return _serve(_with_flags(config.load(args.config), args))


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
    up.set_defaults(func=cmd_up)

    serve = sub.add_parser("serve", help="run one node from a config file")
    serve.add_argument("--config", required=True)
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
    return p


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
