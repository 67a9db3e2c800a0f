"""`farts-edge up --nodes N` makes a release key for its cluster and every node trusts it,
so a bundle signed with it can be deployed there (README: Releases, restarts and deploys)."""
from __future__ import annotations

from farts import config, quickstart
from farts.release import bundle


def test_up_writes_a_release_key_every_node_of_the_cluster_trusts(tmp_path):
    data = tmp_path / "cluster"
    paths = quickstart.prepare_cluster(data, 3)
    pub = bundle.load_public_key(data / "release" / "release.pub")
    assert (data / "release" / "release.key").stat().st_mode & 0o777 == 0o600
    for path in paths:
        cfg = config.load(path)
        (trusted,) = cfg.release.trusted_keys
        assert bundle.load_public_key(cfg.path(trusted)).id == pub.id
    quickstart.prepare_cluster(data, 3)   # a second `up` keeps the key
    assert bundle.load_public_key(data / "release" / "release.pub").id == pub.id
