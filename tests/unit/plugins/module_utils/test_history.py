"""history.py: the blast radius of a key over a repository's git history."""

from __future__ import annotations

import subprocess

from ansible_collections.nixfleet.sops.plugins.module_utils import age, history
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def keypair():
    ident = age.generate_identity()
    return ident, age.recipient_from_identity(ident)


def test_three_commits_host_gains_access_at_the_second(tmp_path):
    repo = tmp_path / "nix-secrets"
    (repo / "sops").mkdir(parents=True)
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "t@example.invalid")
    git(repo, "config", "user.name", "t")
    admin_id, admin = keypair()
    _unused, ghost = keypair()
    _unused, ghost_old = keypair()
    cfg = repo / ".sops.yaml"

    # 1: ghost (under an older key) reads only its own file; shared is admin-only.
    cfg.write_text(f"keys:\n  - &admin {admin}\n  - &ghost {ghost_old}\ncreation_rules: []\n")
    engine.encrypt_file(str(repo / "sops/shared.yaml"), {"db": {"password": "p1"}}, [[admin]])
    engine.encrypt_file(str(repo / "sops/ghost.yaml"), {"wifi": "w"}, [[admin, ghost_old]])
    engine.encrypt_file(str(repo / "sops/other.yaml"), {"api": "a"}, [[admin]])
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "one")
    first = git(repo, "rev-parse", "HEAD")

    # 2: ghost's key is rotated and it gains shared.yaml (and a new key path in it).
    cfg.write_text(f"keys:\n  - &admin {admin}\n  - &ghost {ghost}\ncreation_rules: []\n")
    engine.set_value(str(repo / "sops/shared.yaml"), ["smtp", "token"], "t", identities=[admin_id])
    engine.updatekeys(str(repo / "sops/shared.yaml"), [[admin, ghost]], identities=[admin_id])
    engine.updatekeys(str(repo / "sops/ghost.yaml"), [[admin, ghost]], identities=[admin_id])
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "two")
    second = git(repo, "rev-parse", "HEAD")

    # 3: shared.yaml gains one more key path, ghost still reads it; other.yaml changes, still admin only.
    engine.set_value(str(repo / "sops/shared.yaml"), ["smtp", "user"], "u", identities=[admin_id])
    engine.set_value(str(repo / "sops/other.yaml"), ["api2"], "b", identities=[admin_id])
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "three")
    third = git(repo, "rev-parse", "HEAD")

    found = history.blast_radius(str(repo), [ghost], anchors=["ghost"],
                                 current={"sops/shared.yaml": [admin, ghost], "sops/ghost.yaml": [admin, ghost]})
    report = {f.path: f.as_dict() for f in found}
    assert set(report) == {"sops/ghost.yaml", "sops/shared.yaml"}
    assert report["sops/ghost.yaml"]["first_commit"] == first  # through the old key, found in .sops.yaml history
    assert report["sops/shared.yaml"]["first_commit"] == second
    assert {k["key"]: k["first_commit"] for k in report["sops/shared.yaml"]["key_paths"]} == {
        "db/password": second, "smtp/token": second, "smtp/user": third}
    assert [k["key"] for k in report["sops/ghost.yaml"]["key_paths"]] == ["wifi"]
    assert all(f.readable_now for f in found)

    # Without the anchor's history only the current key counts: ghost.yaml at commit one is not found.
    alone = {f.path: f.first_commit for f in history.blast_radius(str(repo), [ghost])}
    assert alone == {"sops/ghost.yaml": second, "sops/shared.yaml": second}


def test_not_a_repository_is_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(history.HistoryError, match="git log failed"):
        history.blast_radius(str(tmp_path), ["age1x"])
