# Copyright: nixfleet.sops contributors
# MIT License
"""Where the bytes of a sops file go: every write of the engine goes through a sink.

``FileSink`` replaces the file now (atomically); ``StagedSink`` stages new
versions beside their files and makes them visible together with
``commit()`` (a fleet operation: all or nothing); ``NullSink`` writes nothing
and records what would have been written (check mode). The code that decides
is the same for all three, so check mode reports what a real run does.
"""

from __future__ import annotations

import os
from typing import Protocol

from ..errors import NixfleetError
from ..fsutil import (
    PartialCommitError,
    atomic_write,
    commit_all,
    discard_staged,
    resolve_write_target,
    stage_write,
    sync_staged,
)
from .errors import SopsError


class Sink(Protocol):
    """Receives the complete new content of a file."""

    def write(self, path: str, data: bytes) -> None:
        """Take ``data`` as the new content of ``path``; SopsError naming the file on failure."""


def write_error(exc: OSError, path: str) -> NixfleetError:
    """A failed write as one line naming the file (a full disk says which file it was writing)."""
    if isinstance(exc, NixfleetError):
        return exc
    return SopsError(f"cannot write: {exc.strerror or exc}", exc.filename or path)


class FileSink:
    """Replace each file at once with fsutil.atomic_write (temp beside it, fsync, rename)."""

    def __init__(self) -> None:
        self.written: list[str] = []

    def write(self, path: str, data: bytes) -> None:
        """Replace ``path`` now; SopsError naming the file when that fails (the file stays as it was)."""
        try:
            atomic_write(path, data)
        except OSError as exc:
            raise write_error(exc, path) from None
        self.written.append(path)


class NullSink:
    """Check mode: record what would be written, write nothing."""

    def __init__(self) -> None:
        self.written: dict[str, bytes] = {}

    def write(self, path: str, data: bytes) -> None:
        """Remember what would be written to ``path``."""
        self.written[path] = data


class StagedCommitError(SopsError):
    """commit() stopped partway: ``done`` files are new, ``left`` are as they were (each file is whole)."""

    def __init__(self, message: str, path: str | None, done: list[str], left: list[str]) -> None:
        self.done = done
        self.left = left
        super().__init__(message, path)


_REAL_DIRS: dict[str, str] = {}


def _real_dir(path: str) -> str:
    """realpath of a repository root, once per process (a fleet run makes a sink per file)."""
    real = _REAL_DIRS.get(path)
    if real is None:
        real = _REAL_DIRS[path] = os.path.realpath(path)
    return real


class StagedSink:
    """Stage each new version beside its file (not fsynced yet); ``commit()`` makes them all visible.

    ``staged`` is a plain list of (temp, target) pairs, so a worker process can
    stage and return it, and the parent builds ``StagedSink(staged)`` to commit.
    """

    def __init__(self, staged: list[tuple[str, str]] | None = None, root: str | None = None) -> None:
        self.staged: list[tuple[str, str]] = list(staged or [])
        # A repository's files are written inside it: a link that leads out of it is refused.
        self.root = _real_dir(root) + os.sep if root else None

    def write(self, path: str, data: bytes) -> None:
        """Stage ``data`` in a temp beside ``path``; nothing is visible until commit()."""
        try:
            target = resolve_write_target(path)
            if self.root is not None and not target.startswith(self.root):
                raise SopsError(f"a symlink leads to {target}, outside the repository {self.root.rstrip(os.sep)}; "
                                "refusing to write there (replace the link with the file itself)", path)
            tmp = stage_write(target, data, sync=False, resolved=True)
        except OSError as exc:
            raise write_error(exc, path) from None
        self.staged.append((tmp, target))

    def commit(self) -> list[str]:
        """One sync of every temp, then every file renamed into place, all or none; returns the files replaced.

        Nothing is visible before all temps are durable. If a rename fails, the
        ones done are undone (fsutil.commit_all); only if that fails too does
        StagedCommitError say which files are new and which are unchanged.
        """
        pending, self.staged = self.staged, []
        try:
            sync_staged([tmp for tmp, _unused in pending])
        except OSError as exc:
            discard_staged([tmp for tmp, _unused in pending])
            targets = [t for _unused, t in pending]
            listing = ", ".join(targets[:5]) + (f" and {len(targets) - 5} more" if len(targets) > 5 else "")
            raise StagedCommitError(
                f"cannot make the new files durable ({exc.strerror or exc}); nothing was written, every file is "
                f"as it was ({listing}); fix the cause (free space?) and run again", exc.filename, [], targets,
            ) from None
        try:
            commit_all(pending, sync=False)
        except PartialCommitError as exc:
            raise StagedCommitError(
                f"stopped renaming new files into place ({exc}): {len(exc.done)} are new, {len(exc.left)} unchanged; "
                "every file is whole", (exc.left or exc.done or [None])[0], exc.done, exc.left) from None
        except OSError as exc:
            targets = [t for _unused, t in pending]
            raise StagedCommitError(
                f"renaming new files into place failed ({exc.strerror or exc}); it was undone: nothing was "
                "written, every file is as it was", exc.filename, [], targets) from None
        return [t for _unused, t in pending]

    def discard(self) -> None:
        """Remove every staged temp; the files stay as they were."""
        discard_staged([tmp for tmp, _unused in self.staged])
        self.staged = []


__all__ = ["FileSink", "NullSink", "Sink", "StagedCommitError", "StagedSink", "write_error"]
