"""playbooks/rekey.yml and rotate.yml end to end on a real git secrets repo, with the real sops as oracle."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from ansible_collections.nixfleet.sops.plugins.module_utils import age, fleet
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig

from tests.lib.runner import run_playbook
from tests.lib.secrets_repo import make_repo, sops_decrypt


def git(repo, *args):
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


def _snapshot(repo):
    return {r: (os.stat(repo.file(r)).st_mtime_ns, open(repo.file(r), "rb").read())
            for r in fleet.iter_candidate_files(repo.path)}


def test_rekey_playbook_adds_commits_once_then_nothing(tmp_path, sops_bin):
    repo = make_repo(str(tmp_path), hosts=("alpha", "beta", "gamma"))
    env = {"SOPS_AGE_KEY_FILE": repo.keyfile("admin")}
    ident = age.generate_identity()
    repo.identities["laptop"] = ident
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_recipient("laptop", age.recipient_from_identity(ident), group="users")
    cfg.ensure_rule_member(r"sops/shared\.yaml$", "laptop")
    cfg.ensure_rule_member(r"sops/beta(-\d+)?\.yaml$", "laptop")
    cfg.save()
    git(repo.path, "commit", "-qam", "add laptop")
    before = _snapshot(repo)
    head = git(repo.path, "rev-parse", "HEAD")

    check = run_playbook("rekey.yml", {"nixfleet_secrets_repo": repo.path}, check=True, env=env)
    assert check.rc == 0, check.stdout + check.stderr
    assert _snapshot(repo) == before and git(repo.path, "rev-parse", "HEAD") == head

    run = run_playbook("rekey.yml", {"nixfleet_secrets_repo": repo.path}, env=env)
    assert run.rc == 0, run.stdout + run.stderr
    assert run.changed() == 2  # the rekey task and the commit
    after = _snapshot(repo)
    touched = {r for r in before if after[r] != before[r]}
    assert touched == {"sops/shared.yaml", "sops/beta.yaml"}
    for rel in touched:
        out = sops_decrypt(sops_bin, repo.file(rel), repo.keyfile("laptop"))
        assert out.returncode == 0, out.stderr
    assert git(repo.path, "rev-list", "--count", f"{head.strip()}..HEAD").strip() == "1"
    assert git(repo.path, "log", "-1", "--format=%s").strip() == "chore(sops): rekey 2 files"
    assert set(git(repo.path, "show", "--name-only", "--format=", "HEAD").split()) == touched

    again = run_playbook("rekey.yml", {"nixfleet_secrets_repo": repo.path}, env=env)
    assert again.rc == 0 and again.changed() == 0
    assert git(repo.path, "rev-list", "--count", f"{head.strip()}..HEAD").strip() == "1"
    assert _snapshot(repo) == after


def test_remove_recipient_rekey_rotate_locks_out(tmp_path, sops_bin):
    repo = make_repo(str(tmp_path), hosts=("alpha", "beta"))
    env = {"SOPS_AGE_KEY_FILE": repo.keyfile("admin")}
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.remove_anchor("beta")
    cfg.ensure_rule_member(r"sops/beta(-\d+)?\.yaml$", "admin")
    cfg.save()
    assert run_playbook("rekey.yml", {"nixfleet_secrets_repo": repo.path}, env=env).rc == 0
    # Two files, batches of one: planned first, then rotated one batch at a time, one commit.
    rot = run_playbook("rotate.yml", {"nixfleet_secrets_repo": repo.path, "rotate_path_regex": "sops/(shared|beta)",
                                      "nixfleet_batch_size": 1}, env=env)
    assert rot.rc == 0, rot.stdout
    assert re.search(r"\(item=batch 2/2: 2/2 files, [\d.]+ s elapsed\)", rot.stdout), rot.stdout
    assert "data key rotated in 2 of 3 sops files" in rot.stdout
    beta_keys = repo.keyfile("beta")
    for rel in ("sops/shared.yaml", "sops/beta.yaml"):
        assert sops_decrypt(sops_bin, repo.file(rel), beta_keys).returncode != 0
    assert sops_decrypt(sops_bin, repo.file("sops/alpha.yaml"), repo.keyfile("alpha")).returncode == 0
    assert git(repo.path, "log", "-1", "--format=%s").strip() == "chore(sops): rotate data key of 2 files"


def test_rekey_refuses_and_writes_nothing_without_identity(tmp_path):
    repo = make_repo(str(tmp_path), hosts=("alpha",))
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_recipient("x", age.recipient_from_identity(age.generate_identity()), group="users")
    cfg.ensure_rule_member(r"sops/shared\.yaml$", "x")
    cfg.save()
    before = _snapshot(repo)
    empty = tmp_path / "empty-home"
    empty.mkdir()
    run = run_playbook("rekey.yml", {"nixfleet_secrets_repo": repo.path},
                       env={"HOME": str(empty), "XDG_CONFIG_HOME": str(empty), "SOPS_AGE_KEY_FILE": ""})
    assert run.rc != 0
    assert "sops/shared.yaml" in run.stdout and "nothing was written" in run.stdout
    assert "AGE-SECRET-KEY" not in run.stdout + run.stderr
    assert _snapshot(repo) == before


def test_second_run_is_refused_while_the_repo_is_locked(tmp_path):
    import sys
    import time

    from tests.lib.runner import run_module

    repo = make_repo(str(tmp_path), hosts=("alpha",))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; sys.path.insert(0, sys.argv[1]);"
         "from ansible_collections.nixfleet.sops.plugins.module_utils import fsutil;"
         "cm = fsutil.repo_lock(sys.argv[2], purpose='sops_rekey'); cm.__enter__(); print('locked', flush=True);"
         "time.sleep(30)",
         os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), ".collections"),
         repo.path],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _snapshot(repo)
        res = run_module("sops_rekey", {"repo": repo.path, "age_keys": [repo.identities["admin"]]})
        assert res.failed
        assert f"locked by another nixfleet.sops run (pid {holder.pid} " in res.msg and "sops_rekey" in res.msg
        assert _snapshot(repo) == before
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    assert not run_module("sops_rekey", {"repo": repo.path, "age_keys": [repo.identities["admin"]]}).failed


def test_inventory_settings_reach_the_playbook(tmp_path):
    """Play variables must not shadow the inventory: identities given there are used."""
    repo = make_repo(str(tmp_path), hosts=("alpha",))
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_recipient("x", age.recipient_from_identity(age.generate_identity()), group="users")
    cfg.ensure_rule_member(r"sops/shared\.yaml$", "x")
    cfg.save()
    inv = tmp_path / "inv.yml"
    inv.write_text(
        "all:\n  vars:\n"
        f"    nixfleet_secrets_repo: {repo.path}\n"
        f"    nixfleet_identity_files: [{repo.keyfile('admin')}]\n"
        "    nixfleet_commit: false\n"
        "  hosts:\n    localhost:\n      ansible_connection: local\n"
        "      ansible_python_interpreter: '{{ ansible_playbook_python }}'\n"
    )
    empty = tmp_path / "home"
    empty.mkdir()
    run = run_playbook("rekey.yml", inventory=str(inv),
                       env={"HOME": str(empty), "XDG_CONFIG_HOME": str(empty), "SOPS_AGE_KEY_FILE": ""})
    assert run.rc == 0, run.stdout[-2000:]
    assert "1 of 2 sops files rekeyed" in " ".join(run.stdout.split())
    assert "sops/shared.yaml" in git(repo.path, "status", "--porcelain")  # rekeyed, not committed


def test_large_rekey_in_batches_prints_progress_and_ends_like_one_run(tmp_path):
    """Batches (nixfleet_batch_size) change what is printed, not what is written or committed."""
    repo = make_repo(str(tmp_path), hosts=("alpha", "beta", "gamma"))
    env = {"SOPS_AGE_KEY_FILE": repo.keyfile("admin")}
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_recipient("laptop", age.recipient_from_identity(age.generate_identity()), group="users")
    for regex in (r"sops/shared\.yaml$", r"sops/alpha(-\d+)?\.yaml$", r"sops/beta(-\d+)?\.yaml$"):
        cfg.ensure_rule_member(regex, "laptop")
    cfg.save()
    git(repo.path, "commit", "-qam", "add laptop")
    twin = str(tmp_path / "twin")
    shutil.copytree(repo.path, twin, symlinks=True)
    before = _snapshot(repo)

    check = run_playbook("rekey.yml", {"nixfleet_secrets_repo": repo.path, "nixfleet_batch_size": 1}, check=True,
                         env=env)
    assert check.rc == 0 and _snapshot(repo) == before, check.stdout
    assert "3 of 4 sops files would be rekeyed, 1 unchanged; recipients added: laptop, removed: none" in check.stdout
    assert "item=batch" not in check.stdout

    run = run_playbook("rekey.yml", {"nixfleet_secrets_repo": repo.path, "nixfleet_batch_size": 1}, env=env)
    assert run.rc == 0, run.stdout + run.stderr
    progress = re.findall(r"\(item=batch (\d)/3: (\d)/3 files, ([\d.]+) s elapsed\)", run.stdout)
    assert [(b, n) for b, n, _unused in progress] == [("1", "1"), ("2", "2"), ("3", "3")], run.stdout
    elapsed = [float(p[2]) for p in progress]
    assert elapsed == sorted(elapsed)
    assert "3 of 4 sops files rekeyed, 1 unchanged; recipients added: laptop, removed: none" in run.stdout
    assert " s in 3 batches." in run.stdout
    assert "sops/beta.yaml" not in run.stdout  # per-file detail only with -v
    assert max(len(line) for line in run.stdout.splitlines()) < 250

    one = run_playbook("rekey.yml", {"nixfleet_secrets_repo": twin}, env=env, verbosity=1)
    assert one.rc == 0 and "item=batch" not in one.stdout, one.stdout
    assert re.search(r'"sops/beta.yaml: \+laptop \(age1\w+\)"', one.stdout), one.stdout
    for path in (repo.path, twin):
        assert git(path, "log", "-1", "--format=%s").strip() == "chore(sops): rekey 3 files"
        assert set(git(path, "show", "--name-only", "--format=", "HEAD").split()) == {
            "sops/shared.yaml", "sops/alpha.yaml", "sops/beta.yaml"}
        assert git(path, "status", "--porcelain") == ""
