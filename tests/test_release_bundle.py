"""Release bundles: a valid one verifies; every kind of bad one is refused with its reason.

The tamper cases use a bundle around a small stand-in wheel file (the checks are on the
bundle's bytes, not on what the wheel holds); test_release_build.py builds the real one.
"""
from __future__ import annotations

import stat
import tarfile
from datetime import date, timedelta
from pathlib import Path

import pytest
from packaging.tags import sys_tags

from farts import cli, config
from farts.release import bundle
from farts.release.bundle import Refused

HERE = next(iter(sys_tags()))   # a tag this interpreter installs


def wheel_name(version: str, platform: str = HERE.platform) -> str:
    return f"farts_edge-{version}-{HERE.interpreter}-{HERE.abi}-{platform}.whl"


@pytest.fixture
def keys(tmp_path):
    key, pub = bundle.keygen(tmp_path / "keys")
    return bundle.load_private_key(key), bundle.load_public_key(pub), pub


def make(tmp_path: Path, key, version: str = "0.2.0", platform: str = HERE.platform) -> Path:
    wheel = tmp_path / wheel_name(version, platform)
    wheel.write_bytes(b"PK\x03\x04 stand-in wheel " * 200)
    return bundle.make_bundle(key, [wheel], version, {"commit": "abc"}, tmp_path / f"b-{version}.tar")


def flip_byte(path: Path, member: str, at: int) -> None:
    with tarfile.open(path) as tar:
        offset = tar.getmember(member).offset_data + at
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path):
    key, pub = bundle.keygen(tmp_path / "k")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert bundle.load_public_key(pub).id == bundle.key_id(
        bundle._raw(bundle.load_private_key(key).public_key()))
    with pytest.raises(FileExistsError):
        bundle.keygen(tmp_path / "k")


def test_a_valid_bundle_verifies(tmp_path, keys):
    key, pub, _ = keys
    release = bundle.verify(make(tmp_path, key), [pub], current="0.1.0")
    assert (release.version, release.wheel) == ("0.2.0", wheel_name("0.2.0"))
    out = bundle.extract_wheel(release, tmp_path / "out")
    assert out.read_bytes() == (tmp_path / wheel_name("0.2.0")).read_bytes()


def test_one_flipped_byte_in_the_wheel_is_refused(tmp_path, keys):
    key, pub, _ = keys
    path = make(tmp_path, key)
    flip_byte(path, wheel_name("0.2.0"), 1000)
    with pytest.raises(Refused, match="SHA-256 differs"):
        bundle.verify(path, [pub])


def test_a_changed_manifest_is_refused(tmp_path, keys):
    key, pub, _ = keys
    path = make(tmp_path, key)
    with tarfile.open(path) as tar:
        text = tar.extractfile(bundle.MANIFEST).read()
    flip_byte(path, bundle.MANIFEST, text.index(b'"0.2.0"') + 3)   # "0.2.0" -> "0.3.0"
    with pytest.raises(Refused, match="signature does not verify"):
        bundle.verify(path, [pub])


def test_a_file_added_to_the_bundle_is_refused(tmp_path, keys):
    key, pub, _ = keys
    path = make(tmp_path, key)
    extra = tmp_path / "evil.pth"
    extra.write_text("import os\n")
    with tarfile.open(path, "a") as tar:
        tar.add(extra, arcname="evil.pth")
    with pytest.raises(Refused, match="not in the manifest: evil.pth"):
        bundle.verify(path, [pub])


def test_a_key_that_is_not_trusted_is_refused(tmp_path, keys):
    key, _, _ = keys
    other = bundle.load_public_key(bundle.keygen(tmp_path / "other")[1])
    with pytest.raises(Refused, match="not trusted here"):
        bundle.verify(make(tmp_path, key), [other])
    with pytest.raises(Refused, match="trusted: none"):
        bundle.verify(make(tmp_path, key), [])


def test_an_expired_key_is_refused(tmp_path):
    key, pub = bundle.keygen(tmp_path / "k", not_after=date.today() - timedelta(days=1))
    path = make(tmp_path, bundle.load_private_key(key))
    with pytest.raises(Refused, match="expired on"):
        bundle.verify(path, [bundle.load_public_key(pub)])
    assert bundle.verify(path, [bundle.load_public_key(pub)], today=date.today() - timedelta(days=2))


def test_a_wheel_for_another_platform_is_refused(tmp_path, keys):
    key, pub, _ = keys
    with pytest.raises(Refused, match="no wheel for this platform"):
        bundle.verify(make(tmp_path, key, platform="macosx_11_0_arm64"), [pub])


def test_a_downgrade_needs_allow_downgrade(tmp_path, keys):
    key, pub, _ = keys
    path = make(tmp_path, key, "0.2.0")
    with pytest.raises(Refused, match="older than the running 0.3.0"):
        bundle.verify(path, [pub], current="0.3.0")
    assert bundle.verify(path, [pub], current="0.3.0", allow_downgrade=True).version == "0.2.0"


def test_verify_command_exits_non_zero_with_the_reason(tmp_path, keys, capsys):
    key, _, pub_path = keys
    path = make(tmp_path, key)
    assert cli.main(["release", "verify", "--trust", str(pub_path), "--current", "0.1.0", str(path)]) == 0
    assert "valid, version 0.2.0" in capsys.readouterr().out
    flip_byte(path, wheel_name("0.2.0"), 7)
    assert cli.main(["release", "verify", "--trust", str(pub_path), str(path)]) == 1
    assert "refused:" in capsys.readouterr().err


def test_trusted_keys_in_the_config_are_checked_at_load(tmp_path, keys):
    _, pub, pub_path = keys
    cfg = config.parse(f'[release]\ntrusted_keys = ["{pub_path}"]\n', str(tmp_path / "farts.toml"))
    assert cfg.release.trusted_keys == [str(pub_path)]
    (tmp_path / "farts-data").mkdir()   # (relative paths are relative to data_dir)
    (tmp_path / "farts-data" / "bad.pub").write_text("ssh-ed25519 AAAA\n")
    with pytest.raises(config.ConfigError, match=r"release.trusted_keys\[0\]: .*bad.pub: expected"):
        config.parse('[release]\ntrusted_keys = ["bad.pub"]\n', str(tmp_path / "farts.toml"))
