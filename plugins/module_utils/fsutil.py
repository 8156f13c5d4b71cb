# Copyright: nixfleet.sops contributors
# MIT License
"""Filesystem helpers every writer in the collection goes through.

Nothing is lost: a write lands either whole or not at all (temp file in the
same directory, fsync, rename, fsync of the directory) and keeps the mode and
owner of the file it replaces. Private material lives in 0700 directories that
are removed when done.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Iterator

from .errors import NixfleetError


class LockedError(NixfleetError, RuntimeError):
    """Another process holds the lock; the message names the holder."""


# Temp files of ours are `.<name>.nixfleet-<random>.tmp`: recognisable, so a cleanup after a
# killed run removes exactly them and never a user's own `.something.tmp`.
TEMP_MARKER = ".nixfleet-"
_TEMP_RE = re.compile(r"^\..+\.nixfleet-[A-Za-z0-9_]{6,}\.tmp$")


def is_staged_temp(name: str) -> bool:
    """True for the name of a temp file stage_write/atomic_write creates."""
    return bool(_TEMP_RE.match(name))


def fsync_dir(directory: str) -> None:
    """fsync a directory so a rename in it survives a power cut (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def stage_write(
    path: str, data: bytes | str, mode: int | None = None, default_mode: int = 0o600, sync: bool = True
) -> str:
    """Write ``data`` to a temp file beside ``path`` and return the temp's path.

    The temp gets ``mode``, else the mode and owner of the existing ``path``,
    else ``default_mode``. Nothing is visible at ``path`` until
    commit_staged(); a fleet operation stages every file before committing
    any, so a failure halfway writes nothing. ``sync=False`` leaves the fsync
    to the caller, who must call sync_staged() before committing: a fleet
    operation flushes all its temps at once, since a create after each fsync
    waits for the journal and costs ~1 ms per file.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    # Through a symlink, the file it points at is replaced (the link stays a link).
    path = os.path.realpath(path)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, "directory does not exist", directory)
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + TEMP_MARKER, suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            elif st is not None:
                os.fchmod(fh.fileno(), stat.S_IMODE(st.st_mode))
            else:
                os.fchmod(fh.fileno(), default_mode)
            if st is not None and (os.geteuid() == 0 or st.st_uid == os.geteuid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(fh.fileno(), st.st_uid, st.st_gid)
            if sync:
                os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def sync_staged(tmps: list[str]) -> None:
    """Make staged temps durable before they are renamed into place.

    One syncfs(2) of their filesystem where Linux offers it, else an fsync of
    each temp.
    """
    if not tmps:
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        syncfs = None
    if syncfs is not None:
        fd = os.open(os.path.dirname(tmps[0]), os.O_RDONLY)
        try:
            same_fs = all(os.stat(t).st_dev == os.fstat(fd).st_dev for t in tmps)
            if same_fs and syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    for tmp in tmps:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def commit_staged(tmp: str, path: str, sync_dir: bool = True) -> None:
    """Rename a staged temp over ``path`` (atomic) and fsync the directory."""
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


def discard_staged(tmps: list[str]) -> None:
    """Remove staged temps that will not be committed."""
    for tmp in tmps:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write(path: str, data: bytes | str, mode: int | None = None, default_mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically.

    The temp file is created in the same directory, fsynced and renamed over
    ``path``. An existing file's mode and owner are kept unless ``mode`` is
    given; a new file gets ``mode`` or ``default_mode``. On any failure the
    temp file is removed and ``path`` is left as it was.
    """
    tmp = stage_write(path, data, mode, default_mode)
    try:
        commit_staged(tmp, os.path.realpath(path))
    except BaseException:
        discard_staged([tmp])
        raise


def ensure_private_dir(path: str, mode: int = 0o700) -> bool:
    """Create ``path`` (and parents) with ``mode`` when missing; return True when created.

    An existing directory is left as it is: it may belong to the user.
    """
    if os.path.isdir(path):
        return False
    parent = os.path.dirname(os.path.abspath(path))
    if parent and not os.path.isdir(parent):
        ensure_private_dir(parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return False
    os.chmod(path, mode)  # umask may have masked bits
    return True


@contextlib.contextmanager
def repo_lock(directory: str, name: str = ".nixfleet-sops.lock", purpose: str = "") -> Iterator[str]:
    """Hold an exclusive, non-blocking lock on ``directory``.

    The lock file records who holds it (host, pid, start time, purpose) so the
    error a second run sees names the holder. The kernel releases the lock when
    the holder dies, so a killed run never leaves the repository locked.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, "no such directory (is this the secrets repository?)", directory)
    # Inside .git (or .jj) the lock file never shows up as an untracked file in the user's repo.
    home = next((os.path.join(directory, d) for d in (".git", ".jj") if os.path.isdir(os.path.join(directory, d))),
                directory)
    lock_path = os.path.join(home, name)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown holder"
            raise LockedError(
                f"{directory} is locked by another nixfleet.sops run ({holder}); "
                f"wait for it to finish, or remove {lock_path} if that process is gone"
            ) from None
        info = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
        if purpose:
            info += f" ({purpose})"
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        yield lock_path
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)


def remove_stale_temps(directory: str, skip_dirs: frozenset[str] = frozenset({".git", ".jj"})) -> list[str]:
    """Remove temp files a killed atomic_write left behind (``.<name>.nixfleet-<random>.tmp``).

    Call it only while holding the repository lock, so no live writer owns them.
    Returns the removed paths.
    """
    removed = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if d not in skip_dirs]
        for fn in filenames:
            if is_staged_temp(fn):
                p = os.path.join(dirpath, fn)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
                    removed.append(p)
    return removed
