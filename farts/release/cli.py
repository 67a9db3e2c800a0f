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
