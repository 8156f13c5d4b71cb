"""Failure modes a demanding user hits: broken input must fail loudly, change nothing, leak nothing."""

from __future__ import annotations

import os

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, bootstrap, fleet, fsutil, keyinventory
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig, SopsConfigError

from tests.lib.inproc import run_module_inproc
from tests.lib.secrets_repo import make_repo


def snapshot(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for fn in filenames:
            p = os.path.join(dirpath, fn)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


@pytest.fixture
def repo(tmp_path):
    return make_repo(str(tmp_path), hosts=("alpha", "beta"))


def test_rekey_refuses_a_rule_with_a_dangling_alias(repo):
    text = open(repo.file(".sops.yaml")).read().replace("          - *beta\n", "          - *gamma\n", 1)
    open(repo.file(".sops.yaml"), "w").write(text)
    before = snapshot(repo.path)
    with pytest.raises(SopsConfigError, match="gamma"):
        fleet.rekey(repo.path, [repo.identities["admin"]])
    assert snapshot(repo.path) == before


def test_rekey_names_the_line_and_anchor_of_an_invalid_recipient(repo):
    text = open(repo.file(".sops.yaml")).read()
    bad = repo.recipient("beta")[:-1] + ("q" if repo.recipient("beta")[-1] != "q" else "p")
    open(repo.file(".sops.yaml"), "w").write(text.replace(repo.recipient("beta"), bad))
    with pytest.raises(SopsConfigError, match=r"line \d+: .*invalid recipient \(anchor &beta\).*checksum"):
        fleet.rekey(repo.path, [repo.identities["admin"]])


def test_identity_pasted_into_sops_yaml_never_reaches_the_message(repo):
    ident = age.generate_identity()
    text = open(repo.file(".sops.yaml")).read().replace(repo.recipient("beta"), ident)
    open(repo.file(".sops.yaml"), "w").write(text)
    res = run_module_inproc("sops_rekey", {"repo": repo.path, "age_keys": [repo.identities["admin"]]})
    assert res.failed and "line" in res.msg
    assert "AGE-SECRET-KEY" not in res.stdout + res.stderr
    res = run_module_inproc("sops_audit", {"repo": repo.path})
    assert "AGE-SECRET-KEY" not in res.stdout + res.stderr


def test_rotate_with_a_mistyped_recipient_is_an_error(repo):
    bad = repo.recipient("alpha")[:-2] + "zz"
    with pytest.raises(fleet.FleetError, match="recipient: .*"):
        fleet.rotate(repo.path, [repo.identities["admin"]], recipient=bad)
    with pytest.raises(fleet.FleetError, match=r"path_regex 'sops/\(' is not a valid regular expression"):
        fleet.rotate(repo.path, [repo.identities["admin"]], path_regex="sops/(")


def test_plain_file_under_an_empty_rule_does_not_block_rekey(repo):
    with open(repo.file(".sops.yaml"), "a") as fh:
        fh.write("  - path_regex: ^docs/\n    age: []\n")
    os.makedirs(repo.file("docs"))
    open(repo.file("docs/readme.txt"), "w").write("plain\n")
    res = fleet.rekey(repo.path, [repo.identities["admin"]])
    assert res.counts["failed"] == 0


def test_host_keys_write_nothing_when_a_file_to_rekey_cannot_be_opened(repo):
    # shared.yaml readable only by beta: the admin cannot rekey it when griefling joins.
    engine.updatekeys(repo.file("sops/shared.yaml"), [[repo.recipient("beta")]], [repo.identities["admin"]])
    before = snapshot(repo.path)
    spec = bootstrap.HostSpec(host="griefling", user="rain", admins=["admin"])
    with pytest.raises(fleet.FleetError, match="sops/shared.yaml"):
        bootstrap.ensure_host_keys(repo.path, spec, [repo.identities["admin"]])
    assert snapshot(repo.path) == before


def test_writing_through_a_symlink_keeps_the_link(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    target = real / "keys.txt"
    target.write_text("old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    fsutil.atomic_write(str(link), "new\n")
    assert link.is_symlink() and target.read_text() == "new\n"


def test_stale_temp_cleanup_spares_user_files(tmp_path):
    mine = tmp_path / ".notes.backup.tmp"
    mine.write_text("keep me")
    tmp = fsutil.stage_write(str(tmp_path / "x.yaml"), "a: 1\n")
    removed = fsutil.remove_stale_temps(str(tmp_path))
    assert removed == [tmp] and mine.exists()


def _add_x_everywhere(repo):
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_recipient("x", age.recipient_from_identity(age.generate_identity()), group="users")
    cfg.ensure_rule_member(r"sops/shared\.yaml$", "x")
    cfg.ensure_rule_member(r"sops/alpha(-\d+)?\.yaml$", "x")
    cfg.ensure_rule_member(r"sops/beta(-\d+)?\.yaml$", "x")
    cfg.save()


@pytest.mark.parametrize("swap", [True, False], ids=["renameat2-exchange", "link-and-rename"])
def test_failure_while_renaming_reports_what_is_new_and_leaves_no_temps(repo, monkeypatch, swap):
    # The second rename fails and so does putting the first file back (the filesystem went away):
    # the error says what is new and what is not, and no temp is left.
    _add_x_everywhere(repo)
    monkeypatch.setattr(fsutil, "_exchange_works", [swap])
    calls = []
    real = os.replace
    real_exchange = fsutil.exchange

    def flaky(src, dst, step=real):
        if "/sops/" not in dst:
            return step(src, dst)  # not a sops file (the record of uncommitted paths)
        calls.append(dst)
        if len(calls) >= 2:
            raise OSError(5, "Input/output error", dst)
        return step(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", flaky)
    monkeypatch.setattr(fsutil, "exchange", lambda a, b: swap and flaky(a, b, real_exchange))
    with pytest.raises(fleet.FleetError, match=r"1 files are new .*2 are unchanged.*run rekey again"):
        fleet.rekey(repo.path, [repo.identities["admin"]], workers=1)
    monkeypatch.setattr(fsutil.os, "replace", real)
    monkeypatch.setattr(fsutil, "exchange", real_exchange)
    assert not [f for f in os.listdir(repo.file("sops")) if f.endswith(".tmp")]
    assert fleet.rekey(repo.path, [repo.identities["admin"]]).counts["changed"] == 2


@pytest.mark.parametrize("action", ["erofs", "eacces", "enospc"])
def test_failure_while_renaming_is_undone(repo, monkeypatch, action):
    from ansible_collections.nixfleet.sops.plugins.module_utils import failpoints

    _add_x_everywhere(repo)
    before = snapshot(repo.path)
    monkeypatch.setenv(failpoints.ENV, f"rename#2:{action}")
    failpoints.reset()
    try:
        with pytest.raises(fleet.FleetError, match="nothing was written, every file is as it was"):
            fleet.rekey(repo.path, [repo.identities["admin"]], workers=1)
    finally:
        failpoints.reset()
    after = snapshot(repo.path)
    del after[".sops.yaml"], before[".sops.yaml"]
    assert after == before


@pytest.mark.parametrize("text", ["- a\n- b\n", "keys: 5\n", "keys:\n  - just a string\n",
                                  "keys:\n  - {anchor: a, kind: host, recipient: x, created: notadate}\n"])
def test_malformed_key_inventory_names_the_file(tmp_path, text):
    (tmp_path / ".nixfleet").mkdir()
    (tmp_path / ".nixfleet" / "keys.yaml").write_text(text)
    with pytest.raises(keyinventory.InventoryError, match="keys.yaml"):
        keyinventory.load(str(tmp_path))


def test_key_inventory_refuses_unsafe_anchor_and_private_deploy_key(tmp_path):
    with pytest.raises(keyinventory.InventoryError, match="not allowed"):
        keyinventory.record(str(tmp_path), "../x", "host", age.recipient_from_identity(age.generate_identity()))
    from ansible_collections.nixfleet.sops.plugins.module_utils import sshkeys

    pem = sshkeys.generate("x").private_pem.decode()
    with pytest.raises(age.AgeKeyError):
        keyinventory.record(str(tmp_path), "h-repo", "deploy", pem)
    assert not (tmp_path / ".nixfleet").exists()


def test_age_keypair_never_drops_other_identities(tmp_path):
    from ansible_collections.nixfleet.sops.plugins.module_utils import keypairs, sshkeys

    host = tmp_path / "host_key"
    host.write_bytes(sshkeys.generate("h").private_pem)
    keyfile = tmp_path / "keys.txt"
    keyfile.write_text(age.format_identity_file(age.generate_identity()))
    before = keyfile.read_bytes()
    with pytest.raises(age.AgeKeyError, match="regenerate=always"):
        keypairs.ensure_age_keypair(str(keyfile), ssh_key_path=str(host))
    assert keyfile.read_bytes() == before
