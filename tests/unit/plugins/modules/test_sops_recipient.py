"""nixfleet.sops.sops_recipient through real ansible-playbook (check, diff, idempotence, errors)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pyrage
import pytest

from tests.lib.inproc import run_module_inproc
from tests.lib.runner import ansible_env, run_module

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures", "sops_config")


def new_recipient() -> str:
    return str(pyrage.x25519.Identity.generate().to_public())


@pytest.fixture
def cfg(tmp_path):
    dst = tmp_path / ".sops.yaml"
    shutil.copy(os.path.join(FIXTURES, "mapping_groups.yaml"), dst)
    return dst


def state_of(path) -> tuple[bytes, int]:
    return path.read_bytes(), os.stat(path).st_mtime_ns


def test_add_host_check_real_check_real(cfg):
    args = {
        "path": str(cfg),
        "group": "hosts",
        "name": "gusto",
        "recipient": new_recipient(),
        "rules": [r"sops/shared\.yaml$"],
    }
    before = state_of(cfg)
    r = run_module("sops_recipient", args, check=True, diff=True, verbosity=3)
    assert not r.failed, r.msg
    assert r.changed
    assert state_of(cfg) == before  # check mode writes nothing
    assert r.result["diff"]["before"] == before[0].decode()
    assert f"- &gusto {args['recipient']}" in r.result["diff"]["after"]
    assert r.result["diff"]["before_header"] == str(cfg)

    r = run_module("sops_recipient", args, diff=True, verbosity=3)
    assert r.changed and not r.failed
    assert r.result["recipient"] == args["recipient"]
    assert r.result["rules"] == [r"sops/shared\.yaml$"]
    text = cfg.read_text()
    assert f"    - &gusto {args['recipient']}\n" in text
    assert "          - *gusto\n" in text
    assert r.result["diff"]["after"] == text

    after = state_of(cfg)
    r = run_module_inproc("sops_recipient", args, check=True)
    assert not r.changed and not r.failed
    r = run_module_inproc("sops_recipient", args)
    assert not r.changed and not r.failed
    assert state_of(cfg) == after


def test_update_and_remove(cfg):
    new = new_recipient()
    r = run_module_inproc("sops_recipient", {"path": str(cfg), "group": "hosts", "name": "ghost", "recipient": new})
    assert r.changed and r.result["recipient"] == new
    before = state_of(cfg)
    r = run_module_inproc("sops_recipient", {"path": str(cfg), "name": "ghost", "state": "absent"}, check=True)
    assert r.changed and state_of(cfg) == before
    r = run_module_inproc("sops_recipient", {"path": str(cfg), "name": "ghost", "state": "absent"})
    assert r.changed
    assert "ghost" not in cfg.read_text().replace("# the laptop", "")
    r = run_module_inproc("sops_recipient", {"path": str(cfg), "name": "ghost", "state": "absent"})
    assert not r.changed and not r.failed


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        ({"name": "../evil", "group": "hosts", "recipient": "VALID"}, ["'../evil'", "letter or digit"]),
        ({"name": "a*b", "group": "hosts", "recipient": "VALID"}, ["'a*b'", "letter or digit"]),
        ({"name": "a b", "group": "hosts", "recipient": "VALID"}, ["'a b'", "letter or digit"]),
        ({"name": "web", "group": "hosts", "recipient": "CORRUPT"}, ["anchor 'web'", "checksum"]),
        ({"name": "web", "group": "hosts", "recipient": "VALID", "rules": ["nope"]}, ["'nope'", "no creation rule"]),
        ({"name": "ta", "state": "absent"}, ["line 26", "'ta'", "'solo'", "no recipient"]),
    ],
)
def test_bad_input_fails_cleanly(cfg, args, expect):
    if cfg.exists():
        # A rule only ta can read makes removing ta impossible.
        text = cfg.read_text() + "  - path_regex: solo\n    age: [*ta]\n"
        cfg.write_text(text)
    valid = new_recipient()
    recipient = args.get("recipient")
    if recipient == "VALID":
        args["recipient"] = valid
    elif recipient == "CORRUPT":
        i = len(valid) // 2
        args["recipient"] = valid[:i] + ("q" if valid[i] != "q" else "p") + valid[i + 1 :]
    before = state_of(cfg)
    r = run_module_inproc("sops_recipient", {"path": str(cfg), **args})
    assert r.failed
    assert "Traceback" not in r.msg and "\n" not in r.msg
    assert str(cfg) in r.msg
    for e in expect:
        assert e in r.msg, r.msg
    assert state_of(cfg) == before


def test_yaml_syntax_error(cfg):
    cfg.write_text("keys:\n  hosts:\n    - &a x: y: z\n")
    before = state_of(cfg)
    r = run_module_inproc("sops_recipient",
                          {"path": str(cfg), "group": "hosts", "name": "b", "recipient": new_recipient()})
    assert r.failed
    assert f"{cfg}, line 3" in r.msg and "YAML syntax error" in r.msg
    assert state_of(cfg) == before


def test_alias_to_missing_anchor(cfg):
    cfg.write_text(cfg.read_text().replace("- *ghost", "- *ghosty"))
    before = state_of(cfg)
    r = run_module_inproc(
        "sops_recipient",
        {
            "path": str(cfg),
            "group": "hosts",
            "name": "b",
            "recipient": new_recipient(),
            "rules": [r"sops/shared\.yaml$"],
        },
    )
    assert r.failed
    assert "line 18" in r.msg and "*ghosty" in r.msg
    assert state_of(cfg) == before


def test_missing_file(tmp_path):
    path = tmp_path / ".sops.yaml"
    r = run_module_inproc(
        "sops_recipient", {"path": str(path), "group": "users", "name": "alice", "recipient": new_recipient()}
    )
    assert r.failed and "no such file" in r.msg
    r = run_module_inproc(
        "sops_recipient",
        {"path": str(path), "group": "users", "name": "alice", "recipient": new_recipient(), "create": True},
    )
    assert r.changed and path.exists()


def test_ansible_doc_renders(repo_root):
    for module in ("sops_recipient", "sops_creation_rule"):
        proc = subprocess.run(
            [
                os.path.join(
                    os.path.dirname(sys.executable),
                    "ansible-doc",
                ),
                f"nixfleet.sops.{module}",
            ],
            capture_output=True,
            text=True,
            env=ansible_env(),
            cwd=repo_root, check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "WARNING" not in proc.stderr.upper(), proc.stderr
        assert "check_mode" in proc.stdout and "diff_mode" in proc.stdout


def test_six_parallel_runs_all_land(cfg):
    """Parallel runs queue on the repository lock: no run loses another's anchor."""
    from concurrent.futures import ThreadPoolExecutor

    names = [f"par{i}" for i in range(6)]

    def add(name: str):  # separate processes (the CLI): the lock is per process
        return run_module(
            "sops_recipient", {"path": str(cfg), "group": "hosts", "name": name, "recipient": new_recipient()}
        )

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(add, names))
    assert all(r.changed and not r.failed for r in results), [r.msg for r in results]
    from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig

    anchors = SopsConfig.load(str(cfg)).anchors()
    assert all(n in anchors for n in names)


def test_check_mode_takes_no_lock(cfg):
    # A held lock makes a real run wait (and give up after lock_timeout); check mode does not need it.
    from ansible_collections.nixfleet.sops.plugins.module_utils.fsutil import repo_lock

    args = {"path": str(cfg), "group": "hosts", "name": "gusto", "recipient": new_recipient(), "lock_timeout": 1}
    before = state_of(cfg)
    with repo_lock(str(cfg.parent), purpose="test holds it"):
        # Other processes (the CLI): the lock is per process.
        checked = run_module("sops_recipient", args, check=True)
        real = run_module("sops_recipient", args)
    assert checked.changed and not checked.failed, checked.msg
    assert real.failed and "test holds it" in real.msg, real.msg
    assert state_of(cfg) == before


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("sops_recipient", {"group": "hosts", "name": "gusto", "recipient": new_recipient()}),
        ("sops_creation_rule", {"path_regex": "x", "anchors": ["a"]}),
    ],
)
def test_alias_bomb_fails_fast_and_writes_nothing(tmp_path, module, args):
    import time

    lines = ['a: &a ["lol"' + ', "lol"' * 8 + "]"]
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    lines += ["creation_rules:", "  - path_regex: x", "    age: *i"]
    cfg = tmp_path / ".sops.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    before = state_of(cfg)
    t0 = time.monotonic()
    r = run_module_inproc(module, {"path": str(cfg), **args})
    assert time.monotonic() - t0 < 30  # an Ansible run; the parse itself refuses in milliseconds
    assert r.failed and "aliases expand to more than" in r.msg and str(cfg) in r.msg, r.msg
    assert "\n" not in r.msg
    assert state_of(cfg) == before
