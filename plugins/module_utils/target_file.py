# Copyright: nixfleet.sops contributors
# MIT License
"""Files and directories placed on a target under a root, never through a link.

Why: on a running host (bootstrap's push, ``target_keys``) keys go into
directories a user controls, the primary user's home. ``ansible.builtin.file``
and ``copy`` follow symlinks in parent components: a user who makes
``~/.config`` a link to ``/etc`` gets bootstrap to chown ``/etc`` to them, or to
drop a private key wherever the link points.

Here every path component is opened relative to its parent's descriptor with
``O_NOFOLLOW``, and a component that is a link is refused. Inside a directory a
user controls (owned by someone other than root and us, or writable by group or
others), every existing component must already belong to the expected owner,
and the path never passes through a directory of a third user. Owner and mode
are only ever set with ``fchown``/``fchmod`` on descriptors opened here; a new
directory gets its mode explicitly (the umask plays no part); file content goes
to a temp file in the same directory (created through the directory's
descriptor), is fsynced and renamed into place. A file with other hard links is
replaced, never chowned in place.

Standard library only: it runs on NixOS targets.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import stat
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.nixfleet.sops.plugins.module_utils.errors import NixfleetError
from ansible_collections.nixfleet.sops.plugins.module_utils.fsutil import TEMP_MARKER

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
MAX_CONTENT = 1024 * 1024  # key files are small; a larger "key" is a mistake


class TargetFileError(NixfleetError):
    """A placement that was refused or failed; the message names the path and what to do."""


class MissingParentError(TargetFileError):
    """The root or a parent directory does not exist (yet)."""


@dataclass(frozen=True)
class Spec:
    """What should be at ``path`` (a target path, under the root) once placed."""

    path: str
    state: str  # file | directory
    mode: int
    owner: int | None = None  # uid; None: the process's for new objects, unchanged for existing ones
    group: int | None = None  # gid; likewise
    content: bytes | None = field(default=None, repr=False)  # file only; None: owner and mode of an existing file


@dataclass
class Result:
    """Whether anything changed (or would in check mode), and the before/after of paths, modes, owners."""

    changed: bool
    before: dict[str, Any]
    after: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def uid_of(owner: str | None) -> int | None:
    """The uid of a user name (or a number) on this host; TargetFileError when there is no such user."""
    if owner in (None, ""):
        return None
    if str(owner).isdigit():
        return int(owner)
    try:
        return pwd.getpwnam(str(owner)).pw_uid
    except KeyError:
        raise TargetFileError(f"the user {owner!r} does not exist on this host") from None


def gid_of(group: str | None) -> int | None:
    """The gid of a group name (or a number) on this host; TargetFileError when there is no such group."""
    if group in (None, ""):
        return None
    if str(group).isdigit():
        return int(group)
    try:
        return grp.getgrnam(str(group)).gr_gid
    except KeyError:
        raise TargetFileError(f"the group {group!r} does not exist on this host") from None


def parse_mode(mode: str | int) -> int:
    """An explicit octal mode ('0600', '600' or an int); TargetFileError for anything else."""
    try:
        value = mode if isinstance(mode, int) else int(str(mode), 8)
    except ValueError:
        raise TargetFileError(f"mode {mode!r} is not an octal mode like '0600'") from None
    if not 0 <= value <= 0o7777:
        raise TargetFileError(f"mode {mode!r} is out of range")
    return value


def _name(uid: int, lookup: Any) -> str:
    try:
        return lookup(uid)[0]
    except (KeyError, OverflowError):
        return str(uid)


def _describe(path: str, st: os.stat_result | None) -> dict[str, Any]:
    """Path, state, mode, owner and group, for the diff (never content)."""
    if st is None:
        return {"path": path, "state": "absent"}
    state = "directory" if stat.S_ISDIR(st.st_mode) else "file"
    return {"path": path, "state": state, "mode": f"{stat.S_IMODE(st.st_mode):04o}",
            "owner": _name(st.st_uid, pwd.getpwuid), "group": _name(st.st_gid, grp.getgrgid)}


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _trusted(st: os.stat_result) -> bool:
    """A directory only root (or we) can change: entries in it were put there by root or us."""
    return st.st_uid in (0, os.geteuid()) and not st.st_mode & 0o022


class _Walk:
    """The open directories from the root to the parent of the path, each opened relative to the one before."""

    def __init__(self, root: str, spec: Spec) -> None:
        self.spec = spec
        self.expected_uid = spec.owner if spec.owner is not None else os.geteuid()
        self.parts = [p for p in spec.path.split("/") if p]
        if not spec.path.startswith("/"):
            raise TargetFileError(f"{spec.path}: give an absolute path (it is placed below the root)")
        if not self.parts or any(p in (".", "..") for p in self.parts):
            raise TargetFileError(f"{spec.path}: give a plain path below the root (no '.' or '..' components)")
        try:
            # The root is the operator's choice (/ or a mounted tree): it is opened as given.
            self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise MissingParentError(f"the root {root} does not exist") from None
        except OSError as exc:
            raise TargetFileError(f"the root {root} cannot be opened as a directory: {exc.strerror}") from None
        self.st = os.fstat(self.fd)
        self._fds = [self.fd]

    def shown(self, depth: int) -> str:
        """The target path of the first ``depth`` components."""
        return "/" + "/".join(self.parts[:depth])

    def close(self) -> None:
        """Close every directory opened on the way."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def vet(self, name: str, st: os.stat_result, shown: str) -> None:
        """Refuse a link, and an object of someone else's inside a directory a user controls."""
        if stat.S_ISLNK(st.st_mode):
            try:
                where = f" (to {os.readlink(name, dir_fd=self.fd)})"
            except OSError:
                where = ""
            raise TargetFileError(
                f"{shown} is a symbolic link{where}; refusing to follow it (a link a user planted could send this "
                "write anywhere, for example to /etc): remove the link and run again")
        if not _trusted(self.st) and st.st_uid != self.expected_uid:
            raise TargetFileError(
                f"{shown} is owned by uid {st.st_uid}, not by uid {self.expected_uid}, inside a directory that uid "
                f"{self.st.st_uid} controls ({stat.S_IMODE(self.st.st_mode):04o}); refusing to change it: remove it "
                "(or give it to the expected owner) and run again")

    def descend(self) -> None:
        """Open every directory down to the path's parent, checking each on the way."""
        for depth, name in enumerate(self.parts[:-1], start=1):
            shown = self.shown(depth)
            st = _lstat_at(self.fd, name)
            if st is None:
                raise MissingParentError(f"{shown} does not exist; create the directories first (state=directory), "
                                         "parents before children")
            self.vet(name, st, shown)
            if not stat.S_ISDIR(st.st_mode):
                raise TargetFileError(f"{shown} is not a directory")
            if st.st_uid not in (0, os.geteuid(), self.expected_uid):
                raise TargetFileError(f"{shown} belongs to uid {st.st_uid}, neither root nor the owner "
                                      f"(uid {self.expected_uid}) of {self.spec.path}; refusing to write through it")
            self.fd = self.open_dir(name, st, shown)
            self._fds.append(self.fd)
            self.st = os.fstat(self.fd)  # what the next component's trust is decided on: the opened directory

    def open_dir(self, name: str, st: os.stat_result, shown: str) -> int:
        """Open the directory ``name`` of the current one, as the one ``st`` describes (not a swapped-in one)."""
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            raise TargetFileError(f"{shown} changed while it was being opened ({exc.strerror}); run again") from None
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise TargetFileError(f"{shown} changed while it was being opened; run again")
        return fd


def _apply(fd: int, st: os.stat_result, spec: Spec, check_mode: bool) -> bool:
    """Owner, group and mode set on ``fd`` (a descriptor opened here, never a path); True when any changed."""
    uid = spec.owner if spec.owner is not None and spec.owner != st.st_uid else -1
    gid = spec.group if spec.group is not None and spec.group != st.st_gid else -1
    changed = False
    if uid != -1 or gid != -1:
        changed = True
        if not check_mode:
            os.fchown(fd, uid, gid)
    if stat.S_IMODE(st.st_mode) != spec.mode:
        changed = True
        if not check_mode:
            os.fchmod(fd, spec.mode)  # after fchown, which may clear set-id bits
    return changed


def _place_directory(walk: _Walk, name: str, st: os.stat_result | None, check_mode: bool) -> bool:
    spec, shown = walk.spec, walk.spec.path
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise TargetFileError(f"{shown} exists and is not a directory; remove it and run again")
    created = st is None
    if st is None:
        if check_mode:
            return True
        os.mkdir(name, 0o700, dir_fd=walk.fd)  # 0700 until fchown/fchmod below give it owner and mode
        st = _lstat_at(walk.fd, name)
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise TargetFileError(f"{shown} changed while it was being created; run again")
    fd = walk.open_dir(name, st, shown)
    try:
        return _apply(fd, os.fstat(fd), spec, check_mode) or created
    finally:
        os.close(fd)


def _same_content(fd: int, st: os.stat_result, content: bytes) -> bool:
    if st.st_size != len(content):
        return False
    data = b""
    while len(data) <= len(content):
        chunk = os.read(fd, len(content) + 1 - len(data))
        if not chunk:
            break
        data += chunk
    return data == content


def _write_new(walk: _Walk, name: str, spec: Spec, old: os.stat_result | None) -> None:
    """The content written to a temp file beside ``name`` (through the directory's descriptor), renamed over it.

    Without an owner (group) in ``spec``, the replaced file's is kept, as ansible.builtin.copy does.
    """
    if spec.content is None:
        raise AssertionError("internal error: spec.content is not None does not hold")
    uid = spec.owner if spec.owner is not None else (old.st_uid if old is not None else -1)
    gid = spec.group if spec.group is not None else (old.st_gid if old is not None else -1)
    tmp = f".{name}{TEMP_MARKER}{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=walk.fd)
    try:
        view = memoryview(spec.content)
        while view:
            view = view[os.write(fd, view):]
        os.fchown(fd, uid, gid)
        os.fchmod(fd, spec.mode)
        os.fsync(fd)
        os.rename(tmp, name, src_dir_fd=walk.fd, dst_dir_fd=walk.fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=walk.fd)
        raise
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.fsync(walk.fd)  # the rename survives a power cut


def _place_file(walk: _Walk, name: str, st: os.stat_result | None, check_mode: bool) -> tuple[bool, bool]:
    """(changed, content written) for a file."""
    spec, shown = walk.spec, walk.spec.path
    if st is None:
        if spec.content is None:
            raise TargetFileError(f"{shown} does not exist; without content only an existing file's owner and mode "
                                  "are set")
        if not check_mode:
            _write_new(walk, name, spec, None)
        return True, True
    if not stat.S_ISREG(st.st_mode):
        raise TargetFileError(f"{shown} exists and is not a regular file; remove it and run again")
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=walk.fd)
    except OSError as exc:
        raise TargetFileError(f"{shown} changed while it was being opened ({exc.strerror}); run again") from None
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(opened.st_mode):
            raise TargetFileError(f"{shown} changed while it was being opened; run again")
        rewrite = spec.content is not None and not _same_content(fd, opened, spec.content)
        if not rewrite and opened.st_nlink > 1 and _apply(fd, opened, spec, check_mode=True):
            # Changing owner or mode in place would change every other name of this inode too.
            if spec.content is None:
                raise TargetFileError(f"{shown} has {opened.st_nlink} hard links; refusing to change its owner or "
                                      "mode in place: remove the other links (or give the content) and run again")
            rewrite = True
        if rewrite:
            if not check_mode:
                _write_new(walk, name, spec, opened)
            return True, True
        return _apply(fd, opened, spec, check_mode), False
    finally:
        os.close(fd)


def place(root: str, spec: Spec, check_mode: bool = False) -> Result:
    """Make ``spec.path`` under ``root`` what ``spec`` says, safely (see the module docstring).

    ``check_mode`` runs every check and decides ``changed`` the same way, but
    changes nothing. Raises TargetFileError naming the path when the placement
    is refused; nothing is changed then.
    """
    if spec.state not in ("file", "directory"):
        raise TargetFileError(f"{spec.path}: state must be file or directory, not {spec.state!r}")
    if spec.content is not None and (spec.state != "file" or len(spec.content) > MAX_CONTENT):
        raise TargetFileError(f"{spec.path}: content is for state=file and at most {MAX_CONTENT} bytes")
    try:
        walk = _Walk(root, spec)
    except MissingParentError as exc:
        return _missing_parent(exc, spec, check_mode)
    try:
        walk.descend()
        name = walk.parts[-1]
        st = _lstat_at(walk.fd, name)
        if st is not None:
            walk.vet(name, st, spec.path)
        before = _describe(spec.path, st)
        if spec.state == "directory":
            changed, written = _place_directory(walk, name, st, check_mode), False
        else:
            changed, written = _place_file(walk, name, st, check_mode)
        after = _expected(spec, st) if changed else dict(before)
        if written and st is not None:
            before["content"], after["content"] = "(not shown)", "(replaced, not shown)"
        return Result(changed=changed, before=before, after=after)
    except MissingParentError as exc:
        return _missing_parent(exc, spec, check_mode)
    except OSError as exc:
        raise TargetFileError(f"{spec.path}: {exc.strerror or exc}") from None
    finally:
        walk.close()


def _missing_parent(exc: MissingParentError, spec: Spec, check_mode: bool) -> Result:
    """A real run fails; in check mode the tasks that create the parents have not run, so the
    placement is reported as the real run would make it."""
    if not check_mode:
        raise exc
    return Result(changed=True, before=_describe(spec.path, None), after=_expected(spec, None),
                  warnings=[f"check mode: {exc.message}; assuming an earlier task creates it"])


def _expected(spec: Spec, st: os.stat_result | None) -> dict[str, Any]:
    """What ``spec.path`` looks like after the placement, for the diff."""
    uid = spec.owner if spec.owner is not None else (st.st_uid if st is not None else os.geteuid())
    gid = spec.group if spec.group is not None else (st.st_gid if st is not None else os.getegid())
    return {"path": spec.path, "state": spec.state, "mode": f"{spec.mode:04o}",
            "owner": _name(uid, pwd.getpwuid), "group": _name(gid, grp.getgrgid)}
