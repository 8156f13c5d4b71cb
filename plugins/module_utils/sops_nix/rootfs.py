# Copyright: nixfleet.sops contributors
# MIT License
"""The host's tree as the host sees it, found under a root prefix.

``root`` is ``/`` on the host itself, a temporary tree in tests, a mounted
install elsewhere. Paths given to and returned by :class:`RootedFS` are the
host's paths; symlinks are resolved inside the root, as the host would resolve
them (an absolute link target starts again at the root, not at this machine's /).

The host's files are input from a possibly hostile host: a read opens only a
regular file (a FIFO would block the verifier forever, a device could have side
effects), never follows a link the resolution did not see, and reads at most
what a file of its kind can hold (a 200 MB sparse "key" is refused, not read).
"""

from __future__ import annotations

import os
import posixpath
import stat
from typing import NamedTuple

from ansible_collections.nixfleet.sops.plugins.module_utils.errors import NixfleetError

MAX_LINK_HOPS = 40


class FileKind(NamedTuple):
    """What a file is read as, and the most it can hold."""

    label: str
    limit: int


KEY = FileKind("key file", 64 * 1024)  # an ed25519 key is 400 bytes, an age key file a few hundred
MANIFEST = FileKind("sops-nix manifest", 8 * 1024 * 1024)  # JSON listing secrets: a few MB at most
CONFIG = FileKind("configuration file", 4 * 1024 * 1024)  # passwd, group, ssh_config, activation script, units


class UnsafeFileError(NixfleetError, OSError):
    """A host file the verifier refuses to read: not a regular file, or larger than its kind can be.

    An OSError too, so that every caller treating an unreadable file as a fault also treats this one.
    """


def file_type(mode: int) -> str:
    """What a file of ``mode`` is, for messages: 'a FIFO (named pipe)', 'a directory', …"""
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def _checked(st: os.stat_result, kind: FileKind) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(f"it is {file_type(st.st_mode)}, not a regular file")
    if st.st_size > kind.limit:
        raise UnsafeFileError(f"it is {st.st_size} bytes, more than a {kind.label} can be ({kind.limit} bytes)")


class RootedFS:
    """Reads the host's files under ``root``, following symlinks inside it."""

    def __init__(self, root: str = "/") -> None:
        self.root = root or "/"

    def host_path(self, path: str) -> str:
        """The path on this machine of the target's ``path``."""
        if self.root == "/":
            return path
        return os.path.join(self.root, path.lstrip("/"))

    def resolve(self, path: str) -> str:
        """Follow symlinks in the target's ``path`` as the host would; returns a target path."""
        parts = [p for p in path.split("/") if p]
        current = "/"
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == ".":
                continue
            if part == "..":
                current = posixpath.dirname(current)
                continue
            candidate = posixpath.join(current, part)
            real = self.host_path(candidate)
            if os.path.islink(real):
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise OSError(f"too many levels of symbolic links at {candidate}")
                target = os.readlink(real)
                if target.startswith("/"):
                    current = "/"
                parts = [p for p in target.split("/") if p] + parts
            else:
                current = candidate
        return current

    def resolve_parent(self, path: str) -> str:
        """``path`` with symlinks resolved in its directories but not in its last component."""
        return posixpath.join(self.resolve(posixpath.dirname(path)), posixpath.basename(path))

    def stat(self, path: str, follow: bool = True) -> os.stat_result | None:
        """stat of the target's ``path`` (None when it does not exist)."""
        try:
            if follow:
                return os.stat(self.host_path(self.resolve(path)))
            return os.lstat(self.host_path(self.resolve_parent(path)))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def readlink(self, path: str) -> str:
        """The target of the symlink at the target's ``path`` (its directories resolved first)."""
        return os.readlink(self.host_path(self.resolve_parent(path)))

    def read_text(self, path: str, kind: FileKind = CONFIG) -> str:
        """The text of the target's regular file ``path``, at most ``kind.limit`` bytes.

        Raises UnsafeFileError (an OSError) for anything else, FileNotFoundError
        and other OSErrors as the system reports them, UnicodeDecodeError for
        bytes that are not UTF-8.
        """
        real = self.host_path(self.resolve(path))
        # Looked at before opening, so a device is never opened; checked again on the descriptor,
        # since the file can be swapped in between. O_NONBLOCK: opening a FIFO returns at once.
        _checked(os.lstat(real), kind)
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _checked(os.fstat(fd), kind)
            chunks, size = [], 0
            while size <= kind.limit:  # the size can grow after fstat: read one byte past the limit at most
                chunk = os.read(fd, kind.limit + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
        if size > kind.limit:
            raise UnsafeFileError(f"it grew past what a {kind.label} can be ({kind.limit} bytes) while read")
        return b"".join(chunks).decode("utf-8")
