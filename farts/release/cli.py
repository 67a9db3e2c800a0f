"""`farts-edge release keygen|build|verify` (and, from rollout, `deploy`)."""
from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

from farts import __version__


def cmd_keygen(args) -> int:
    from farts.release import bundle

    try:
        key, pub = bundle.keygen(Path(args.out), args.not_after)
    except FileExistsError as e:
        print(f"farts-edge: {e}", file=sys.stderr)
        return 1
    print(f"signing key {key} (mode 0600: keep it off the nodes)\npublic key  {pub} "
          f"(id {bundle.load_public_key(pub).id}): list it in each node's release.trusted_keys")
    return 0


def cmd_build(args) -> int:
    from farts.release import bundle

    out = Path(args.out)
    try:
        bundle.build(Path(args.key), out, Path(args.checkout).resolve(), args.isolated,
                     log=lambda line: print(line, file=sys.stderr, flush=True))
    except (OSError, RuntimeError, bundle.BadKey) as e:
        print(f"farts-edge: release build: {e}", file=sys.stderr)
        return 1
    print(f"{out}: signed release bundle")
    return 0


def cmd_verify(args) -> int:
    from farts.release import bundle

    try:
        trusted = [bundle.load_public_key(Path(p)) for p in args.trust]
    except (OSError, bundle.BadKey) as e:
        print(f"farts-edge: --trust: {e}", file=sys.stderr)
        return 2
    try:
        release = bundle.verify(Path(args.bundle), trusted, current=args.current,
                                allow_downgrade=args.allow_downgrade)
    except bundle.Refused as e:
        print(f"farts-edge: refused: {e}", file=sys.stderr)
        return 1
    b = release.manifest.get("build", {})
    print(f"{args.bundle}: valid, version {release.version}, signed by {release.manifest['key']}, "
          f"wheel {release.wheel} (commit {b.get('commit') or '?'}, built {b.get('built_at', '?')})")
    return 0


def add_parsers(sub) -> None:
    rel = sub.add_parser("release", help="signed release bundles: keygen, build, verify")
    rel_sub = rel.add_subparsers(dest="release_command", required=True)
    keygen = rel_sub.add_parser("keygen", help="make an Ed25519 signing key: DIR/release.key (0600) "
                                "and DIR/release.pub")
    keygen.add_argument("--out", required=True, metavar="DIR")
    keygen.add_argument("--not-after", type=date.fromisoformat, metavar="YYYY-MM-DD",
                        help="nodes refuse bundles signed by this key after that day")
    keygen.set_defaults(func=cmd_keygen)
    build = rel_sub.add_parser("build", help="build this checkout's platform wheel and sign it into a bundle")
    build.add_argument("--key", required=True, help="the signing key (release.key)")
    build.add_argument("--out", required=True, metavar="FILE")
    build.add_argument("--checkout", default=".", help="the source checkout (default: here)")
    build.add_argument("--isolated", action="store_true",
                       help="build in a fresh isolated environment (downloads the build requirements)")
    build.set_defaults(func=cmd_build)
    verify = rel_sub.add_parser("verify", help="check a bundle's signature, hashes, platform and version")
    verify.add_argument("bundle")
    verify.add_argument("--trust", action="append", required=True, metavar="PUB",
                        help="a trusted public key file (repeatable)")
    verify.add_argument("--current", default=__version__,
                        help=f"the version it would replace, for the downgrade check (default {__version__})")
    verify.add_argument("--allow-downgrade", action="store_true")
    verify.set_defaults(func=cmd_verify)

    deploy = sub.add_parser("deploy", help="roll a release bundle across the deployment, one node at a "
                            "time (`deploy status`: its progress)")
    deploy.add_argument("bundle", help="the bundle file, or `status`")
    deploy.add_argument("--admin", default="http://127.0.0.1:9100/",
                        help="the admin listener of the node that runs the rollout")
    deploy.add_argument("--deployment", default="", metavar="NAME")
    deploy.add_argument("--canary", type=int, default=1, metavar="N", help="nodes deployed and baked first")
    deploy.add_argument("--node", action="append", default=[], metavar="ID=URL",
                        help="a node and its admin URL (repeatable; default: the mesh members of --admin's node)")
    deploy.add_argument("--allow-downgrade", action="store_true")
    deploy.add_argument("--wait", action="store_true", help="follow the progress until it ends")
    deploy.set_defaults(func=cmd_deploy)


def _admin_call(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def _show(status: dict) -> str:
    nodes = ", ".join(f"{n['node']}{'*' if n['canary'] else ''} {n['state']}" for n in status.get("nodes", []))
    return f"deploy {status.get('version', '-')}: {status['state']} [{nodes}] {status.get('reason', '')}".rstrip()


WAIT_UNHEARD = 120.0   # deploy --wait: seconds without word of the deploy before it gives up


def cmd_deploy(args) -> int:
    import json
    import time
    from urllib.parse import urlencode

    admin = args.admin.rstrip("/")
    try:
        if args.bundle == "status":
            print(_show(_admin_call(admin + "/api/deploy")[1]))
            return 0
        nodes = dict(n.split("=", 1) for n in args.node)
        q = urlencode({"canary": args.canary, "deployment": args.deployment,
                       "allow_downgrade": "1" if args.allow_downgrade else "0"})
        code, body = _admin_call(f"{admin}/api/deploy?{q}", Path(args.bundle).read_bytes(),
                                 {"x-deploy-nodes": json.dumps(nodes)})
        if code != 202:
            print(f"farts-edge: deploy refused: {body.get('refused') or body.get('error') or body}", file=sys.stderr)
            return 1
        print(_show(body), flush=True)
        last, heard = "", time.monotonic()
        while args.wait:
            time.sleep(1)
            status = _admin_call(admin + "/api/deploy")[1]
            if status.get("version") != body.get("version") or "state" not in status:
                # (no answer, or another deploy's: a node restarting, a master changing)
                if time.monotonic() - heard > WAIT_UNHEARD:
                    print(f"farts-edge: no word of deploy {body.get('version')} for {WAIT_UNHEARD:.0f} s: "
                          f"{status.get('error') or json.dumps(status)[:300]}", file=sys.stderr)
                    return 1
                continue
            heard = time.monotonic()
            if _show(status) != last:
                last = _show(status)
                print(last, flush=True)
            if status["state"] != "running":
                return 0 if status["state"] == "done" else 1
    except (OSError, ValueError) as e:
        print(f"farts-edge: deploy through {admin}: {e}", file=sys.stderr)
        return 1
    return 0
