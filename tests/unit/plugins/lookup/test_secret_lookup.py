"""lookup('nixfleet.sops.secret', …) through real Ansible, on files written by the real sops binary."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from ansible_collections.nixfleet.sops.plugins.module_utils import age

from tests.lib.runner import run_module, run_playbook

SECRET = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"
DOC = {"keys": {"age": SECRET}, "port": 8443, "wifi": {"home": "hunter2", "guest": "welcome"},
       "users": [{"name": "ta", "password": "pw-ta"}]}


def sops_encrypt(sops_bin: str, cwd: str, rel: str, data: dict, recipients: list[str]) -> str:
    """Write ``rel`` under ``cwd`` encrypted by the real sops for ``recipients``."""
    target = os.path.join(cwd, rel)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    plain = os.path.join(cwd, "plain-" + os.path.basename(rel))
    with open(plain, "w") as fh:
        yaml.safe_dump(data, fh)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPS_AGE")}
    env.update({"SOPS_DISABLE_VERSION_CHECK": "1"})
    proc = subprocess.run([sops_bin, "encrypt", "--age", ",".join(recipients), plain],
                          capture_output=True, text=True, cwd=cwd, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    os.unlink(plain)
    with open(target, "w") as fh:
        fh.write(proc.stdout)
    return target


@pytest.fixture
def world(tmp_path, sops_bin):
    admin, other = age.generate_identity(), age.generate_identity()
    keyfile = tmp_path / "admin-keys.txt"
    keyfile.write_text(age.format_identity_file(admin))
    otherfile = tmp_path / "other-keys.txt"
    otherfile.write_text(age.format_identity_file(other))
    path = sops_encrypt(sops_bin, str(tmp_path), "sops/griefling.yaml", DOC, [age.recipient_from_identity(admin)])
    return {"dir": tmp_path, "path": path, "keyfile": str(keyfile), "otherfile": str(otherfile), "admin": admin}


def debug(expr: str, env: dict[str, str] | None = None):
    return run_module("ansible.builtin.debug", {"msg": "{{ " + expr + " }}"}, env=env)


def test_value_at_key_path(world):
    r = debug(f"lookup('nixfleet.sops.secret', '{world['path']}', key='keys/age', "
              f"identity_files=['{world['keyfile']}'])")
    assert not r.failed, r.msg
    assert r.result["msg"] == SECRET


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("['wifi', 'guest']", "welcome"),
        ("'[\"users\"][0][\"name\"]'", "ta"),
        ("['users', 0, 'password']", "pw-ta"),
        ("'wifi'", {"home": "hunter2", "guest": "welcome"}),
    ],
)
def test_key_path_forms(world, key, expected):
    r = debug(f"lookup('nixfleet.sops.secret', '{world['path']}', key={key}, identity_files=['{world['keyfile']}'])")
    assert not r.failed, r.msg
    assert r.result["msg"] == expected


def test_whole_document_and_identity_from_environment(world):
    # No identity option: identities are searched as sops does (SOPS_AGE_KEY_FILE here).
    r = debug(f"lookup('nixfleet.sops.secret', '{world['path']}') | to_json",
              env={"SOPS_AGE_KEY_FILE": world["keyfile"]})
    assert not r.failed, r.msg
    assert json.loads(r.result["msg"]) == DOC
    r = debug(f"lookup('nixfleet.sops.secret', '{world['path']}', key='port')",
              env={"SOPS_AGE_KEY": world["admin"]})
    assert not r.failed, r.msg
    assert r.result["msg"] in (8443, "8443")


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("missing_key", ["no value at key path 'wifi/office'"]),
        ("through_scalar", ["no value at key path 'wifi/home/deeper'"]),
        ("wrong_identity", ["no identity can open the data key"]),
        ("bad_key", ["invalid key path"]),
        ("missing_file", ["sops/nothere.yaml", "sops file not found"]),
        ("not_sops", ["not a sops-encrypted file"]),
    ],
)
def test_errors_are_one_line_naming_file_and_key_never_a_value(world, case, fragments):
    path, key, idf = world["path"], "wifi/office", world["keyfile"]
    if case == "through_scalar":
        key = "wifi/home/deeper"
    elif case == "wrong_identity":
        idf = world["otherfile"]
    elif case == "bad_key":
        key = "wifi//home"
    elif case == "missing_file":
        path = str(world["dir"] / "sops" / "nothere.yaml")
    elif case == "not_sops":
        path = str(world["dir"] / "plain.yaml")
        with open(path, "w") as fh:
            fh.write("wifi:\n  office: plain-text-value\n")
    r = debug(f"lookup('nixfleet.sops.secret', '{path}', key='{key}', identity_files=['{idf}'])")
    assert r.failed
    assert "lookup plugin 'nixfleet.sops.secret' failed" in r.msg
    for f in fragments:
        assert f in r.msg, r.msg
    if case != "missing_file":
        assert path in r.msg
    assert "\n" not in r.msg and "Traceback" not in r.msg
    for value in ("hunter2", "welcome", SECRET, "AGE-SECRET-KEY-", "plain-text-value"):
        assert value not in r.stdout + r.stderr


def test_playbook_relative_paths(world, tmp_path):
    """Relative to the playbook directory, and found in files/ like the file lookup."""
    files = tmp_path / "files"
    files.mkdir()
    os.rename(world["path"], files / "moved.yaml")
    # Put back a copy at the original place too: both lookups must resolve.
    with open(files / "moved.yaml") as src, open(world["path"], "w") as dst:
        dst.write(src.read())
    out = tmp_path / "out.json"
    play = tmp_path / "play.yml"
    play.write_text(yaml.safe_dump([{
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable, "idf": world["keyfile"]},
        "tasks": [
            {"name": "read", "ansible.builtin.copy": {
                "content": "{{ {'age': lookup('nixfleet.sops.secret', 'sops/griefling.yaml', key='keys/age', "
                           "identity_files=[idf]), 'guest': lookup('nixfleet.sops.secret', 'moved.yaml', "
                           "key=['wifi', 'guest'], identity_files=[idf])} | to_json }}",
                "dest": str(out), "mode": "0600"},
             "no_log": True},
        ],
    }], sort_keys=False))
    run = run_playbook(str(play), inventory="localhost,", verbosity=3)
    assert run.rc == 0, run.stdout + run.stderr
    assert json.loads(out.read_text()) == {"age": SECRET, "guest": "welcome"}
    assert SECRET not in run.stdout + run.stderr
