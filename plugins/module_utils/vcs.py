# Copyright: nixfleet.sops contributors
# MIT License
"""Commit exactly the paths an operation touched, with git or jj.

jj is preferred when the repository has a ``.jj`` directory (a colocated jj
repo has both ``.jj`` and ``.git``), as the user's old ``vcs_commit`` helper
did. Nothing is committed when none of the paths changed.

No jj binary exists on the build machine, so the jj path is tested against a
recorded command contract (a stand-in ``jj`` that checks the arguments it is
given): ``jj diff --summary -- PATHS``, ``jj commit -m MSG -- PATHS``,
``jj bookmark set NAME -r @-``, ``jj log -r @- --no-graph -T commit_id``,
``jj git push --bookmark NAME``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .errors import NixfleetError

Runner = Callable[[Sequence[str], str], "subprocess.CompletedProcess[str]"]


class VcsError(NixfleetError, RuntimeError):
    """A VCS command failed; the message names the repo, the command and its error output."""


def _default_runner(cmd: Sequence[str], cwd: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.setdefault("GIT_TERMINAL_PROMPT", "0")
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)


@dataclass
class CommitResult:
    """What commit() did, or would do in check mode."""

    vcs: str
    changed: bool = False
    commit: str | None = None
    paths: list[str] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)


def detect(repo: str, prefer: str = "auto") -> str:
    """Return ``"jj"`` or ``"git"`` for ``repo`` (``prefer`` may force one)."""
    if prefer in ("git", "jj"):
        return prefer
    if os.path.isdir(os.path.join(repo, ".jj")):
        return "jj"
    if os.path.exists(os.path.join(repo, ".git")):
        return "git"
    raise VcsError(f"{repo} is neither a git nor a jj repository: run `git init` there, or set vcs: none")


def _relpaths(repo: str, paths: Sequence[str]) -> list[str]:
    out = []
    real_repo = os.path.realpath(repo)
    for p in paths:
        full = os.path.realpath(p if os.path.isabs(p) else os.path.join(repo, p))
        rel = os.path.relpath(full, real_repo)
        if rel == ".." or rel.startswith(".." + os.sep):
            raise VcsError(f"{p} is outside the repository {repo}; refusing to commit it")
        out.append(rel)
    return sorted(set(out))


class _Vcs:
    def __init__(self, repo: str, runner: Runner | None = None) -> None:
        self.repo = repo
        self.run_cmd = runner or _default_runner

    def run(self, cmd: list[str], ok: tuple[int, ...] = (0,)) -> str:
        if shutil.which(cmd[0]) is None and self.run_cmd is _default_runner:
            raise VcsError(f"{cmd[0]} is not installed; it is needed to commit in {self.repo}")
        proc = self.run_cmd(cmd, self.repo)
        if proc.returncode not in ok:
            err = (proc.stderr or proc.stdout or "").strip().splitlines()
            detail = err[-1] if err else f"exit {proc.returncode}"
            raise VcsError(f"{' '.join(cmd[:3])} failed in {self.repo}: {detail}")
        return proc.stdout


class _Git(_Vcs):
    def changed(self, rels: list[str]) -> bool:
        return bool(self.run(["git", "status", "--porcelain", "--untracked-files=all", "--", *rels]).strip())

    def commit(self, rels: list[str], message: str, res: CommitResult, check_mode: bool, **_: object) -> None:
        add = ["git", "add", "-A", "--", *rels]
        commit = ["git", "commit", "-q", "-m", message, "--", *rels]
        res.commands += [add, commit]
        if check_mode:
            return
        self.run(add)
        self.run(commit)
        res.commit = self.run(["git", "rev-parse", "HEAD"]).strip()

    def push(self, res: CommitResult, check_mode: bool, remote: str | None, branch: str | None) -> None:
        cmd = ["git", "push", "-q"] + ([remote] if remote else []) + ([branch] if branch and remote else [])
        res.commands.append(cmd)
        if not check_mode:
            self.run(cmd)


class _Jj(_Vcs):
    def changed(self, rels: list[str]) -> bool:
        return bool(self.run(["jj", "diff", "--summary", "--", *rels]).strip())

    def commit(self, rels: list[str], message: str, res: CommitResult, check_mode: bool,
               bookmark: str | None = None) -> None:
        cmds = [["jj", "commit", "-m", message, "--", *rels]]
        if bookmark:
            cmds.append(["jj", "bookmark", "set", bookmark, "-r", "@-"])
        res.commands += cmds
        if check_mode:
            return
        for cmd in cmds:
            self.run(cmd)
        res.commit = self.run(["jj", "log", "-r", "@-", "--no-graph", "-T", "commit_id"]).strip()

    def push(self, res: CommitResult, check_mode: bool, remote: str | None, branch: str | None) -> None:
        cmd = ["jj", "git", "push"] + (["--remote", remote] if remote else [])
        cmd += ["--bookmark", branch] if branch else []
        res.commands.append(cmd)
        if not check_mode:
            self.run(cmd)


def commit(
    repo: str,
    paths: Sequence[str],
    message: str,
    vcs: str = "auto",
    bookmark: str | None = None,
    push: bool = False,
    remote: str | None = None,
    check_mode: bool = False,
    runner: Runner | None = None,
) -> CommitResult:
    """Commit exactly ``paths`` in ``repo`` with ``message``; do nothing when they are unchanged.

    ``bookmark`` (jj) is moved to the new commit; for git it names the branch
    to push. In check mode the commands that would run are listed, none runs.
    """
    if not message.strip():
        raise VcsError("a commit message is required")
    kind = detect(repo, vcs)
    impl: _Vcs = _Jj(repo, runner) if kind == "jj" else _Git(repo, runner)
    res = CommitResult(vcs=kind)
    if not paths:
        return res
    rels = _relpaths(repo, paths)
    res.paths = rels
    if not impl.changed(rels):
        return res
    res.changed = True
    impl.commit(rels, message, res, check_mode, bookmark=bookmark)
    if push:
        impl.push(res, check_mode, remote, bookmark)
    return res


def conventional_message(action: str, count: int, subject: str | None = None, scope: str = "sops") -> str:
    """``chore(sops): rekey 12 files for griefling`` — the message style the fleet uses."""
    noun = "file" if count == 1 else "files"
    tail = f" for {subject}" if subject else ""
    return f"chore({scope}): {action} {count} {noun}{tail}"
