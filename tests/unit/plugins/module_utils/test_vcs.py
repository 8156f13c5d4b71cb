"""vcs.py: git for real; jj against its recorded command contract (no jj binary exists here)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import vcs


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path):
    r = tmp_path / "nix-secrets"
    r.mkdir()
    git(r, "init", "-q")
    git(r, "config", "user.email", "t@example.invalid")
    git(r, "config", "user.name", "t")
    (r / "sops").mkdir()
    for name in ("a.yaml", "b.yaml", "unrelated.yaml"):
        (r / "sops" / name).write_text("x: 1\n")
    git(r, "add", "-A")
    git(r, "commit", "-qm", "init")
    return r


def test_git_commits_only_the_given_paths(repo):
    (repo / "sops" / "a.yaml").write_text("x: 2\n")
    (repo / "sops" / "new.yaml").write_text("y: 1\n")
    (repo / "sops" / "unrelated.yaml").write_text("work in progress\n")
    res = vcs.commit(str(repo), ["sops/a.yaml", str(repo / "sops" / "new.yaml")], "chore(sops): rekey 2 files")
    assert res.changed and res.vcs == "git"
    assert res.commit == git(repo, "rev-parse", "HEAD").strip()
    shown = git(repo, "show", "--name-only", "--format=%s", "HEAD").split()
    assert shown[0] == "chore(sops):" and set(shown[-2:]) == {"sops/a.yaml", "sops/new.yaml"}
    # The user's unrelated change is still pending, not committed.
    assert "unrelated.yaml" in git(repo, "status", "--porcelain")


def test_git_no_change_no_commit(repo):
    head = git(repo, "rev-parse", "HEAD")
    res = vcs.commit(str(repo), ["sops/a.yaml"], "chore(sops): nothing")
    assert not res.changed and res.commit is None
    assert git(repo, "rev-parse", "HEAD") == head


def test_git_check_mode_lists_commands_and_commits_nothing(repo):
    (repo / "sops" / "a.yaml").write_text("x: 3\n")
    head = git(repo, "rev-parse", "HEAD")
    res = vcs.commit(str(repo), ["sops/a.yaml"], "m", check_mode=True)
    assert res.changed
    assert res.commands[1][:2] == ["git", "commit"]
    assert git(repo, "rev-parse", "HEAD") == head


def test_git_deleted_file_is_committed(repo):
    (repo / "sops" / "b.yaml").unlink()
    res = vcs.commit(str(repo), ["sops/b.yaml"], "chore(sops): remove b")
    assert res.changed
    assert "sops/b.yaml" not in git(repo, "ls-files")


def test_paths_outside_the_repo_are_refused(repo, tmp_path):
    with pytest.raises(vcs.VcsError, match="outside the repository"):
        vcs.commit(str(repo), [str(tmp_path / "elsewhere.yaml")], "m")


def test_not_a_repository(tmp_path):
    with pytest.raises(vcs.VcsError, match="neither a git nor a jj repository"):
        vcs.commit(str(tmp_path), ["x"], "m")


def test_failed_git_command_names_repo_and_command(repo):
    (repo / "sops" / "a.yaml").write_text("x: 9\n")
    git(repo, "config", "user.email", "")
    git(repo, "config", "user.name", "")
    (repo / ".git" / "index.lock").write_text("")
    with pytest.raises(vcs.VcsError, match=r"git add -A failed in .*nix-secrets"):
        vcs.commit(str(repo), ["sops/a.yaml"], "m")


class RecordedJj:
    """A stand-in for jj that enforces the command contract documented in vcs.py."""

    def __init__(self, dirty: bool) -> None:
        self.dirty = dirty
        self.calls: list[list[str]] = []

    def __call__(self, cmd, cwd):
        cmd = list(cmd)
        self.calls.append(cmd)
        out = ""
        if cmd[:3] == ["jj", "diff", "--summary"]:
            assert cmd[3] == "--"
            out = "".join(f"M {p}\n" for p in cmd[4:]) if self.dirty else ""
        elif cmd[:2] == ["jj", "commit"]:
            assert cmd[2] == "-m" and cmd[4] == "--", cmd
            self.dirty = False
        elif cmd[:3] == ["jj", "bookmark", "set"]:
            assert cmd[4:] == ["-r", "@-"], cmd
        elif cmd[:2] == ["jj", "log"]:
            assert cmd[2:] == ["-r", "@-", "--no-graph", "-T", "commit_id"]
            out = "0123abcd" * 5
        elif cmd[:3] == ["jj", "git", "push"]:
            pass
        elif cmd[:3] == ["jj", "git", "init"]:
            assert cmd[3:] == ["--colocate"], cmd
            for d in (".jj", ".git"):
                os.makedirs(os.path.join(cwd, d))
        else:
            raise AssertionError(f"command outside the jj contract: {cmd}")
        return subprocess.CompletedProcess(cmd, 0, out, "")


def test_jj_contract(tmp_path):
    (tmp_path / ".jj").mkdir()
    (tmp_path / ".git").mkdir()  # colocated repos have both; jj wins
    fake = RecordedJj(dirty=True)
    res = vcs.commit(str(tmp_path), ["sops/a.yaml"], "chore(sops): rekey 1 file", bookmark="simple", push=True,
                     runner=fake)
    assert res.vcs == "jj" and res.changed and res.commit == "0123abcd" * 5
    assert fake.calls == [
        ["jj", "diff", "--summary", "--", "sops/a.yaml"],
        ["jj", "commit", "-m", "chore(sops): rekey 1 file", "--", "sops/a.yaml"],
        ["jj", "bookmark", "set", "simple", "-r", "@-"],
        ["jj", "log", "-r", "@-", "--no-graph", "-T", "commit_id"],
        ["jj", "git", "push", "--bookmark", "simple"],
    ]
    again = vcs.commit(str(tmp_path), ["sops/a.yaml"], "m", runner=fake)
    assert not again.changed


def test_conventional_message():
    assert vcs.conventional_message("rekey", 12, "griefling") == "chore(sops): rekey 12 files for griefling"
    assert vcs.conventional_message("rotate data key of", 1) == "chore(sops): rotate data key of 1 file"


def _hook(repo, body):
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\n" + body + "\n")
    hook.chmod(0o755)


def test_failed_commit_hook_leaves_nothing_staged_and_the_next_run_commits(repo):
    (repo / "sops" / "a.yaml").write_text("x: 2\n")
    _hook(repo, "echo 'secrets check failed' >&2; exit 1")
    head = git(repo, "rev-parse", "HEAD")
    with pytest.raises(vcs.VcsError, match="left uncommitted and unstaged.*run again") as err:
        vcs.commit(str(repo), ["sops/a.yaml"], "chore(sops): rekey 1 file")
    assert "secrets check failed" in str(err.value)
    assert git(repo, "rev-parse", "HEAD") == head
    # Nothing is staged, so the user's own next commit does not sweep the file in ...
    assert git(repo, "diff", "--cached", "--name-only") == ""
    assert vcs.pending_paths(str(repo)) == ["sops/a.yaml"]
    # ... and a later run that has nothing new of its own still commits it.
    _hook(repo, "exit 0")
    res = vcs.commit(str(repo), [], "chore(sops): rekey 0 files")
    assert res.changed and res.paths == ["sops/a.yaml"]
    assert git(repo, "show", "--name-only", "--format=", "HEAD").split() == ["sops/a.yaml"]
    assert "earlier nixfleet.sops run" in git(repo, "log", "-1", "--format=%B")
    assert vcs.pending_paths(str(repo)) == []


def test_paths_recorded_before_a_kill_are_committed_by_the_next_run(repo):
    vcs.record_pending(str(repo), [str(repo / "sops" / "b.yaml")])
    (repo / "sops" / "b.yaml").write_text("x: 9\n")  # written, then the run died before committing
    (repo / "sops" / "a.yaml").write_text("x: 5\n")
    res = vcs.commit(str(repo), ["sops/a.yaml"], "chore(sops): rekey 1 file")
    assert res.paths == ["sops/a.yaml", "sops/b.yaml"]
    assert sorted(git(repo, "show", "--name-only", "--format=", "HEAD").split()) == ["sops/a.yaml", "sops/b.yaml"]
    assert vcs.pending_paths(str(repo)) == []


def test_pending_record_cleared_when_the_user_committed_them(repo):
    vcs.record_pending(str(repo), ["sops/a.yaml"])
    res = vcs.commit(str(repo), [], "m")
    assert not res.changed and vcs.pending_paths(str(repo)) == []


def test_a_path_written_and_removed_before_any_commit_is_left_out(repo):
    # A rotation journal that phase 1 wrote and an abort removed before anything was committed.
    vcs.record_pending(repo, [".nixfleet/rotations/h.yaml"])
    (Path(repo) / "sops" / "a.yaml").write_text("changed\n")
    res = vcs.commit(repo, ["sops/a.yaml", ".nixfleet/rotations/h.yaml"], "chore(sops): abort")
    assert res.changed and res.commit
    assert git(repo, "status", "--porcelain") == ""
    assert vcs.pending_paths(repo) == []
