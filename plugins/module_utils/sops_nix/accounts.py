# Copyright: nixfleet.sops contributors
# MIT License
"""The host's users and groups: its own /etc/passwd and /etc/group (NSS too on the host itself)."""

from __future__ import annotations

from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.rootfs import RootedFS


class Accounts:
    """User and group ids by name, read once from the host's tree."""

    def __init__(self, fs: RootedFS) -> None:
        self.fs = fs
        self._passwd: dict[str, tuple[int, int, str]] | None = None
        self._groups: dict[str, int] | None = None

    def _load(self) -> tuple[dict[str, tuple[int, int, str]], dict[str, int]]:
        if self._passwd is None or self._groups is None:
            self._passwd, self._groups = {}, {}
            for name, target in (("passwd", self._passwd), ("group", self._groups)):
                try:
                    text = self.fs.read_text(f"/etc/{name}")
                except (OSError, UnicodeDecodeError):
                    continue
                for line in text.splitlines():
                    fields = line.split(":")
                    if len(fields) < 4 or not fields[2].isdigit():
                        continue
                    if name == "passwd" and len(fields) >= 6:
                        target[fields[0]] = (int(fields[2]), int(fields[3]), fields[5])
                    elif name == "group":
                        target[fields[0]] = int(fields[2])
        return self._passwd, self._groups

    def uid_of(self, user: str | int | None) -> int | None:
        """uid of a user name (from the target's /etc/passwd, or NSS on the host itself)."""
        if user is None or isinstance(user, int) or str(user).isdigit():
            return None if user is None else int(user)
        passwd, _unused = self._load()
        if user in passwd:
            return passwd[user][0]
        if self.fs.root == "/":
            import pwd

            try:
                return pwd.getpwnam(user).pw_uid
            except KeyError:
                return None
        return None

    def gid_of(self, group: str | int | None) -> int | None:
        """gid of a group name (from the target's /etc/group, or NSS on the host itself)."""
        if group is None or isinstance(group, int) or str(group).isdigit():
            return None if group is None else int(group)
        _unused, groups = self._load()
        if group in groups:
            return groups[group]
        if self.fs.root == "/":
            import grp

            try:
                return grp.getgrnam(group).gr_gid
            except KeyError:
                return None
        return None

    def user_label(self, uid: int) -> str:
        """`` (name)`` of the user with ``uid``, for messages ('' when unknown)."""
        passwd, _unused = self._load()
        for name, (u, _unused, _unused) in passwd.items():
            if u == uid:
                return f" ({name})"
        return ""
