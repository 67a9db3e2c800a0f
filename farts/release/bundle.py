"""Signed release bundles: make the signing key, build a bundle, verify one.

A bundle is one uncompressed tar file (the wheels inside are compressed already):

    manifest.json   {"format", "version", "key", "files": [{name, size, sha256}], "build": {...}}
    manifest.sig    the Ed25519 signature of manifest.json's exact bytes, base64
    <wheel>...      the files the manifest lists, nothing else

The manifest is what is signed, and it pins every other file by size and SHA-256, so
one flipped byte anywhere is caught: in a wheel by its hash, in the manifest by the
signature. Nothing is unpacked to disk before the whole bundle has verified.

A public key file (``release.pub``) is one line, like an SSH key:
``farts-edge-release ed25519 <base64 raw key> [not-after=YYYY-MM-DD]``; its id (what the
manifest names) is the first 16 hex digits of the raw key's SHA-256.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from packaging.tags import Tag, sys_tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

FORMAT = 1
MANIFEST, SIGNATURE = "manifest.json", "manifest.sig"
KEY_KIND = "farts-edge-release"


class BadKey(ValueError):
    """A key file that cannot be read as a release key."""


class Refused(ValueError):
    """A bundle that must not be installed; the message says why."""


@dataclass(frozen=True)
class PublicKey:
    key: Ed25519PublicKey
    id: str
    not_after: date | None = None


@dataclass(frozen=True)
class Release:
    """A verified bundle: its manifest, and the wheel of it that fits this platform."""
    path: Path
    version: str
    manifest: dict
    wheel: str


def key_id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# -- keys ------------------------------------------------------------------------------------
def keygen(out: Path, not_after: date | None = None) -> tuple[Path, Path]:
    """Writes out/release.key (PEM, mode 0600, made with that mode: never readable by
    others, not even for an instant) and out/release.pub. Refuses to overwrite a key."""
    out.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out / "release.key", out / "release.pub"
    if key_path.exists():
        raise FileExistsError(f"{key_path} exists: keep it, or move it away first")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    raw = _raw(private.public_key())
    line = f"{KEY_KIND} ed25519 {base64.b64encode(raw).decode()}"
    if not_after is not None:
        line += f" not-after={not_after.isoformat()}"
    pub_path.write_text(line + "\n")
    return key_path, pub_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except ValueError as e:
        raise BadKey(f"not a PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadKey("not an Ed25519 key")
    return key


def load_public_key(path: Path) -> PublicKey:
    parts = Path(path).read_text().split()
    if len(parts) not in (3, 4) or parts[0] != KEY_KIND or parts[1] != "ed25519":
        raise BadKey(f"expected '{KEY_KIND} ed25519 <base64 key> [not-after=YYYY-MM-DD]'")
    try:
        raw = base64.b64decode(parts[2], validate=True)
        key = Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as e:
        raise BadKey(f"bad key: {e}") from None
    not_after = None
    if len(parts) == 4:
        name, _, value = parts[3].partition("=")
        try:
            if name != "not-after":
                raise ValueError(name)
            not_after = date.fromisoformat(value)
        except ValueError:
            raise BadKey(f"expected not-after=YYYY-MM-DD, got {parts[3]!r}") from None
    return PublicKey(key, key_id(raw), not_after)


# -- making a bundle ---------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def make_bundle(key: Ed25519PrivateKey, files: list[Path], version: str, build: dict, out: Path) -> Path:
    """Signs a manifest of ``files`` and writes the bundle (atomically: a reader never
    sees half a bundle)."""
    manifest = {"format": FORMAT, "version": version, "key": key_id(_raw(key.public_key())),
                "files": [{"name": p.name, "size": p.stat().st_size, "sha256": _sha256(p)} for p in files],
                "build": build}
    data = json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n"
    signature = base64.b64encode(key.sign(data)) + b"\n"
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, blob in ((MANIFEST, data), (SIGNATURE, signature)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(blob), int(datetime.now(UTC).timestamp()), 0o644
            tar.addfile(info, io.BytesIO(blob))
        for p in files:
            tar.add(p, arcname=p.name, recursive=False)
    os.replace(tmp, out)
    return out


def _git(checkout: Path, *args: str) -> str:
    r = subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


def copy_checkout(checkout: Path, dest: Path) -> None:
    """The files git knows (tracked or new, not ignored): what a clean clone holds, without
    build leftovers or in-place compiled modules."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=checkout,
                            capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, listed):
        src = checkout / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())


def build(key_path: Path, out: Path, checkout: Path, isolated: bool = False, log=print) -> Path:
    """Builds this checkout's platform wheel (``python -m build --wheel``, its output shown
    as it goes) and signs it into the bundle ``out``."""
    key = load_private_key(key_path)   # before minutes of compiling, not after
    with tempfile.TemporaryDirectory(prefix="farts-release-") as tmp:
        src, dist = Path(tmp) / "src", Path(tmp) / "dist"
        log(f"copying the checkout {checkout} (files git knows)")
        copy_checkout(checkout, src)
        # Without isolation the build uses this environment's setuptools and Cython (no
        # download); --isolated builds in a fresh one, as a release pipeline would.
        cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(src)]
        if not isolated:
            cmd.insert(4, "--no-isolation")
        log("$ " + " ".join(cmd))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log("  | " + line.rstrip())
        if proc.wait() != 0:
            raise RuntimeError(f"the wheel build failed (exit {proc.returncode}); its output is above")
        wheels = sorted(dist.glob("*.whl"))
        if not wheels:
            raise RuntimeError("the build made no wheel")
        _, version, _, tags = parse_wheel_filename(wheels[0].name)
        meta = {"commit": _git(checkout, "rev-parse", "HEAD"),
                "dirty": bool(_git(checkout, "status", "--porcelain", "--untracked-files=no")),
                "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "python": platform.python_version(), "implementation": sys.implementation.name,
                "platform_tags": sorted(str(t) for t in tags), "machine": platform.machine(),
                "builder": platform.platform()}
        make_bundle(key, wheels, str(version), meta, out)
    return out


# -- verifying -------------------------------------------------------------------------------------
def _members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    out = {}
    for m in tar.getmembers():
        if not m.isfile() or "/" in m.name or m.name.startswith(".") or m.name in out:
            raise Refused(f"bundle member {m.name!r}: only plain files at the top, once each")
        out[m.name] = m
    return out


def _hash_member(tar: tarfile.TarFile, m: tarfile.TarInfo) -> str:
    h = hashlib.sha256()
    f = tar.extractfile(m)
    while chunk := f.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def verify(path: Path, trusted: Iterable[PublicKey], current: str | None = None,
           allow_downgrade: bool = False, tags: Iterable[Tag] | None = None,
           today: date | None = None) -> Release:
    """Checks everything or raises ``Refused`` with the reason: the signer is a trusted
    key, not expired (``today``); the manifest's signature; the set of files, each one's
    size and SHA-256; a wheel for this platform (``tags``: this interpreter's by
    default); no downgrade from ``current`` unless allowed."""
    trusted = {k.id: k for k in trusted}
    try:
        tar = tarfile.open(path, "r:")
    except (OSError, tarfile.TarError) as e:
        raise Refused(f"{path}: not a release bundle ({e})") from None
    with tar:
        try:
            members = _members(tar)
            if MANIFEST not in members or SIGNATURE not in members:
                raise Refused(f"{path}: not a release bundle (no {MANIFEST} or {SIGNATURE})")
            data = tar.extractfile(members[MANIFEST]).read()
            signature = tar.extractfile(members[SIGNATURE]).read()
            try:
                manifest = json.loads(data)
                signer = manifest["key"]
            except (ValueError, KeyError, TypeError):
                raise Refused("the manifest is not a signed release manifest (tampered?)") from None
            key = trusted.get(signer)
            if key is None:
                raise Refused(f"signed by key {signer}, which is not trusted here "
                              f"(trusted: {', '.join(sorted(trusted)) or 'none'})")
            if key.not_after is not None and (today or date.today()) > key.not_after:
                raise Refused(f"signed by key {signer}, which expired on {key.not_after}")
            try:
                key.key.verify(base64.b64decode(signature.strip(), validate=True), data)
            except (InvalidSignature, ValueError):
                raise Refused(f"the manifest's signature does not verify with key {signer} "
                              "(the manifest was changed after signing)") from None
            listed = _check_files(tar, members, manifest)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise Refused(f"{path}: damaged bundle ({e})") from None
    version = _check_version(manifest, current, allow_downgrade)
    return Release(Path(path), version, manifest, _pick_wheel(listed, version, tags))


def _check_files(tar, members: dict, manifest: dict) -> list[str]:
    try:
        files = {f["name"]: (int(f["size"]), str(f["sha256"])) for f in manifest["files"]}
    except (KeyError, TypeError, ValueError):
        raise Refused("the manifest's file list is malformed") from None
    extra = set(members) - set(files) - {MANIFEST, SIGNATURE}
    if extra:
        raise Refused(f"files not in the manifest: {', '.join(sorted(extra))}")
    for name, (size, sha) in files.items():
        m = members.get(name)
        if m is None:
            raise Refused(f"{name}: listed in the manifest, missing from the bundle")
        if m.size != size:
            raise Refused(f"{name}: {m.size} bytes, the manifest says {size}")
        if _hash_member(tar, m) != sha:
            raise Refused(f"{name}: SHA-256 differs from the manifest's (the file was changed)")
    return list(files)


def _check_version(manifest: dict, current: str | None, allow_downgrade: bool) -> str:
    try:
        version = Version(str(manifest["version"]))
    except (KeyError, InvalidVersion):
        raise Refused(f"bad version {manifest.get('version')!r} in the manifest") from None
    if current is not None and not allow_downgrade:
        try:
            older = version < Version(current)
        except InvalidVersion:
            older = False   # a running version that is no version (a source tree): nothing to compare
        if older:
            raise Refused(f"{version} is older than the running {current}: a downgrade "
                          "(--allow-downgrade to install it anyway)")
    return str(version)


def _pick_wheel(names: list[str], version: str, tags: Iterable[Tag] | None) -> str:
    wanted = set(sys_tags() if tags is None else tags)
    seen = []
    for name in names:
        if not name.endswith(".whl"):
            continue
        try:
            _, wheel_version, _, wheel_tags = parse_wheel_filename(name)
        except InvalidWheelFilename as e:
            raise Refused(f"{name}: not a wheel name ({e})") from None
        if str(wheel_version) != version:
            raise Refused(f"{name}: version {wheel_version}, the manifest says {version}")
        if wheel_tags & wanted:
            return name
        seen.append(name)
    raise Refused(f"no wheel for this platform ({platform.machine()}, Python "
                  f"{platform.python_version()}); the bundle has: {', '.join(seen) or 'no wheel'}")


def extract_wheel(release: Release, dest: Path) -> Path:
    """Copies the verified wheel out of the bundle, checking its hash again as it is
    written (the bundle file could have been swapped since it was verified)."""
    entry = next(f for f in release.manifest["files"] if f["name"] == release.wheel)
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / release.wheel
    h = hashlib.sha256()
    with tarfile.open(release.path, "r:") as tar, open(out, "wb") as f:
        src = tar.extractfile(tar.getmember(release.wheel))
        while chunk := src.read(1 << 20):
            h.update(chunk)
            f.write(chunk)
    if h.hexdigest() != entry["sha256"]:
        out.unlink()
        raise Refused(f"{release.wheel}: changed since it was verified")
    return out
