"""Issue 12's cases on the controller side: each fails on the code before the fix and holds after it.

Every refusal here is one line naming the file or host and what to do, and leaves the tree as it was.
"""

from __future__ import annotations

import os
import stat

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, bootstrap, fleet, sshkeys
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine

from tests.lib.secrets_repo import make_repo

NOBODY = 65534


def tree(root):
    """Every file and directory under root (but .git): content, mode, owner; links as links."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                body = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                body = ("dir",)
            else:
                body = ("file", open(p, "rb").read())
            out[os.path.relpath(p, root)] = (body, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return out


@pytest.fixture
def repo(tmp_path):
    return make_repo(str(tmp_path), hosts=("alpha", "beta"))


def spec(host="griefling", **kw):
    return bootstrap.HostSpec(host=host, user="rain", admins=["admin"], **kw)


# --------------------------------------------------------------------------- 3: rotate never skips silently
def test_rotate_refuses_when_a_file_cannot_be_opened(repo):
    stranger = age.recipient_from_identity(age.generate_identity())
    engine.encrypt_file(repo.file("sops/foreign.yaml"), {"x": "y"}, [[stranger]])
    before = tree(repo.path)
    with pytest.raises(fleet.FleetError, match=r"rotate refused: 1 of .*written: sops/foreign.yaml: no identity"):
        fleet.rotate(repo.path, [repo.identities["admin"]])
    assert tree(repo.path) == before
    res = fleet.rotate(repo.path, [repo.identities["admin"]], continue_on_error=True)
    assert [f["path"] for f in res.failed] == ["sops/foreign.yaml"] and "sops/shared.yaml" in res.changed_files


def test_rotate_refuses_a_file_whose_metadata_is_broken(repo):
    path = repo.file("sops/alpha.yaml")
    with open(path) as fh:
        text = fh.read()
    with open(path, "w") as fh:
        fh.write(text.replace("        - recipient:", "        - recipent:", 1))
    before = tree(repo.path)
    with pytest.raises(fleet.FleetError, match=r"rotate refused: 1 file\(s\) have sops metadata that cannot be read.*"
                                               r"sops/alpha.yaml"):
        fleet.rotate(repo.path, [repo.identities["admin"]])
    assert tree(repo.path) == before


# --------------------------------------------------------------------------- 7: a planted host key
def test_a_stored_host_key_that_is_not_the_registered_one_is_refused(repo):
    ids = [repo.identities["admin"]]
    first = bootstrap.ensure_host_keys(repo.path, spec(), ids)
    assert "host key" in first.generated
    # Someone replaces the stored host key with one of their own, encrypted to the admin's public recipient.
    planted = sshkeys.generate("root@griefling")
    sf = engine.SopsFile.open(repo.file("sops/host-keys/griefling.yaml")).unlock(ids)
    sf.set(["ssh_host_ed25519_key"], planted.private_pem.decode())
    sf.write()
    before = tree(repo.path)
    with pytest.raises(bootstrap.BootstrapError,
                       match=rf"griefling: sops/host-keys/griefling.yaml holds a host key whose recipient "
                             rf"\({planted.age_recipient}\) is not the one .sops.yaml registers for &griefling "
                             rf"\({first.public['host_recipient']}\).*adopt_stored_key"):
        bootstrap.ensure_host_keys(repo.path, spec(), ids)
    assert tree(repo.path) == before
    res = bootstrap.ensure_host_keys(repo.path, spec(adopt_stored_key=True), ids)
    assert res.public["host_recipient"] == planted.age_recipient


def test_a_host_key_file_another_user_owns_is_refused(repo):
    ids = [repo.identities["admin"]]
    bootstrap.ensure_host_keys(repo.path, spec(), ids)
    os.chown(repo.file("sops/host-keys/griefling.yaml"), NOBODY, NOBODY)
    before = tree(repo.path)
    with pytest.raises(bootstrap.BootstrapError, match=r"griefling.yaml is not a regular file owned by you.*uid 65534"):
        bootstrap.ensure_host_keys(repo.path, spec(), ids)
    assert tree(repo.path) == before


def test_host_keys_directory_is_not_world_writable_under_umask_000(repo):
    old = os.umask(0)
    try:
        bootstrap.ensure_host_keys(repo.path, spec(), [repo.identities["admin"]])
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(repo.file("sops/host-keys")).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(repo.file(".nixfleet")).st_mode) == 0o755


# --------------------------------------------------------------------------- links out of the tree
def test_a_link_inside_the_repository_never_makes_bootstrap_write_outside(repo, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), repo.file("sops/host-keys"))
    before = tree(repo.path)
    with pytest.raises(engine.SopsError, match=r"outside the repository"):
        bootstrap.ensure_host_keys(repo.path, spec(), [repo.identities["admin"]])
    assert list(outside.iterdir()) == []
    assert tree(repo.path) == before


def test_a_dangling_link_for_the_hosts_file_is_refused(repo, tmp_path):
    os.symlink(str(tmp_path / "nowhere" / "griefling.yaml"), repo.file("sops/griefling.yaml"))
    before = tree(repo.path)
    with pytest.raises(bootstrap.BootstrapError, match=r"sops/griefling.yaml is not a regular file"):
        bootstrap.ensure_host_keys(repo.path, spec(), [repo.identities["admin"]])
    assert tree(repo.path) == before and not (tmp_path / "nowhere").exists()


def test_rekey_leaves_links_alone(repo, tmp_path):
    outside = tmp_path / "elsewhere.yaml"
    engine.encrypt_file(str(outside), {"a": "b"}, [[repo.recipient("admin")]])
    data = outside.read_bytes()
    os.symlink(str(outside), repo.file("sops/shared-link.yaml"))
    res = fleet.rekey(repo.path, [repo.identities["admin"]])
    assert "sops/shared-link.yaml" not in res.changed_files and outside.read_bytes() == data
