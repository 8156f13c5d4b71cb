# Copyright: nixfleet.sops contributors
# MIT License
"""The host's tree as the host sees it, found under a root prefix.

``root`` is ``/`` on the host itself, a temporary tree in tests, a mounted
install elsewhere. Paths given to and returned by :class:`RootedFS` are the
host's paths; symlinks are resolved inside the root, as the host would resolve
them (an absolute link target starts again at the root, not at this machine's /).
"""

from __future__ import annotations

import os
import posixpath

MAX_LINK_HOPS = 40


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

    def read_text(self, path: str) -> str:
        """The text of the target's file ``path``."""
        with open(self.host_path(self.resolve(path)), encoding="utf-8") as fh:
            return fh.read()
