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
``jj git push --bookmark NAME``, ``jj git init --colocate`` (a new repository).
"""

from __future__ import annotations

import json
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
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, check=False)


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
    init_command: list[str] = []

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
    init_command = ["git", "init", "-q"]

    def changed(self, rels: list[str]) -> bool:
        return bool(self.run(["git", "status", "--porcelain", "--untracked-files=all", "--", *rels]).strip())

    def commit(self, rels: list[str], message: str, res: CommitResult, check_mode: bool, **_: object) -> None:
        # A path written and removed again before any commit (a rotation journal an abort removed) is
        # neither on disk nor known to git, and git refuses the whole command over it: leave it out.
        known = set(self.run(["git", "ls-files", "-z", "--", *rels]).split("\0"))
        rels = [r for r in rels if r in known or os.path.lexists(os.path.join(self.repo, r))]
        if not rels:
            return
        cmds = self.commit_commands(rels, message)
        res.commands += cmds
        if check_mode:
            return
        for cmd in cmds:
            self.run(cmd)
        res.commit = self.run(["git", "rev-parse", "HEAD"]).strip()

    @staticmethod
    def commit_commands(rels: list[str], message: str, bookmark: str | None = None) -> list[list[str]]:
        """The commands that commit exactly ``rels``."""
        return [["git", "add", "-A", "--", *rels], ["git", "commit", "-q", "-m", message, "--", *rels]]

    def unstage(self, rels: list[str]) -> None:
        """Take ``rels`` out of the index again (after a failed commit)."""
        head = self.run_cmd(["git", "rev-parse", "--verify", "-q", "HEAD"], self.repo).returncode == 0
        cmd = ["git", "reset", "-q", "--", *rels] if head else ["git", "rm", "-q", "--cached", "-r", "--", *rels]
        self.run_cmd(cmd, self.repo)

    def push(self, res: CommitResult, check_mode: bool, remote: str | None, branch: str | None) -> None:
        cmd = ["git", "push", "-q"] + ([remote] if remote else []) + ([branch] if branch and remote else [])
        res.commands.append(cmd)
        if not check_mode:
            self.run(cmd)


class _Jj(_Vcs):
    # Colocated: the repository stays a git repository for forges, sops-nix flakes and git users.
    init_command = ["jj", "git", "init", "--colocate"]

    def changed(self, rels: list[str]) -> bool:
        return bool(self.run(["jj", "diff", "--summary", "--", *rels]).strip())

    @staticmethod
    def commit_commands(rels: list[str], message: str, bookmark: str | None = None) -> list[list[str]]:
        """The commands that commit exactly ``rels`` (and move ``bookmark`` to the commit)."""
        cmds = [["jj", "commit", "-m", message, "--", *rels]]
        return cmds + ([["jj", "bookmark", "set", bookmark, "-r", "@-"]] if bookmark else [])

    def unstage(self, rels: list[str]) -> None:
        """jj has no index: a failed ``jj commit`` leaves the working-copy commit as it was."""

    def commit(self, rels: list[str], message: str, res: CommitResult, check_mode: bool,
               bookmark: str | None = None) -> None:
        cmds = self.commit_commands(rels, message, bookmark)
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


def init(repo: str, kind: str = "git", check_mode: bool = False, runner: Runner | None = None) -> list[str]:
    """Make the existing directory ``repo`` a ``kind`` (git or jj, colocated) repository; return the command.

    The tool must be installed; in check mode only that is checked and nothing runs.
    """
    if kind not in ("git", "jj"):
        raise VcsError(f"vcs must be git or jj, not {kind!r}")
    impl: _Vcs = _Jj(repo, runner) if kind == "jj" else _Git(repo, runner)
    cmd = list(impl.init_command)
    if runner is None and shutil.which(kind) is None:
        raise VcsError(f"{kind} is not installed; it is needed to make {repo} a {kind} repository "
                       f"(install it, or choose {'git' if kind == 'jj' else 'jj'})")
    if not check_mode:
        impl.run(cmd)
    return cmd


def planned_commands(kind: str, paths: Sequence[str], message: str) -> list[list[str]]:
    """What :func:`commit` runs in a repository of ``kind`` that is not there yet (check mode of a new one)."""
    impl = _Jj if kind == "jj" else _Git
    return impl.commit_commands(sorted(set(paths)), message)


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

    Paths an earlier run recorded as written but not committed (record_pending)
    are committed too, and the record is cleared once they are. When the
    commit fails (a pre-commit hook, say), the paths are unstaged again and
    stay recorded, so the next run commits them and the user's own next commit
    does not sweep them in. ``bookmark`` (jj) is moved to the new commit; for
    git it names the branch to push. In check mode the commands that would run
    are listed, none runs.
    """
    if not message.strip():
        raise VcsError("a commit message is required")
    kind = detect(repo, vcs)
    impl: _Vcs = _Jj(repo, runner) if kind == "jj" else _Git(repo, runner)
    res = CommitResult(vcs=kind)
    pending = pending_paths(repo)
    rels = sorted(set(_relpaths(repo, paths)) | set(pending))
    if not rels:
        return res
    res.paths = rels
    if not impl.changed(rels):
        if pending and not check_mode:
            _write_pending(repo, [])  # committed (or reverted) by someone else since
        return res
    res.changed = True
    if pending and set(pending) - set(_relpaths(repo, paths)):
        message += "\n\nAlso commits what an earlier nixfleet.sops run wrote but did not commit:\n" + "".join(
            f"  {p}\n" for p in pending)
    try:
        impl.commit(rels, message, res, check_mode, bookmark=bookmark)
    except VcsError as exc:
        impl.unstage(rels)
        _write_pending(repo, rels)
        raise VcsError(f"{exc}. The {len(rels)} written file(s) are left uncommitted and unstaged, and recorded: "
                       "fix the cause (e.g. the pre-commit hook) and run again, and they are committed then") from None
    if not check_mode:
        _write_pending(repo, [])
    if push:
        impl.push(res, check_mode, remote, bookmark)
    return res


# --------------------------------------------------------------------------- pending commits
PENDING_NAME = "nixfleet-pending.json"


def _pending_file(repo: str) -> str | None:
    """The record of written-but-uncommitted paths, inside .jj or .git (never committed itself)."""
    for d in (".jj", ".git"):
        if os.path.isdir(os.path.join(repo, d)):
            return os.path.join(repo, d, PENDING_NAME)
    return None


def pending_paths(repo: str) -> list[str]:
    """Paths an earlier run wrote and has not committed yet (relative to ``repo``)."""
    path = _pending_file(repo)
    if path is None:
        return []
    from .fsutil import CONFIG_LIMIT, read_regular

    try:
        data = json.loads(read_regular(path, CONFIG_LIMIT, "record of uncommitted files"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        raise VcsError(f"{path}: the record of uncommitted files does not parse; check `git status` and remove "
                       "it") from None
    if not isinstance(data, dict) or not isinstance(data.get("paths"), list):
        raise VcsError(f"{path}: the record of uncommitted files has an unexpected shape; remove it")
    return sorted({str(p) for p in data["paths"] if isinstance(p, str)})


def _write_pending(repo: str, paths: list[str]) -> None:
    from .fsutil import atomic_write

    path = _pending_file(repo)
    if path is None:
        return
    if not paths:
        if os.path.lexists(path):
            os.unlink(path)
        return
    atomic_write(path, json.dumps({"paths": sorted(set(paths))}, indent=1) + "\n", default_mode=0o644)


def record_pending(repo: str, paths: Sequence[str]) -> None:
    """Note ``paths`` as about to be written and not yet committed (call before writing them).

    A run stopped between writing and committing (killed, a failing commit hook)
    leaves the record; the next commit in this repository commits those paths
    too, so nothing written is left for the user's next unrelated commit to sweep in.
    """
    if not paths or _pending_file(repo) is None:
        return
    _write_pending(repo, pending_paths(repo) + _relpaths(repo, paths))


def conventional_message(action: str, count: int, subject: str | None = None, scope: str = "sops") -> str:
    """``chore(sops): rekey 12 files for griefling`` — the message style the fleet uses."""
    noun = "file" if count == 1 else "files"
    tail = f" for {subject}" if subject else ""
    return f"chore({scope}): {action} {count} {noun}{tail}"
