"""revoke.py: a revoked host's keys open no current file (real sops), exactly the files it could read get a new
data key, and the blast radius lists exactly the key paths it could read over a three-commit history."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, bootstrap, fleet, revoke, rotation, vcs
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig, SopsConfigError

from tests.lib.secrets_repo import make_repo, sops_decrypt

HOST = "griefling"


def git(repo, *args):
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout.strip()


def tree(path):
    out = {}
    for base, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != ".git"]
        for f in files:
            full = os.path.join(base, f)
            out[os.path.relpath(full, path)] = open(full, "rb").read()
    return out


def metas(repo):
    out = {}
    for fp in fleet.Plan.scan(repo.path).files:
        meta = engine.SopsFile.open(fp.path).metadata
        out[fp.rel] = (meta.mac, meta.lastmodified)
    return out


def keyfile(tmp_path, name, identity):
    path = tmp_path / f"{name}.txt"
    path.write_text(age.format_identity_file(identity))
    return str(path)


@pytest.fixture
def history_repo(tmp_path):
    """Commit 1: alpha and beta. Commit 2: griefling bootstrapped (it gains shared.yaml). Commit 3: shared.yaml gains
    a key path, a fleet file griefling and alpha read appears, alpha's file changes. Then griefling's keys."""
    repo = make_repo(str(tmp_path), hosts=("alpha", "beta"))
    admin = [repo.identities["admin"]]
    c1 = git(repo.path, "rev-parse", "HEAD")
    spec = bootstrap.HostSpec(host=HOST, user="rain", admins=["admin"], deploy_repos=["nix-config"])
    res = bootstrap.ensure_host_keys(repo.path, spec, admin)
    c2 = vcs.commit(repo.path, res.touched, "bootstrap griefling").commit
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_rule(r"sops/fleet\.yaml$", anchors=["admin", "alpha", HOST])
    cfg.save()
    engine.encrypt_file(repo.file("sops/fleet.yaml"), {"ntp": {"token": "t"}, "smtp": "s"},
                        [[repo.recipient("admin"), repo.recipient("alpha"), cfg.anchors()[HOST].recipient]])
    engine.set_value(repo.file("sops/shared.yaml"), ["vpn", "psk"], "p", identities=admin)
    engine.set_value(repo.file("sops/alpha.yaml"), ["extra"], "e", identities=admin)
    c3 = vcs.commit(repo.path, [".sops.yaml", "sops/fleet.yaml", "sops/shared.yaml", "sops/alpha.yaml"],
                    "three").commit
    host_id = age.ssh_private_key_to_identity(
        engine.load(repo.file(f"sops/host-keys/{HOST}.yaml")).unlock(admin).get([bootstrap.HOST_KEY_NAME]))
    user_id = engine.load(repo.file(f"sops/{HOST}.yaml")).unlock(admin).get(["keys", "age"])
    keys = {"host": keyfile(tmp_path, "host", host_id), "user": keyfile(tmp_path, "user", user_id)}
    return repo, admin, (c1, c2, c3), keys


def test_revoke_acceptance(history_repo, sops_bin, tmp_path):
    repo, admin, (c1, c2, c3), keys = history_repo
    readable = {"sops/shared.yaml", "sops/fleet.yaml", f"sops/{HOST}.yaml"}
    # Before: the host's keys open what it may read.
    assert sops_decrypt(sops_bin, repo.file("sops/shared.yaml"), keys["host"]).returncode == 0
    assert sops_decrypt(sops_bin, repo.file(f"sops/{HOST}.yaml"), keys["user"]).returncode == 0
    before, bytes_before = metas(repo), tree(repo.path)
    time.sleep(1.1)  # lastmodified has one-second resolution

    res = revoke.revoke(repo.path, revoke.RevokeSpec(host=HOST), admin)
    assert set(res.anchors) == {HOST, f"rain_{HOST}"}
    assert res.rules_removed == [bootstrap.host_rule(HOST), bootstrap.host_key_rule(HOST)]
    assert sorted(res.rotated) == ["sops/fleet.yaml", "sops/shared.yaml"]
    assert {f["path"] for f in res.own_files} == {f"sops/{HOST}.yaml", f"sops/host-keys/{HOST}.yaml"}
    assert not os.path.exists(repo.file(f"sops/{HOST}.yaml"))

    # The revoked keys open no current file (real sops, every file); the admin opens every one.
    files = sorted(fp.rel for fp in fleet.Plan.scan(repo.path).files)
    assert files == ["sops/alpha.yaml", "sops/beta.yaml", "sops/fleet.yaml", "sops/shared.yaml"]
    for rel in files:
        for name, k in keys.items():
            assert sops_decrypt(sops_bin, repo.file(rel), k).returncode != 0, f"{name} key still opens {rel}"
        assert sops_decrypt(sops_bin, repo.file(rel), repo.keyfile("admin")).returncode == 0
    # mac and lastmodified changed on every file it could read, and on no other.
    after = metas(repo)
    assert {r for r in after if after[r][0] != before[r][0] and after[r][1] != before[r][1]} == \
        readable & set(after)
    assert {r for r in after if after[r] == before[r]} == {"sops/alpha.yaml", "sops/beta.yaml"}
    assert all(tree(repo.path)[r] == bytes_before[r] for r in ("sops/alpha.yaml", "sops/beta.yaml", "README.md"))

    # The blast radius: exactly the key paths it could read, with the first commit it could.
    radius = {fx["path"]: fx for fx in res.exposure}
    assert set(radius) == readable
    keys_of = {p: {k["key"]: k["first_commit"] for k in fx["key_paths"]} for p, fx in radius.items()}
    assert keys_of["sops/shared.yaml"] == {"shared/wifi": c2, "shared/n": c2, "vpn/psk": c3}
    assert keys_of["sops/fleet.yaml"] == {"ntp/token": c3, "smtp": c3}
    assert keys_of[f"sops/{HOST}.yaml"] == {"keys/age": c2, "deploy-keys/nix-config": c2}
    assert radius["sops/shared.yaml"]["first_commit"] == c2 != c1
    assert all(fx["readable_now"] for fx in res.exposure)
    assert [d["name"] for d in res.deploy_keys] == ["nix-config"]
    assert res.deploy_keys[0]["public_key"].startswith("ssh-ed25519 ")

    written = revoke.write_report(res, str(tmp_path / "reports"))
    report = json.load(open(written[0]))
    assert report["deploy_keys_to_delete_at_forge"] == res.deploy_keys
    assert {fx["path"] for fx in report["could_read"]} == readable
    text = open(written[1]).read()
    assert "vpn/psk" in text and res.deploy_keys[0]["public_key"] in text
    for marker in ("AGE-SECRET-KEY", "PRIVATE KEY"):
        assert marker not in text and marker not in json.dumps(report)

    inv = open(repo.file(".nixfleet/keys.yaml")).read()
    assert HOST not in inv
    vcs.commit(repo.path, res.touched, f"chore(sops): revoke {HOST}")
    assert git(repo.path, "status", "--porcelain") == ""
    again = revoke.revoke(repo.path, revoke.RevokeSpec(host=HOST), admin)
    assert not again.changed and again.touched == []


def test_revoke_refuses_to_leave_a_rule_without_recipient(history_repo):
    repo, admin, _unused, _unused = history_repo
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_rule(r"sops/only-griefling\.yaml$", anchors=[HOST])
    cfg.save()
    original = tree(repo.path)
    with pytest.raises(SopsConfigError, match=r"only-griefling.*no recipient"):
        revoke.revoke(repo.path, revoke.RevokeSpec(host=HOST), admin)
    assert tree(repo.path) == original


def test_revoke_archive_check_mode_and_rotation_in_progress(history_repo, sops_bin):
    repo, admin, _unused, keys = history_repo
    rotation.begin(repo.path, rotation.RotationSpec(host=HOST, kinds=["host"], user="rain"), admin)
    original = tree(repo.path)
    dry = revoke.revoke(repo.path, revoke.RevokeSpec(host=HOST, own_files="archive"), admin, check_mode=True)
    assert tree(repo.path) == original
    assert set(dry.anchors) == {HOST, f"{HOST}_next", f"rain_{HOST}"}
    assert ".nixfleet/rotations/griefling.yaml" in dry.touched
    res = revoke.revoke(repo.path, revoke.RevokeSpec(host=HOST, own_files="archive"), admin)
    assert res.touched == dry.touched and sorted(res.rotated) == sorted(dry.rotated)
    archived = f".nixfleet/archive/{HOST}/sops/{HOST}.yaml"
    assert {"path": f"sops/{HOST}.yaml", "action": "archived", "to": archived} in res.own_files
    assert sops_decrypt(sops_bin, repo.file(archived), repo.keyfile("admin")).returncode == 0
    assert sops_decrypt(sops_bin, repo.file(archived), keys["host"]).returncode != 0
    assert sops_decrypt(sops_bin, repo.file(archived), keys["user"]).returncode != 0
    assert "_next" not in open(repo.file(".sops.yaml")).read()
    assert not os.path.exists(repo.file(".nixfleet/rotations/griefling.yaml"))


def test_revoke_without_git_history_reports_what_it_can_read_now(tmp_path):
    repo = make_repo(str(tmp_path), hosts=("alpha", "beta"), git=False)
    admin = [repo.identities["admin"]]
    res = revoke.revoke(repo.path, revoke.RevokeSpec(host="beta"), admin)
    assert any("history could not be read" in w for w in res.warnings)
    assert {fx["path"] for fx in res.exposure} == {"sops/shared.yaml", "sops/beta.yaml"}
    assert all(fx["first_commit"] == "(not committed)" for fx in res.exposure)
    assert "beta" not in SopsConfig.load(repo.file(".sops.yaml")).anchors()
