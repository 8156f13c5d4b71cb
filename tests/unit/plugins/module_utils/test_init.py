"""init_repo (module_utils/init.py) and the sops_init module in-process: what is made, what is refused, check mode."""

from __future__ import annotations

import os
import re
import stat
import subprocess

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, init, keyinventory
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig

from tests.faults.lib import snapshot
from tests.lib.inproc import run_module_inproc
from tests.lib.secrets_repo import make_repo
from tests.unit.plugins.module_utils.test_vcs import RecordedJj

RECIPIENT = re.compile(r"age1[0-9a-z]{58}")


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def test_new_repository(tmp_path):
    repo, key = tmp_path / "nix-secrets", tmp_path / "keys" / "keys.txt"
    res = init.init_repo(str(repo), admin_key_file=str(key))
    assert res.changed and res.vcs == "git" and res.generated == ["admin key"]
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and stat.S_IMODE(os.stat(key.parent).st_mode) == 0o700
    identity = age.read_identity_file(str(key))[0]
    assert res.admin_recipient == age.recipient_from_identity(identity)
    config = SopsConfig.load(str(repo / ".sops.yaml"))
    assert config.groups() == {"users": ["admin"]}
    assert config.anchors()["admin"].recipient == res.admin_recipient
    assert config.rule_for(str(repo / "sops/shared.yaml")).anchors == ["admin"]
    for section in ("users:", "hosts:", "recovery:", "break_glass", "Creation rules"):
        assert section in config.text, f"{section} is not documented in .sops.yaml"
    assert engine.load(str(repo / "sops/shared.yaml")).decrypt([identity]) == {}
    assert keyinventory.Inventory.load(str(repo)).find("admin", "admin").recipient == res.admin_recipient
    assert git(repo, "log", "--format=%s").splitlines() == [init.DEFAULT_MESSAGE]
    assert git(repo, "status", "--porcelain") == ""
    assert sorted(git(repo, "ls-files").split()) == [".nixfleet/keys.yaml", ".sops.yaml", "sops/shared.yaml"]
    assert res.commit == git(repo, "rev-parse", "HEAD").strip()
    assert "AGE-SECRET-KEY-" not in repr(res)


def test_second_run_and_check_mode_change_nothing(tmp_path):
    repo, key = tmp_path / "r", tmp_path / "keys.txt"
    first_check = init.init_repo(str(repo), admin_key_file=str(key), check_mode=True)
    assert first_check.changed and not repo.exists() and not key.exists(), "check mode wrote something"
    assert first_check.admin_recipient == "(a new admin key would be generated)"
    assert not RECIPIENT.search(first_check.config_after) and "&admin (a new admin key would be generated)" in \
        first_check.config_after
    init.init_repo(str(repo), admin_key_file=str(key))
    before = snapshot(str(tmp_path))
    for check_mode in (True, False):
        again = init.init_repo(str(repo), admin_key_file=str(key), check_mode=check_mode)
        assert not again.changed and again.created == [] and again.generated == [], again
    assert snapshot(str(tmp_path)) == before


def test_existing_key_and_recipient_only(tmp_path):
    key = tmp_path / "keys.txt"
    identity = age.generate_identity()
    written = age.format_identity_file(identity)
    key.write_text(written)
    key.chmod(0o600)
    res = init.init_repo(str(tmp_path / "a"), admin_key_file=str(key))
    assert res.generated == [] and res.admin_recipient == age.recipient_from_identity(identity)
    assert key.read_text() == written
    other = age.recipient_from_identity(age.generate_identity())
    res = init.init_repo(str(tmp_path / "b"), admin_recipient=other, admin_anchor="ta")
    assert res.admin_key_file is None and res.generated == []
    assert SopsConfig.load(str(tmp_path / "b/.sops.yaml")).anchors()["ta"].recipient == other


def test_refuses_a_directory_with_other_files_and_an_existing_repository(tmp_path):
    key = tmp_path / "keys.txt"
    other = tmp_path / "other"
    other.mkdir()
    (other / "README.md").write_text("mine\n")
    existing = make_repo(str(tmp_path / "existing"), hosts=("alpha",))
    head = git(existing.path, "rev-parse", "HEAD")
    before = snapshot(str(tmp_path))
    for path, named in ((other, "README.md"), (existing.path, "sops/alpha.yaml")):
        with pytest.raises(init.InitError, match="nixfleet_init_force=true") as err:
            init.init_repo(str(path), admin_key_file=str(key))
        assert named in str(err.value) and "nothing was changed" in str(err.value)
    assert snapshot(str(tmp_path)) == before and not key.exists()
    # Only the repository's own files, but its .sops.yaml names another admin key.
    for rel in ("sops/alpha.yaml", "README.md"):
        os.remove(existing.file(rel))
    before = snapshot(str(tmp_path))
    with pytest.raises(init.InitError, match="&admin is not the admin key"):
        init.init_repo(existing.path, admin_key_file=str(key))
    assert snapshot(str(tmp_path)) == before and not key.exists()
    assert git(existing.path, "rev-parse", "HEAD") == head


def test_refuses_a_repository_with_history_even_when_its_tree_is_empty(tmp_path):
    repo = tmp_path / "r"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "notes.txt").write_text("x\n")
    git(repo, "add", "notes.txt")
    git(repo, "commit", "-q", "-m", "one")
    git(repo, "rm", "-q", "notes.txt")
    git(repo, "commit", "-q", "-m", "two")
    before, head = snapshot(str(tmp_path)), git(repo, "rev-parse", "HEAD")
    with pytest.raises(init.InitError, match="holds a git history, which init did not make"):
        init.init_repo(str(repo), admin_key_file=str(tmp_path / "keys.txt"))
    assert snapshot(str(tmp_path)) == before and git(repo, "rev-parse", "HEAD") == head
    # An empty clone (a repository without commits) is what a forge hands out: it is taken as it is.
    empty = tmp_path / "empty"
    subprocess.run(["git", "init", "-q", str(empty)], check=True)
    assert init.init_repo(str(empty), admin_key_file=str(tmp_path / "keys.txt")).changed


def test_force_adds_only_what_is_missing(tmp_path):
    repo, key = tmp_path / "r", tmp_path / "keys.txt"
    repo.mkdir()
    (repo / "README.md").write_text("mine\n")
    res = init.init_repo(str(repo), admin_key_file=str(key), force=True)
    assert res.changed and (repo / "README.md").read_text() == "mine\n"
    assert "README.md" in git(repo, "status", "--porcelain"), "init committed a file it did not make"
    # An existing .sops.yaml and sops file are kept byte for byte, even with force.
    other = tmp_path / "other"
    (other / "sops").mkdir(parents=True)
    text = init.config_text("boss", age.recipient_from_identity(age.generate_identity())) + "# my comment\n"
    (other / ".sops.yaml").write_text(text)
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    res = init.init_repo(str(other), admin_key_file=str(key), force=True)
    assert (other / ".sops.yaml").read_text() == text and res.kept == [".sops.yaml"]
    assert res.created == ["sops/shared.yaml"], "the admin key is not in that .sops.yaml: not recorded"
    assert engine.load(str(other / "sops/shared.yaml")).recipients == [
        [SopsConfig.load(str(other / ".sops.yaml")).anchors()["boss"].recipient]]
    shared = (other / "sops/shared.yaml").read_bytes()
    assert not init.init_repo(str(other), admin_key_file=str(key), force=True).changed
    assert (other / "sops/shared.yaml").read_bytes() == shared


def test_jj_repository_through_the_recorded_contract(tmp_path):
    fake = RecordedJj(dirty=True)
    res = init.init_repo(str(tmp_path / "r"), "jj", admin_key_file=str(tmp_path / "keys.txt"), runner=fake)
    assert res.vcs == "jj" and res.commit == "0123abcd" * 5
    assert fake.calls[0] == ["jj", "git", "init", "--colocate"]
    assert ["jj", "commit", "-m", init.DEFAULT_MESSAGE, "--", ".nixfleet/keys.yaml", ".sops.yaml",
            "sops/shared.yaml"] in fake.calls


def test_jj_not_installed_is_one_line_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    res = run_module_inproc("sops_init", {"repo": str(tmp_path / "r"), "vcs": "jj",
                                          "admin_key_file": str(tmp_path / "k" / "keys.txt")})
    assert res.failed and "jj is not installed" in res.msg and "\n" not in res.msg
    assert not (tmp_path / "r").exists() and not (tmp_path / "k").exists()


def test_module_check_then_run_then_check(tmp_path):
    args = {"repo": str(tmp_path / "r"), "admin_key_file": str(tmp_path / "keys.txt")}
    check = run_module_inproc("sops_init", args, check=True, diff=True)
    assert check.changed and check.result["generated"] == ["admin key"] and not (tmp_path / "r").exists()
    assert check.result["diff"]["before"] == "" and not RECIPIENT.search(check.result["diff"]["after"])
    real = run_module_inproc("sops_init", args, diff=True)
    assert real.changed and real.result["admin_recipient"].startswith("age1") and "commit" in real.result
    assert f"&admin {real.result['admin_recipient']}" in real.result["diff"]["after"]
    assert check.result["commands"] == real.result["commands"], "check mode listed other commands than it ran"
    assert real.result["commands"][0] == ["git", "init", "-q"]
    again = run_module_inproc("sops_init", args, check=True)
    assert not again.changed and "nothing to do" in again.result["msg"]
    for r in (check, real, again):
        assert "AGE-SECRET-KEY-" not in r.stdout
    bad = run_module_inproc("sops_init", {**args, "admin_recipient": "age1nope"})
    assert bad.failed and "mutually exclusive" in bad.msg


def test_an_admin_key_file_others_can_read_is_refused_and_nothing_is_made(tmp_path):
    key = tmp_path / "keys.txt"
    key.write_text(age.format_identity_file(age.generate_identity()))
    key.chmod(0o644)
    before = snapshot(str(tmp_path))
    for check_mode in (True, False):
        with pytest.raises(init.InitError, match=r"keys\.txt has mode 0644 \(others can read it\).*chmod 600"):
            init.init_repo(str(tmp_path / "r"), admin_key_file=str(key), check_mode=check_mode)
    assert snapshot(str(tmp_path)) == before
    key.chmod(0o600)
    assert init.init_repo(str(tmp_path / "r"), admin_key_file=str(key)).changed
