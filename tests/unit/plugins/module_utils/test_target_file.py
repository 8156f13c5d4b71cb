"""target_file.py: key files and directories placed under a root without ever following a link.

The hostile user is uid USER, owner of /home/rain in a fake host tree; /etc stands for any root-owned
directory the user would like bootstrap to hand over. Ownership tests need root (chown to other uids).
"""

from __future__ import annotations

import os
import stat

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import fsutil
from ansible_collections.nixfleet.sops.plugins.module_utils.target_file import (
    Spec,
    TargetFileError,
    parse_mode,
    place,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="placing files for another user needs root")

USER = 4242
OTHER = 4343
KEY = b"AGE-SECRET-KEY-1NOTAREALKEYBUTSECRETANYWAY\n"


@pytest.fixture
def host(tmp_path) -> str:
    """A host tree: /etc (root, 0755, one file), /home (root, 0755), /home/rain (USER, 0700)."""
    root = tmp_path / "host"
    for rel, mode, uid in (("etc", 0o755, 0), ("home", 0o755, 0), ("home/rain", 0o700, USER)):
        (root / rel).mkdir(parents=True)
        os.chmod(root / rel, mode)
        os.chown(root / rel, uid, uid)
    (root / "etc" / "shadow").write_text("root:x:::\n")
    os.chmod(root / "etc" / "shadow", 0o640)
    os.chmod(root, 0o755)
    return str(root)


def _stat(root: str, rel: str) -> tuple[int, int, int]:
    st = os.lstat(os.path.join(root, rel.lstrip("/")))
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def _as_user(path: str, make) -> None:
    """Create something as the user would (owned by the user)."""
    make(path)
    os.lchown(path, USER, USER)


def user_dirs(root: str, *rels: str) -> None:
    for rel in rels:
        place(root, Spec(f"/home/rain/{rel}", "directory", 0o700, owner=USER, group=USER))


# --------------------------------------------------------------------------- the attack
def test_a_user_symlink_to_etc_is_refused_and_etc_keeps_owner_and_mode(host) -> None:
    _as_user(os.path.join(host, "home/rain/.config"), lambda p: os.symlink("/etc", p))
    os.symlink(os.path.join(host, "etc"), os.path.join(host, "home/rain/.cfg"))
    before = {rel: _stat(host, rel) for rel in ("/etc", "/etc/shadow")}
    for spec in (Spec("/home/rain/.config", "directory", 0o700, owner=USER, group=USER),
                 Spec("/home/rain/.config/sops", "directory", 0o700, owner=USER, group=USER),
                 Spec("/home/rain/.cfg/shadow", "file", 0o600, owner=USER, content=KEY),
                 Spec("/home/rain/.config/sops/age/keys.txt", "file", 0o600, owner=USER)):
        with pytest.raises(TargetFileError, match=r"is a symbolic link \(to .*etc\); refusing to follow it") as err:
            place(host, spec)
        assert spec.path.split("/")[3] in str(err.value)
    assert {rel: _stat(host, rel) for rel in ("/etc", "/etc/shadow")} == before
    assert open(os.path.join(host, "etc/shadow")).read() == "root:x:::\n"


def test_a_link_is_refused_in_check_mode_too(host) -> None:
    _as_user(os.path.join(host, "home/rain/.config"), lambda p: os.symlink("/etc", p))
    with pytest.raises(TargetFileError, match="symbolic link"):
        place(host, Spec("/home/rain/.config", "directory", 0o700, owner=USER), check_mode=True)


def test_a_link_as_the_key_file_itself_is_refused(host) -> None:
    user_dirs(host, ".config")
    _as_user(os.path.join(host, "home/rain/.config/keys.txt"), lambda p: os.symlink("/etc/shadow", p))
    with pytest.raises(TargetFileError, match="keys.txt is a symbolic link"):
        place(host, Spec("/home/rain/.config/keys.txt", "file", 0o600, owner=USER, content=KEY))


def test_under_the_users_home_every_component_must_be_the_users(host) -> None:
    os.mkdir(os.path.join(host, "home/rain/.config"), 0o755)  # root's, inside the user's home
    with pytest.raises(TargetFileError, match="owned by uid 0, not by uid 4242, inside a directory that uid 4242"):
        place(host, Spec("/home/rain/.config/sops", "directory", 0o700, owner=USER))
    with pytest.raises(TargetFileError, match="owned by uid 0"):
        place(host, Spec("/home/rain/.config", "directory", 0o700, owner=USER))
    assert _stat(host, "/home/rain/.config") == (0, 0, 0o755)


def test_root_owned_key_never_goes_through_a_users_directory(host) -> None:
    with pytest.raises(TargetFileError, match="belongs to uid 4242, neither root nor the owner"):
        place(host, Spec("/home/rain/deploy", "file", 0o600, content=KEY))


def test_another_users_directory_is_never_walked_through(host) -> None:
    os.mkdir(os.path.join(host, "home/bob"), 0o777)
    os.chown(os.path.join(host, "home/bob"), OTHER, OTHER)
    with pytest.raises(TargetFileError, match="belongs to uid 4343"):
        place(host, Spec("/home/bob/keys.txt", "file", 0o600, owner=USER, content=KEY))


def test_a_hard_link_is_replaced_never_chowned_in_place(host) -> None:
    user_dirs(host, ".config")
    victim = os.path.join(host, "home/rain/victim")
    with open(victim, "wb") as fh:
        fh.write(KEY)
    os.chown(victim, USER, USER)
    os.chmod(victim, 0o644)
    os.link(victim, os.path.join(host, "home/rain/.config/keys.txt"))
    spec = Spec("/home/rain/.config/keys.txt", "file", 0o600, owner=USER)
    with pytest.raises(TargetFileError, match="2 hard links"):
        place(host, spec)
    assert place(host, Spec(spec.path, "file", 0o600, owner=USER, content=KEY)).changed
    assert _stat(host, "/home/rain/victim")[2] == 0o644  # the other name is untouched
    assert os.stat(victim).st_nlink == 1


@pytest.mark.parametrize("make", [os.mkfifo, os.mkdir])
def test_a_fifo_or_directory_where_the_key_goes_is_refused(host, make) -> None:
    user_dirs(host, ".config")
    _as_user(os.path.join(host, "home/rain/.config/keys.txt"), make)
    with pytest.raises(TargetFileError, match="is not a regular file"):
        place(host, Spec("/home/rain/.config/keys.txt", "file", 0o600, owner=USER, content=KEY))


# --------------------------------------------------------------------------- placing
@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_directories_and_files_get_exactly_the_modes_asked_for(host, umask) -> None:
    old = os.umask(umask)
    try:
        user_dirs(host, ".config", ".config/sops")
        place(host, Spec("/home/rain/.config/sops/keys.txt", "file", 0o640, owner=USER, group=USER, content=KEY))
        place(host, Spec("/etc/ssh", "directory", 0o755))
    finally:
        os.umask(old)
    assert _stat(host, "/home/rain/.config") == (USER, USER, 0o700)
    assert _stat(host, "/home/rain/.config/sops/keys.txt") == (USER, USER, 0o640)
    assert _stat(host, "/etc/ssh") == (0, 0, 0o755)
    with open(os.path.join(host, "home/rain/.config/sops/keys.txt"), "rb") as fh:
        assert fh.read() == KEY


def test_idempotent_and_check_mode_changes_nothing(host) -> None:
    user_dirs(host, ".config")
    spec = Spec("/home/rain/.config/keys.txt", "file", 0o600, owner=USER, group=USER, content=KEY)
    path = os.path.join(host, "home/rain/.config/keys.txt")
    check = place(host, spec, check_mode=True)
    assert check.changed and not os.path.exists(path)
    assert check.before == {"path": spec.path, "state": "absent"}
    assert check.after == {"path": spec.path, "state": "file", "mode": "0600", "owner": "4242", "group": "4242"}
    assert place(host, spec).changed
    inode = os.stat(path).st_ino
    again = place(host, spec)
    assert not again.changed and again.before == again.after
    assert not place(host, spec, check_mode=True).changed
    os.chmod(path, 0o644)
    mode_only = place(host, spec)
    assert mode_only.changed and os.stat(path).st_ino == inode  # fchmod on the opened file, not a rewrite
    assert "content" not in mode_only.after
    new = Spec(spec.path, "file", 0o600, owner=USER, group=USER, content=b"other\n")
    assert place(host, new, check_mode=True).changed and open(path, "rb").read() == KEY
    replaced = place(host, new)
    assert replaced.changed and replaced.after["content"] == "(replaced, not shown)"
    assert open(path, "rb").read() == b"other\n" and os.stat(path).st_ino != inode
    assert not [n for n in os.listdir(os.path.dirname(path)) if fsutil.is_staged_temp(n)]


def test_only_owner_and_mode_of_an_existing_file(host) -> None:
    user_dirs(host, ".config")
    path = os.path.join(host, "home/rain/.config/keys.txt")
    with open(path, "wb") as fh:
        fh.write(KEY)
    os.chown(path, USER, 0)
    os.chmod(path, 0o644)
    assert place(host, Spec("/home/rain/.config/keys.txt", "file", 0o600, owner=USER, group=USER)).changed
    assert _stat(host, "/home/rain/.config/keys.txt") == (USER, USER, 0o600)
    with pytest.raises(TargetFileError, match="does not exist; without content"):
        place(host, Spec("/home/rain/.config/missing.txt", "file", 0o600, owner=USER))


def test_missing_parents_fail_a_real_run_and_are_assumed_in_check_mode(host) -> None:
    spec = Spec("/home/rain/.config/sops/age/keys.txt", "file", 0o600, owner=USER, content=KEY)
    with pytest.raises(TargetFileError, match=r"/home/rain/.config does not exist; create the directories first"):
        place(host, spec)
    res = place(host, spec, check_mode=True)
    assert res.changed and "assuming an earlier task creates it" in res.warnings[0]
    assert not os.path.exists(os.path.join(host, "home/rain/.config"))


@pytest.mark.parametrize("path", ["/home/rain/../../etc", "/", "/home/./rain"])
def test_dot_components_are_refused(host, path) -> None:
    with pytest.raises(TargetFileError, match="plain path"):
        place(host, Spec(path, "directory", 0o700))


def test_modes_are_explicit_octal() -> None:
    assert parse_mode("0600") == 0o600 and parse_mode("755") == 0o755 and parse_mode(0o700) == 0o700
    for bad in ("rw-------", "99", "077777"):
        with pytest.raises(TargetFileError, match="mode"):
            parse_mode(bad)


def test_key_content_never_in_a_repr_or_a_message(host) -> None:
    spec = Spec("/home/rain/.config/keys.txt", "file", 0o600, owner=USER, content=KEY)
    assert b"AGE-SECRET" not in repr(spec).encode()
    with pytest.raises(TargetFileError) as err:
        place(host, spec)
    assert "AGE-SECRET" not in str(err.value)
