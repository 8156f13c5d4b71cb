# Copyright: nixfleet.sops contributors
# MIT License
"""Filesystem helpers every writer in the collection goes through.

Nothing is lost: a write lands either whole or not at all (temp file in the
same directory, fsync, rename, fsync of the directory) and keeps the mode and
owner of the file it replaces. Modes are always set explicitly, never left to
the umask. No write follows a symlink that someone else planted, and private
key material lives in 0700 directories that are removed when done.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from . import failpoints
from .errors import NixfleetError


class LockedError(NixfleetError, RuntimeError):
    """Another process holds the lock; the message names the holder."""


class UnsafePathError(NixfleetError, OSError):
    """A path a write would go through is a link or directory someone else controls."""


# Temp files of ours are `.<name>.nixfleet-<random>.tmp`: recognisable, so a cleanup after a
# killed run removes exactly them and never a user's own `.something.tmp`.
TEMP_MARKER = ".nixfleet-"
_TEMP_RE = re.compile(r"^\..+\.nixfleet-[A-Za-z0-9_]{6,}\.tmp$")
LOCK_NAME = ".nixfleet-sops.lock"
# The one list of directories under a secrets repository that never hold sops files.
SKIP_DIRS = frozenset({".git", ".jj", ".hg", ".nixfleet", ".direnv", "result", "node_modules"})


def is_staged_temp(name: str) -> bool:
    """True for the name of a temp file stage_write/atomic_write creates."""
    return bool(_TEMP_RE.match(name))


def walk_files(root: str, skip_dirs: frozenset[str] = SKIP_DIRS) -> list[str]:
    """Regular files under ``root``, relative and sorted: the one walk of a secrets repository.

    Symlinks are never followed (a link out of the tree is not a file of the
    tree), FIFOs, sockets and devices are not files, and our own temp and lock
    files are left out.
    """
    out: list[str] = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(root, rel_dir) if rel_dir else root))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            if entry.is_dir(follow_symlinks=False):
                if entry.name not in skip_dirs:
                    stack.append(rel)
            elif entry.is_file(follow_symlinks=False):
                if not is_staged_temp(entry.name) and not entry.name.startswith(LOCK_NAME):
                    out.append(rel)
    return sorted(out)


# Size limits of what the collection reads: generous for real files, small enough that a sparse
# 200 MB "key" or a /dev/zero link fails at once instead of filling memory.
KEY_FILE_LIMIT = 1 << 20
CONFIG_LIMIT = 64 << 20
SOPS_FILE_LIMIT = 64 << 20


def read_regular(path: str, limit: int, what: str = "file") -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes.

    Opened without blocking (a FIFO someone put in place of a key file fails at
    once instead of hanging the run), checked after opening (no swap between a
    check and the read), and read to at most ``limit`` bytes. Raises
    FileNotFoundError for a missing file (callers decide whether that is fine)
    and UnsafePathError, naming the file and what to do, for the rest.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise UnsafePathError(f"{path}: is a directory, not a {what}") from None
    except OSError as exc:
        raise _named(exc, path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode) else (
                "a device or socket")
            raise UnsafePathError(f"{path}: is {kind}, not a regular {what}; point to the file itself")
        if st.st_size > limit:
            raise UnsafePathError(f"{path}: is {st.st_size} bytes, more than a {what} can be "
                                  f"({limit >> 20 or 1} MB at most); is it the right file?")
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise UnsafePathError(f"{path}: grows beyond {limit >> 20 or 1} MB while being read")
        return b"".join(chunks)
    finally:
        os.close(fd)


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


def _trusted_uid(uid: int) -> bool:
    return uid in (0, os.geteuid())


def resolve_write_target(path: str) -> str:
    """Where a write to ``path`` lands: through a symlink only when we or root made it.

    A link another user planted (``keys.txt -> ~mallory/grab``) is refused, so
    a write never lands where someone else chose. Returns the real path.
    """
    hops = 0
    current = os.path.abspath(path)
    while True:
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return os.path.join(os.path.realpath(os.path.dirname(current)), os.path.basename(current))
        if not stat.S_ISLNK(st.st_mode):
            return os.path.realpath(current)
        if not _trusted_uid(st.st_uid):
            raise UnsafePathError(
                f"{current} is a symlink owned by uid {st.st_uid}, not by you or root: refusing to write "
                "through it; remove the link (or replace it with the file) and run again"
            )
        hops += 1
        if hops > 40:
            raise UnsafePathError(f"{path}: too many levels of symbolic links")
        current = os.path.join(os.path.dirname(current), os.readlink(current))


def _check_private_dir(directory: str) -> None:
    """A private key may only land in a directory no other user can write or swap."""
    st = os.stat(directory)
    if not _trusted_uid(st.st_uid) or st.st_mode & 0o022:
        raise UnsafePathError(
            f"{directory} is owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}: another user "
            "could read or replace a private key written there; use a directory only you (or root) can write"
        )


def _named(exc: OSError, path: str) -> OSError:
    """The same error, naming ``path`` (a full disk must say which file it was writing)."""
    if getattr(exc, "filename", None):
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), path)


def stage_write(
    path: str,
    data: bytes | str,
    mode: int | None = None,
    default_mode: int = 0o600,
    sync: bool = True,
    private: bool = False,
    resolved: bool = False,
) -> str:
    """Write ``data`` to a temp file beside ``path`` and return the temp's path.

    The temp gets ``mode``, else the mode and owner of the existing ``path``,
    else ``default_mode``; the umask plays no part. ``private`` (a key file)
    never inherits another user's ownership and refuses a directory others can
    write. Nothing is visible at ``path`` until commit_staged(); a fleet
    operation stages every file before committing any, so a failure halfway
    writes nothing. ``sync=False`` leaves the fsync to the caller, who must call
    sync_staged() before committing. ``resolved``: ``path`` is what
    resolve_write_target gave already.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not resolved:
        path = resolve_write_target(path)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, "directory does not exist", directory)
    if private:
        _check_private_dir(directory)
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{path} exists and is not a regular file; refusing to replace it")
    try:
        failpoints.hit("write", path)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + TEMP_MARKER, suffix=".tmp", dir=directory)
    except OSError as exc:
        raise _named(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
            elif st is not None:
                # A private key never stays readable by group or others, whatever the old file allowed.
                old = stat.S_IMODE(st.st_mode)
                os.fchmod(fh.fileno(), (old & 0o700 or 0o600) if private else old)
            else:
                os.fchmod(fh.fileno(), default_mode)
            keep_owner = st is not None and (os.geteuid() == 0 or st.st_uid == os.geteuid())
            if keep_owner and not (private and st.st_uid != os.geteuid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(fh.fileno(), st.st_uid, st.st_gid)
            fh.write(data)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _named(exc, path) from None
        raise
    return tmp


_LIBC: list[Any] = []  # ctypes' handle on the C library, looked up once (empty list: not yet)


def _libc_function(name: str) -> Any:
    """A function of the C library (syncfs, renameat2), or None where there is none."""
    if not _LIBC:
        try:
            import ctypes

            _LIBC.append(ctypes.CDLL(None, use_errno=True))
        except (OSError, AttributeError, ImportError):
            _LIBC.append(None)
    return getattr(_LIBC[0], name, None) if _LIBC[0] is not None else None


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_exchange_works = [True]


def exchange(a: str, b: str) -> bool:
    """Swap the files at ``a`` and ``b`` in one atomic step (renameat2 RENAME_EXCHANGE); False where the
    kernel, C library or filesystem cannot (the caller then links and renames)."""
    fn = _libc_function("renameat2") if _exchange_works[0] else None
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    import ctypes

    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        _exchange_works[0] = False
        return False
    raise OSError(err, os.strerror(err), b)


def sync_staged(tmps: list[str]) -> None:
    """Make staged temps durable before they are renamed into place.

    One syncfs(2) of their filesystem where Linux offers it, else an fsync of
    each temp.
    """
    if not tmps:
        return
    failpoints.hit("sync", tmps[0])
    syncfs = _libc_function("syncfs")
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


def commit_staged(tmp: str, path: str, sync_dir: bool = True, hit: bool = True) -> None:
    """Rename a staged temp over ``path`` (atomic) and fsync the directory."""
    try:
        if hit:
            failpoints.hit("rename", path)
        os.replace(tmp, path)
    except OSError as exc:
        raise _named(exc, path) from None
    if sync_dir:
        fsync_dir(os.path.dirname(os.path.abspath(path)))


class PartialCommitError(NixfleetError, OSError):
    """Renaming staged files failed and could not be undone: ``done`` are new, ``left`` as they were."""

    def __init__(self, message: str, done: list[str], left: list[str]) -> None:
        super().__init__(message)
        self.done, self.left = done, left


def commit_all(pairs: list[tuple[str, str]], sync: bool = True) -> None:
    """Rename every staged ``(temp, target)`` into place: all of them, or (on failure) none.

    Each existing target is swapped with its temp in one step (renameat2
    RENAME_EXCHANGE), so the temp's name then holds the old file as a backup;
    where the filesystem cannot swap, the target is hard-linked to a backup
    beside it and the temp renamed over it. When a step fails, the targets
    already replaced get their backups back, so the tree is as it was. Only
    when that undo fails too (the filesystem went away) is the result mixed:
    PartialCommitError lists what is new and what is not (each file is whole,
    old or new). ``sync=False``: the caller made the temps durable already
    (sync_staged).
    """
    if not pairs:
        return
    if sync:
        sync_staged([tmp for tmp, _unused in pairs])
    backups: list[tuple[str, str | None]] = []
    done = 0
    try:
        for tmp, target in pairs:
            backup = None
            if os.path.exists(target):
                failpoints.hit("rename", target)
                # Only a regular file is swapped (whatever else stands there now, the rename below refuses).
                if stat.S_ISREG(os.lstat(target).st_mode) and exchange(tmp, target):
                    backups.append((target, tmp))
                    done += 1
                    continue
                backup = os.path.join(os.path.dirname(target),
                                      f".{os.path.basename(target)}{TEMP_MARKER}{secrets.token_hex(4)}bak.tmp")
                os.link(target, backup)
            backups.append((target, backup))
            commit_staged(tmp, target, sync_dir=False, hit=backup is None)
            done += 1
    except OSError as exc:
        undone = _undo(backups[:done])
        # Backups put back are gone; the others are old copies nothing refers to.
        discard_staged([tmp for tmp, _unused in pairs[done:]] + [b for _unused, b in backups if b])
        if undone is not None:
            raise PartialCommitError(
                f"{exc.filename or ''}: {exc.strerror}; renaming new files into place stopped and could not be "
                f"undone ({undone}): {done} files are new, {len(pairs) - done} as they were; every file is whole. "
                "Fix the cause and run again", [t for _k, t in pairs[:done]], [t for _k, t in pairs[done:]]) from None
        raise _named(exc, pairs[done][1] if done < len(pairs) else "") from None
    for d in {os.path.dirname(t) for _unused, t in pairs}:
        fsync_dir(d)
    discard_staged([b for _unused, b in backups if b])


def _undo(renamed: list[tuple[str, str | None]]) -> str | None:
    """Put the backups back over the targets renamed so far; None when all went back, else why not."""
    for target, backup in reversed(renamed):
        try:
            if backup is None:
                os.unlink(target)
            else:
                os.replace(backup, target)
        except OSError as exc:
            return f"{target}: {exc.strerror}"
    return None


# Above this many files, discard_staged removes them from a few threads at once.
_DISCARD_PARALLEL_FROM = 64
_DISCARD_THREADS = 8


def discard_staged(tmps: list[str]) -> None:
    """Remove staged temps that will not be committed (or the old versions commit_all swapped out).

    Removing a file with data is slow on some filesystems (this machine's
    ext4, mounted with online discard: 130 us against 9 us for an empty file),
    and the blocks are freed after the directory is unlocked, so many files go
    through a few threads, whose waits overlap (1,000 files of 28 kB: 0.13 s
    in one thread, 0.055 s in eight). Every removal is tried; then an error
    other than a file already gone (with threads, whichever came first) is
    raised.
    """
    errors: list[OSError] = []

    def remove(paths: list[str]) -> None:
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                errors.append(exc)

    if len(tmps) < _DISCARD_PARALLEL_FROM:
        remove(tmps)
    else:
        threads = [threading.Thread(target=remove, args=(tmps[i::_DISCARD_THREADS],)) for i in range(_DISCARD_THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]


def atomic_write(
    path: str, data: bytes | str, mode: int | None = None, default_mode: int = 0o600, private: bool = False
) -> None:
    """Replace ``path`` with ``data`` atomically.

    The temp file is created in the same directory, fsynced and renamed over
    ``path``. An existing file's mode and owner are kept unless ``mode`` is
    given; a new file gets ``mode`` or ``default_mode``. ``private`` marks a key
    file (see stage_write). On any failure the temp file is removed and
    ``path`` is left as it was.
    """
    tmp = stage_write(path, data, mode, default_mode, private=private)
    try:
        commit_staged(tmp, resolve_write_target(path))
    except BaseException:
        discard_staged([tmp])
        raise


def make_dirs(path: str, mode: int = 0o755) -> list[str]:
    """Create ``path`` and its missing parents, each with exactly ``mode``; return those made, parents first.

    Existing directories are left as they are (they may be the user's); an
    existing component that is a symlink someone else owns is refused.
    """
    path = os.path.abspath(path)
    missing: list[str] = []
    current = path
    while True:
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            missing.append(current)
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
            continue
        if stat.S_ISLNK(st.st_mode) and not _trusted_uid(st.st_uid):
            raise UnsafePathError(f"{current} is a symlink owned by uid {st.st_uid}; refusing to create under it")
        if not os.path.isdir(current):
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", current)
        break
    made = []
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            continue
        made.append(d)
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, mode)  # the umask may have masked bits
        finally:
            os.close(fd)
    return made


def remove_made_dirs(made: list[str]) -> None:
    """Undo make_dirs after a failure: remove the directories it made, deepest first, when still empty."""
    for d in reversed(made):
        with contextlib.suppress(OSError):
            os.rmdir(d)


def ensure_private_dir(path: str, mode: int = 0o700) -> bool:
    """Create ``path`` (and parents) with ``mode`` when missing; return True when created.

    An existing directory is left as it is when it is ours (or root's); one
    another user owns, or a symlink, is refused: a private key must not land
    where someone else can read it.
    """
    if not check_private_dir(path):
        return bool(make_dirs(path, mode))
    return False


def check_private_dir(path: str) -> bool:
    """True when ``path`` is a directory fit for private keys (ours or root's, no link), False when missing;
    UnsafePathError otherwise. Lets a caller refuse a bad destination before it makes any key."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{path} is not a plain directory (a symlink or a file); refusing to use it")
    if not _trusted_uid(st.st_uid):
        raise UnsafePathError(
            f"{path} is owned by uid {st.st_uid}, not by you: refusing to put private keys in it; "
            "remove it or choose another directory"
        )
    return True


def exposed_mode(path: str) -> int | None:
    """The mode of the regular file ``path`` when its group or others have any access (a private key
    others may already have copied), else None; None too when ``path`` does not exist."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    return mode if stat.S_ISREG(st.st_mode) and mode & 0o077 else None


def check_output_dir(path: str, what: str) -> bool:
    """True when ``path`` is a plain directory only we (or root) can write, False when it is missing;
    UnsafePathError naming ``what`` goes there otherwise. Checked before any change is made."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{path} is not a plain directory; choose a directory for {what}")
    if not _trusted_uid(st.st_uid) or st.st_mode & 0o022:
        raise UnsafePathError(
            f"{path} is owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}: others could replace "
            f"{what}; use a directory only you can write (it is created when missing)")
    return True


# --------------------------------------------------------------------------- the repository lock
_HELD = threading.local()


@contextlib.contextmanager
def repo_lock(
    directory: str, name: str = LOCK_NAME, purpose: str = "", require: str | None = None, wait: float = 0
) -> Iterator[str]:
    """Hold an exclusive, non-blocking lock on ``directory`` for a whole read-modify-write.

    The lock file records who holds it (host, pid, start time, purpose) so the
    error a second run sees names the holder. The kernel releases the lock when
    the holder dies, so a killed run never leaves the repository locked. The
    same thread may take it again (bootstrap holds it while the key inventory
    records); another thread or process is refused. ``require`` names a file
    that must exist in ``directory`` first (``.sops.yaml``), so pointing a
    module at the wrong directory leaves no lock file behind. ``wait`` seconds
    are spent waiting for a busy lock (parallel runs queue up) before giving up.
    """
    if not os.path.isdir(directory):
        if os.path.lexists(directory):
            raise NotADirectoryError(errno.ENOTDIR, "is not a directory (is this the secrets repository?)", directory)
        raise FileNotFoundError(errno.ENOENT, "no such directory (is this the secrets repository?)", directory)
    if require and not os.path.exists(os.path.join(directory, require)):
        raise FileNotFoundError(errno.ENOENT, f"has no {require}: is this the secrets repository?", directory)
    # Inside .git (or .jj) the lock file never shows up as an untracked file in the user's repo.
    home = next((os.path.join(directory, d) for d in (".git", ".jj") if os.path.isdir(os.path.join(directory, d))),
                directory)
    lock_path = os.path.join(home, name)
    held: dict[str, int] = _HELD.__dict__.setdefault("paths", {})
    key = os.path.realpath(lock_path)
    if held.get(key):
        held[key] += 1
        try:
            yield lock_path
        finally:
            held[key] -= 1
        return
    deadline = time.monotonic() + max(wait, 0)
    fd = _acquire(directory, lock_path, deadline, wait)
    try:
        info = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
        if purpose:
            info += f" ({purpose})"
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        held[key] = 1
        try:
            yield lock_path
        finally:
            held.pop(key, None)
            # Removed while still held: nothing is left behind, and a waiter that opened this file
            # sees it is gone once it gets the lock, and takes a new one (see _acquire).
            with contextlib.suppress(OSError):
                if _same_file(lock_path, fd):
                    os.unlink(lock_path)
    finally:
        os.close(fd)


def _same_file(path: str, fd: int) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _acquire(directory: str, lock_path: str, deadline: float, wait: float) -> int:
    """An fd of ``lock_path`` holding its flock, the file still in place (a holder removes it on release)."""
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePathError(f"{lock_path} is a symlink; refusing to use it as the lock file") from None
            raise _named(exc, lock_path) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafePathError(f"{lock_path} is not a regular file; remove it")
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown holder"
                        raise LockedError(
                            f"{directory} is locked by another nixfleet.sops run ({holder}); wait for it to finish "
                            "and run again (the lock goes away by itself when that process ends)"
                            + (f"; waited {wait:g} s" if wait else "")) from None
                    time.sleep(0.05)
        except BaseException:
            os.close(fd)
            raise
        if _same_file(lock_path, fd):
            return fd
        os.close(fd)  # the holder we waited for removed this file; lock the new one


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


# --------------------------------------------------------------------------- private runtime staging
_RUN_FILE = ".nixfleet-run"


def runtime_base(env: dict[str, str] | None = None) -> str:
    """Where private staging goes: a per-user tmpfs when there is one, else the temp directory.

    ``$XDG_RUNTIME_DIR`` (owned by us, 0700), else ``/dev/shm``, else
    ``tempfile.gettempdir()``; in each, a ``nixfleet-<uid>`` directory that only
    we can enter. A reboot clears a tmpfs, so keys never outlive a power cut.
    """
    env = dict(os.environ) if env is None else env
    candidates = []
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg):
        try:
            st = os.stat(xdg)
            if st.st_uid == os.geteuid() and not st.st_mode & 0o077:
                candidates.append(xdg)
        except OSError:
            pass
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        candidates.append("/dev/shm")
    candidates.append(tempfile.gettempdir())
    base = os.path.join(candidates[0], f"nixfleet-{os.geteuid()}")
    ensure_private_dir(base)
    st = os.lstat(base)
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(base, 0o700)
    return base


def _playbook_process() -> tuple[int, str]:
    """(pid, start time) of the outermost ansible process above us, else of our parent.

    A staging directory belongs to one run of a playbook; when that process is
    gone, the directory is stale.
    """
    pid, found = os.getppid(), (os.getppid(), _start_time(os.getppid()))
    for _unused in range(64):
        if pid <= 1:
            break
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
            with open(f"/proc/{pid}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if any(os.path.basename(a.decode("utf-8", "replace")).startswith("ansible") for a in argv[:2]):
            found = (pid, _start_time(pid))
        pid = ppid
    return found


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return ""


def _run_alive(run_dir: str) -> bool:
    try:
        with open(os.path.join(run_dir, _RUN_FILE), encoding="utf-8") as fh:
            pid_text, start = (fh.read().split() + ["", ""])[:2]
        pid = int(pid_text)
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not start or _start_time(pid) == start


def remove_stale_staging(base: str | None = None) -> list[str]:
    """Remove staging directories whose run is gone (an interrupted bootstrap); return them."""
    base = base or runtime_base()
    removed = []
    for entry in sorted(os.listdir(base)):
        path = os.path.join(base, entry)
        if os.path.islink(path) or not os.path.isdir(path):
            continue
        if not _run_alive(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def new_staging_dir(purpose: str, base: str | None = None) -> tuple[str, list[str]]:
    """A new private (0700) staging directory for this run, and the stale ones removed first.

    The directory records which playbook run owns it, so the next run can tell
    an interrupted run's leftovers (plaintext keys) from a live one's.
    """
    base = base or runtime_base()
    removed = remove_stale_staging(base)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", purpose)[:60]
    path = os.path.join(base, f"{safe}-{secrets.token_hex(6)}")
    os.mkdir(path, 0o700)
    os.chmod(path, 0o700)
    pid, start = _playbook_process()
    with open(os.open(os.path.join(path, _RUN_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
        fh.write(f"{pid} {start}\n")
    return path, removed
