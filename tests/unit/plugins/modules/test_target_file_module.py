"""nixfleet.sops.target_file through real Ansible: src via the action plugin, check and diff mode, no leaks."""

from __future__ import annotations

import os
import stat

import pytest

from tests.lib.inproc import run_module_inproc
from tests.lib.runner import run_module

KEY = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ\n"


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "host"
    (root / "home" / "rain").mkdir(parents=True)
    os.chmod(root / "home" / "rain", 0o700)
    src = tmp_path / "staged-keys.txt"
    src.write_text(KEY)
    src.chmod(0o600)
    return {"root": str(root), "src": str(src)}


def test_src_check_mode_diff_and_idempotence(tree) -> None:
    args = {"root": tree["root"], "path": "/home/rain/keys.txt", "src": tree["src"], "mode": "0600"}
    dest = os.path.join(tree["root"], "home/rain/keys.txt")
    runs = [run_module("target_file", args, check=True, diff=True, verbosity=3),
            run_module("target_file", args, diff=True, verbosity=3),
            run_module("target_file", args, check=True, diff=True, verbosity=3),
            run_module("target_file", args, diff=True, verbosity=3)]
    assert [r.changed for r in runs] == [True, True, False, False], [r.msg for r in runs]
    assert not any(r.failed for r in runs)
    for r in runs:
        assert "AGE-SECRET-KEY" not in r.stdout + r.stderr
    assert runs[0].result["diff"]["before"] == {"path": "/home/rain/keys.txt", "state": "absent"}
    assert runs[1].result["diff"]["after"]["mode"] == "0600" and runs[1].result["mode"] == "0600"
    with open(dest) as fh:
        assert fh.read() == KEY  # the trailing newline too: no lookup('file') strip on the way
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o600


def test_content_option_is_no_log(tree) -> None:
    res = run_module("target_file", {"root": tree["root"], "path": "/home/rain/k", "content": KEY, "mode": "0640"},
                     verbosity=3)
    assert res.changed and "AGE-SECRET-KEY" not in res.stdout + res.stderr
    assert stat.S_IMODE(os.stat(os.path.join(tree["root"], "home/rain/k")).st_mode) == 0o640


def test_a_symlinked_parent_fails_the_task_naming_it(tree, tmp_path) -> None:
    os.symlink(tmp_path, os.path.join(tree["root"], "home/rain/.config"))
    res = run_module_inproc("target_file", {"root": tree["root"], "path": "/home/rain/.config",
                                            "state": "directory", "mode": "0700"})
    assert res.failed and "/home/rain/.config is a symbolic link" in res.msg and "refusing to follow it" in res.msg
    # src goes through the action plugin: real Ansible.
    res = run_module("target_file", {"root": tree["root"], "path": "/home/rain/.config/k", "src": tree["src"],
                                     "mode": "0600"})
    assert res.failed and "/home/rain/.config is a symbolic link" in res.msg
    assert not os.path.exists(tmp_path / "k")


def test_src_problems_are_reported_by_the_action_plugin(tree) -> None:
    base = {"root": tree["root"], "path": "/home/rain/k", "mode": "0600"}
    res = run_module("target_file", dict(base, src=tree["src"] + ".missing"))  # the action plugin: real Ansible
    assert res.failed and "cannot read it on the controller" in res.msg
    res = run_module("target_file", dict(base, src=tree["src"], content="x"))
    assert res.failed and "mutually exclusive" in res.msg
