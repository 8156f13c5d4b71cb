"""vcs_commit through real Ansible: commit once, then no change; check mode commits nothing."""

from __future__ import annotations

import subprocess

from tests.lib.inproc import run_module_inproc


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def test_commit_then_nothing(tmp_path):
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "t@example.invalid")
    git(repo, "config", "user.name", "t")
    (repo / "f.yaml").write_text("a: 1\n")
    args = {"repo": str(repo), "paths": ["f.yaml"], "commit_message": "chore(sops): add f"}
    check = run_module_inproc("vcs_commit", args, check=True)
    assert check.changed and not check.failed
    assert subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                          check=False).returncode != 0
    first = run_module_inproc("vcs_commit", args)
    assert first.changed and first.result["commit"] == git(repo, "rev-parse", "HEAD").strip()
    second = run_module_inproc("vcs_commit", args)
    assert not second.changed
    assert git(repo, "rev-list", "--count", "HEAD").strip() == "1"


def test_error_is_clear(tmp_path):
    res = run_module_inproc("vcs_commit", {"repo": str(tmp_path), "paths": ["x"], "commit_message": "m"})
    assert res.failed and "neither a git nor a jj repository" in res.msg
