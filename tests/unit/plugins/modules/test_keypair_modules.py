"""age_keypair and ssh_keypair through real Ansible: idempotence, check mode, errors, no leaks."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age

from tests.lib.inproc import run_module_inproc
from tests.lib.runner import run_module

SECRET_MARKERS = ("AGE-SECRET-KEY-", "PRIVATE KEY")


def _snapshot(directory):
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_mtime_ns, open(p, "rb").read() if os.path.isfile(p) else None)
    return out


def _assert_no_secrets(res):
    for marker in SECRET_MARKERS:
        assert marker not in res.stdout
        assert marker not in res.stderr


@pytest.mark.parametrize("module", ["age_keypair", "ssh_keypair"])
def test_check_then_run_then_check_then_run(tmp_path, module):
    path = tmp_path / "new" / "key"
    args = {"path": str(path)}
    first_check = run_module_inproc(module, args, check=True)
    assert first_check.changed and not first_check.failed
    assert not (tmp_path / "new").exists(), "check mode wrote something"

    first = run_module_inproc(module, args)
    assert first.changed and not first.failed, first.result
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o700

    before = _snapshot(tmp_path)
    second_check = run_module_inproc(module, args, check=True)
    second = run_module_inproc(module, args, diff=True)
    assert not second_check.changed and not second.changed
    assert _snapshot(tmp_path) == before
    for res in (first_check, first, second_check, second):
        _assert_no_secrets(res)
    if module == "age_keypair":
        assert first.result["recipient"] == second.result["recipient"]
        assert age.read_identity_file(str(path))
    else:
        assert first.result["public_key"] == (tmp_path / "new" / "key.pub").read_text().strip()
        assert first.result["age_recipient"] == age.ssh_public_key_to_recipient(first.result["public_key"])
        assert stat.S_IMODE(os.stat(str(path) + ".pub").st_mode) == 0o644


def test_age_keypair_derives_sops_nix_key_from_host_key(tmp_path):
    host = tmp_path / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host)], check=True)
    res = run_module_inproc("age_keypair", {"path": str(tmp_path / "key.txt"), "ssh_key_path": str(host)})
    assert res.changed
    pub = (tmp_path / "ssh_host_ed25519_key.pub").read_text()
    assert res.result["recipient"] == age.ssh_public_key_to_recipient(pub)
    again = run_module_inproc("age_keypair", {"path": str(tmp_path / "key.txt"), "ssh_key_path": str(host)})
    assert not again.changed
    _assert_no_secrets(res)


def test_age_keypair_fixes_loose_mode(tmp_path):
    path = tmp_path / "keys.txt"
    run_module_inproc("age_keypair", {"path": str(path)})
    path.chmod(0o644)
    res = run_module_inproc("age_keypair", {"path": str(path)})
    assert res.changed
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_regenerate_always_changes_the_key(tmp_path):
    path = tmp_path / "keys.txt"
    a = run_module_inproc("age_keypair", {"path": str(path)}).result["recipient"]
    res = run_module_inproc("age_keypair", {"path": str(path), "regenerate": "always"})
    assert res.changed and res.result["recipient"] != a


def test_absent_removes(tmp_path):
    path = tmp_path / "id"
    run_module_inproc("ssh_keypair", {"path": str(path)})
    res = run_module_inproc("ssh_keypair", {"path": str(path), "state": "absent"})
    assert res.changed and not path.exists() and not (tmp_path / "id.pub").exists()
    assert not run_module_inproc("ssh_keypair", {"path": str(path), "state": "absent"}).changed


def test_ssh_keypair_comment_change_keeps_the_key(tmp_path):
    path = tmp_path / "id"
    first = run_module_inproc("ssh_keypair", {"path": str(path), "comment": "a@b"})
    res = run_module_inproc("ssh_keypair", {"path": str(path), "comment": "root@griefling"})
    assert res.changed
    assert res.result["age_recipient"] == first.result["age_recipient"]
    out = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == res.result["public_key"]
    assert res.result["public_key"].endswith(" root@griefling")


def _write(path, text):
    path.write_text(text)
    return path


def _rsa_key(tmp_path):
    path = tmp_path / "rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(path)], check=True)
    return path


def _encrypted_key(tmp_path):
    path = tmp_path / "enc"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "sekrit", "-f", str(path)], check=True)
    return path


@pytest.mark.parametrize(
    ("setup", "module", "extra", "why"),
    [
        (_rsa_key, "ssh_keypair", {}, "RSA"),
        (_rsa_key, "age_keypair", {"ssh_key_path": True}, "RSA"),
        (_encrypted_key, "age_keypair", {"ssh_key_path": True}, "encrypted: give its passphrase"),
        (lambda t: _write(t / "empty", ""), "age_keypair", {}, "no age identity"),
        (lambda t: _write(t / "trunc", "AGE-SECRET-KEY-1QQQQ\n"), "age_keypair", {}, "line 1"),
    ],
)
def test_bad_input_is_a_one_line_error_and_writes_nothing(tmp_path, setup, module, extra, why):
    src = setup(tmp_path)
    if extra.get("ssh_key_path"):
        args = {"path": str(tmp_path / "out" / "key.txt"), "ssh_key_path": str(src)}
    else:
        args = {"path": str(src)}
    before = _snapshot(tmp_path)
    res = run_module_inproc(module, args)
    assert res.failed
    assert why in res.msg
    assert "\n" not in res.msg and "Traceback" not in res.msg
    assert _snapshot(tmp_path) == before
    _assert_no_secrets(res)


def test_verbose_run_prints_no_private_material(tmp_path):
    for module in ("age_keypair", "ssh_keypair"):
        res = run_module(module, {"path": str(tmp_path / module)}, verbosity=4, diff=True)
        assert res.changed
        _assert_no_secrets(res)


@pytest.mark.parametrize("module, fields, what", [
    ("age_keypair", ("recipient",), "age identity"),
    ("ssh_keypair", ("public_key", "age_recipient"), "ssh key"),
])
def test_check_mode_says_what_would_be_generated_never_a_made_up_key(tmp_path, module, fields, what):
    # Issue 17: check mode returned a random recipient that the real run would never produce.
    args = {"path": str(tmp_path / "key")}
    check = run_module_inproc(module, args, check=True, diff=True)
    assert check.changed and not check.failed, check.result
    assert check.result["generated"] == [what]
    for f in fields:
        assert check.result[f] == f"(a new {what} would be generated)"
    shown = " ".join([check.stdout, *(str(v) for v in check.result["diff"].values())])
    assert "age1" not in shown and "ssh-ed25519" not in shown
    real = run_module_inproc(module, args)
    assert real.result["generated"] == [what]
    assert real.result[fields[-1]].startswith("age1")
    # Once the key exists, check mode shows the real one: it is what the next real run reports.
    again = run_module_inproc(module, args, check=True)
    assert not again.changed and again.result["generated"] == []
    assert [again.result[f] for f in fields] == [real.result[f] for f in fields]


def test_check_mode_shows_a_derived_recipient(tmp_path):
    # Derived from an existing SSH key, the recipient is the same in check mode and in the real run.
    host = tmp_path / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host)], check=True)
    args = {"path": str(tmp_path / "key.txt"), "ssh_key_path": str(host)}
    check = run_module_inproc("age_keypair", args, check=True)
    assert check.changed and check.result["generated"] == [] and not (tmp_path / "key.txt").exists()
    assert check.result["recipient"] == age.ssh_public_key_to_recipient(
        (tmp_path / "ssh_host_ed25519_key.pub").read_text())
    assert run_module_inproc("age_keypair", args).result["recipient"] == check.result["recipient"]
