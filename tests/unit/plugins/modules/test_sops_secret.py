"""nixfleet.sops.sops_secret through real Ansible: create for the rule, idempotence, unset, diff, leaks, errors."""

from __future__ import annotations

import os

import pytest
import yaml
from ansible_collections.nixfleet.sops.plugins.module_utils import age
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine

from tests.lib.inproc import run_module_inproc
from tests.lib.runner import run_module
from tests.lib.secrets_repo import make_repo, sops_decrypt


@pytest.fixture
def repo(tmp_path):
    return make_repo(str(tmp_path), hosts=("alpha", "beta"), git=False)


def state_of(path: str) -> tuple[bytes, int]:
    with open(path, "rb") as fh:
        return fh.read(), os.stat(path).st_mtime_ns


def file_recipients(path: str) -> set[str]:
    """Recipients as written in the file's metadata (read with PyYAML, not the engine)."""
    with open(path) as fh:
        return {s["recipient"] for s in yaml.safe_load(fh)["sops"]["age"]}


def test_create_for_rule_check_run_check_run(repo, sops_bin, tmp_path):
    identity = age.generate_identity()
    value_file = tmp_path / "alpha-age.txt"
    value_file.write_text(age.format_identity_file(identity))
    path = repo.file("sops/alpha-1.yaml")
    args = {"path": path, "key": "keys/age", "value_file": str(value_file),
            "identity_files": [repo.keyfile("admin")]}

    r = run_module("sops_secret", args, check=True, diff=True, verbosity=3)
    assert not r.failed, r.msg
    assert r.changed and r.result["created"] is True
    assert r.result["key"] == ["keys", "age"] and r.result["path"] == path
    assert r.result["diff"]["after"] == "keys/age: (added)\n"
    assert not os.path.exists(path)  # check mode writes nothing

    r = run_module("sops_secret", args, diff=True, verbosity=3)
    assert not r.failed, r.msg
    assert r.changed and r.result["created"] is True
    for out in (r.stdout, r.stderr):
        assert identity not in out and "AGE-SECRET-KEY-" not in out
    # Exactly the rule's recipients, and the real sops agrees.
    assert file_recipients(path) == {repo.recipient("admin"), repo.recipient("alpha")}
    for anchor in ("admin", "alpha"):
        out = sops_decrypt(sops_bin, path, repo.keyfile(anchor))
        assert out.returncode == 0, out.stderr
        assert yaml.safe_load(out.stdout) == {"keys": {"age": value_file.read_text()}}
    assert sops_decrypt(sops_bin, path, repo.keyfile("beta")).returncode != 0

    after = state_of(path)
    r = run_module_inproc("sops_secret", args, check=True)
    assert not r.failed and not r.changed and r.result["created"] is False
    r = run_module_inproc("sops_secret", args)
    assert not r.failed and not r.changed
    assert state_of(path) == after


def test_set_existing_check_run_check_run_no_leak(repo, sops_bin):
    path = repo.file("sops/alpha.yaml")
    secret = "correct horse battery staple"
    args = {"path": path, "key": ["deploy-keys", "nix-config"], "value": secret,
            "identity_files": [repo.keyfile("admin")]}
    before = state_of(path)

    r = run_module("sops_secret", args, check=True, diff=True, verbosity=3)
    assert not r.failed, r.msg
    assert r.changed and r.result["created"] is False
    assert state_of(path) == before
    assert r.result["diff"]["before"] == ""
    assert r.result["diff"]["after"] == "deploy-keys/nix-config: (added)\n"

    r = run_module("sops_secret", args, diff=True, verbosity=3)
    assert r.changed and not r.failed
    assert secret not in r.stdout and secret not in r.stderr
    out = sops_decrypt(sops_bin, path, repo.keyfile("alpha"))
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["deploy-keys"] == {"nix-config": secret}
    assert yaml.safe_load(out.stdout)["keys"] == {"age": "secret-alpha-0"}

    after = state_of(path)
    for check in (True, False):
        r = run_module_inproc("sops_secret", args, check=check, diff=True)
        assert not r.failed and not r.changed
        assert secret not in r.stdout
    assert state_of(path) == after


def test_change_value_diff_shows_key_paths_only(repo):
    path = repo.file("sops/beta.yaml")
    kf = repo.keyfile("admin")
    first = {"home": "wifi-pass-one", "work": "wifi-pass-two"}
    r = run_module_inproc("sops_secret", {"path": path, "key": "wifi", "value": first, "identity_files": [kf]})
    assert r.changed and not r.failed, r.msg

    second = {"home": "wifi-pass-one", "work": "wifi-pass-three", "cafe": "wifi-pass-four"}
    r = run_module("sops_secret", {"path": path, "key": "wifi", "value": second, "identity_files": [kf]},
                   diff=True, verbosity=3)
    assert r.changed and not r.failed, r.msg
    assert r.result["diff"]["before"] == "wifi/work: (set)\n"
    assert r.result["diff"]["after"] == "wifi/work: (changed)\nwifi/cafe: (added)\n"
    assert "-wifi/work: (set)" in r.stdout and "+wifi/cafe: (added)" in r.stdout
    for v in ("wifi-pass-one", "wifi-pass-three", "wifi-pass-four"):
        assert v not in r.stdout and v not in r.stderr

    r = run_module_inproc("sops_secret", {"path": path, "key": ["keys", "age"], "value": "secret-beta-0",
                                          "identity_files": [kf]}, diff=True)
    assert not r.changed and r.result["diff"]["before"] == r.result["diff"]["after"] == "keys/age: (set)\n"


def test_unset(repo, sops_bin):
    path = repo.file("sops/alpha.yaml")
    args = {"path": path, "key": "keys/age", "state": "absent", "age_keys": [repo.identities["admin"]]}
    before = state_of(path)
    r = run_module_inproc("sops_secret", args, check=True, diff=True)
    assert r.changed and not r.failed, r.msg
    assert r.result["diff"]["before"] == "keys/age: (set)\n"
    assert r.result["diff"]["after"] == "keys/age: (removed)\n"
    assert state_of(path) == before
    for out in (r.stdout, r.stderr):
        assert "AGE-SECRET-KEY-" not in out and "secret-alpha-0" not in out

    r = run_module_inproc("sops_secret", args)
    assert r.changed and not r.failed
    out = sops_decrypt(sops_bin, path, repo.keyfile("alpha"))
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout) == {"host": "alpha", "i": 0, "keys": {}}

    after = state_of(path)
    for check in (True, False):
        r = run_module_inproc("sops_secret", args, check=check)
        assert not r.changed and not r.failed
    assert state_of(path) == after


def test_create_with_explicit_config_and_create_false(repo, tmp_path):
    elsewhere = tmp_path / "elsewhere" / "sops"
    elsewhere.mkdir(parents=True)
    path = str(elsewhere / "beta.yaml")
    r = run_module_inproc("sops_secret", {"path": path, "key": "a", "value": "some-long-value", "create": False})
    assert r.failed and "create=true" in r.msg and not os.path.exists(path)
    r = run_module_inproc("sops_secret", {"path": path, "key": "a", "value": "some-long-value"})
    assert r.failed and "no .sops.yaml was found" in r.msg and path in r.msg
    args = {"path": path, "key": "a", "value": "some-long-value", "config": repo.file(".sops.yaml")}
    r = run_module_inproc("sops_secret", args)
    assert r.changed and not r.failed, r.msg
    assert file_recipients(path) == {repo.recipient("admin"), repo.recipient("beta")}


def _plain(path: str) -> None:
    with open(path, "w") as fh:
        fh.write("password: not-encrypted\n")


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("no_rule", "no creation rule matches 'sops/unknown.yaml'"),
        ("no_identity", "no identity can open the data key"),
        ("not_sops", "not a sops-encrypted file"),
        ("empty_key", "invalid key path: it is empty"),
        ("empty_segment", "is an empty key"),
        ("both_values", "mutually exclusive"),
        ("no_value", "value"),
        ("bad_identity_file", "cannot read identity file"),
    ],
)
def test_bad_input_one_clear_line_file_untouched(repo, case, fragment):
    alpha = repo.file("sops/alpha.yaml")
    args = {"path": alpha, "key": "keys/age", "value": "new-secret-value", "identity_files": [repo.keyfile("admin")]}
    if case == "no_rule":
        args["path"] = repo.file("sops/unknown.yaml")
    elif case == "no_identity":
        args["identity_files"] = [repo.keyfile("beta")]
    elif case == "not_sops":
        args["path"] = repo.file("plain.yaml")
        _plain(args["path"])
    elif case == "empty_key":
        args["key"] = []
    elif case == "empty_segment":
        args["key"] = "keys//age"
    elif case == "both_values":
        args["value_file"] = repo.file("README.md")
    elif case == "no_value":
        del args["value"]
    elif case == "bad_identity_file":
        args["identity_files"] = [repo.file("missing-keys.txt")]
    target = args["path"]
    before = state_of(target) if os.path.exists(target) else None

    r = run_module_inproc("sops_secret", args)
    assert r.failed, r.result
    assert fragment in r.msg, r.msg
    assert "\n" not in r.msg and "Traceback" not in r.msg
    if case not in ("both_values", "no_value"):
        assert target in r.msg or (case == "bad_identity_file" and "missing-keys.txt" in r.msg)
    assert "new-secret-value" not in r.stdout + r.stderr
    assert "AGE-SECRET-KEY-" not in r.stdout + r.stderr
    if before is None:
        assert not os.path.exists(target)
    else:
        assert state_of(target) == before
    # Nothing else in the repository was written either.
    assert sorted(os.listdir(repo.file("sops"))) == ["alpha.yaml", "beta.yaml", "shared.yaml"]
    assert engine.load(alpha).recipients == [[repo.recipient("admin"), repo.recipient("alpha")]]
