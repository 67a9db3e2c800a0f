"""The release config section ``[release]``: which keys a node trusts to sign its
releases, and where it installs them."""
from __future__ import annotations

from dataclasses import dataclass

from farts.config import NON_NEGATIVE, POSITIVE, ConfigError, Section, setting


@dataclass(frozen=True)
class ReleaseConfig:
    # Public key files (`farts-edge release keygen` writes release.pub) whose signatures
    # this node accepts on a release bundle; relative paths are relative to data_dir.
    # Empty: the node installs no bundle at all.
    trusted_keys: list[str] = setting([])
    # Where each installed release gets its own environment (DIR/<version>), beside the
    # running one; relative to data_dir.
    envs_dir: str = "envs"
    # A restart spreads its subscribers' reconnects (WebSocket close 1012, SSE retry)
    # over this many seconds, so the new process does not get them all at once.
    reconnect_spread: float = setting(2.0, POSITIVE)
    # A deploy run from this node (`farts-edge deploy`): after a node restarts it must
    # answer healthy within health_timeout seconds, then stay healthy for bake seconds
    # (canary_bake for the canaries) before the next node's turn.
    health_timeout: float = setting(60.0, POSITIVE)
    bake: float = setting(30.0, NON_NEGATIVE)
    canary_bake: float = setting(60.0, NON_NEGATIVE)


def _cross_check(cfg) -> None:
    from farts.release.bundle import BadKey, load_public_key
    for i, name in enumerate(cfg.release.trusted_keys):
        path = cfg.path(name)
        try:
            load_public_key(path)
        except OSError as e:
            raise ConfigError(f"{cfg.source}: release.trusted_keys[{i}]: cannot read {path}: {e.strerror}") from None
        except BadKey as e:
            raise ConfigError(f"{cfg.source}: release.trusted_keys[{i}]: {path}: {e}") from None


SECTION = Section("release", ReleaseConfig, ReleaseConfig, _cross_check)
