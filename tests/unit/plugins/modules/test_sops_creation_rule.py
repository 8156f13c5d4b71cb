"""nixfleet.sops.sops_creation_rule through real ansible-playbook."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.lib.inproc import run_module_inproc
from tests.lib.runner import run_module

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures", "sops_config")


@pytest.fixture
def cfg(tmp_path):
    dst = tmp_path / ".sops.yaml"
    shutil.copy(os.path.join(FIXTURES, "heavy_comments.yaml"), dst)
    return dst


def state_of(path) -> tuple[bytes, int]:
    return path.read_bytes(), os.stat(path).st_mtime_ns


def test_create_rule_check_real_check_real(cfg):
    args = {"path": str(cfg), "path_regex": r"sops/gusto\.yaml$", "anchors": ["ta", "gusto"]}
    before = state_of(cfg)
    r = run_module("sops_creation_rule", args, check=True, diff=True, verbosity=3)
    assert r.changed and not r.failed, r.msg
    assert state_of(cfg) == before
    assert "  - path_regex: 'sops/gusto\\.yaml$'\n" in r.result["diff"]["after"]

    r = run_module_inproc("sops_creation_rule", args)
    assert r.changed
    assert r.result["rule"]["anchors"] == ["ta", "gusto"]
    assert len(r.result["rule"]["recipients"]) == 2
    after = state_of(cfg)
    assert run_module_inproc("sops_creation_rule", args, check=True).changed is False
    assert run_module_inproc("sops_creation_rule", args).changed is False
    assert state_of(cfg) == after


def test_exclusive_and_absent(cfg):
    args = {"path": str(cfg), "path_regex": r"sops/shared\.yaml$", "anchors": ["ta", "genoa"], "exclusive": True}
    r = run_module_inproc("sops_creation_rule", args)
    assert r.changed and r.result["rule"]["anchors"] == ["ta", "genoa"]
    assert "      - *gusto\n" not in cfg.read_text()
    assert run_module_inproc("sops_creation_rule", args).changed is False
    absent = {"path": str(cfg), "path_regex": r"sops/genoa\.yaml$", "state": "absent"}
    before = state_of(cfg)
    assert run_module_inproc("sops_creation_rule", absent, check=True).changed is True
    assert state_of(cfg) == before
    assert run_module_inproc("sops_creation_rule", absent).changed is True
    assert "genoa\\.yaml" not in cfg.read_text()
    assert run_module_inproc("sops_creation_rule", absent).changed is False


def test_key_groups_and_shamir(tmp_path):
    cfg = tmp_path / ".sops.yaml"
    shutil.copy(os.path.join(FIXTURES, "shamir_groups.yaml"), cfg)
    args = {
        "path": str(cfg),
        "path_regex": "secrets/db/.*",
        "key_groups": [["alice", "bob"], ["vault"]],
        "shamir_threshold": 2,
    }
    r = run_module_inproc("sops_creation_rule", args)
    assert r.changed and not r.failed, r.msg
    assert r.result["rule"]["shamir_threshold"] == 2
    assert len(r.result["rule"]["key_groups"]) == 2
    assert run_module_inproc("sops_creation_rule", args).changed is False


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        ({"path_regex": "a(?=b)", "anchors": ["ta"]}, ["lookahead", "RE2"]),
        ({"path_regex": "x", "anchors": ["nobody"]}, ["'nobody' is not defined"]),
        ({"path_regex": "x", "anchors": ["a b"]}, ["'a b'", "letter or digit"]),
        ({"path_regex": "x", "anchors": []}, ["at least one anchor"]),
        (
            {"path_regex": r"sops/genoa\.yaml$", "anchors": ["gusto"], "exclusive": True, "key_groups": [["ta"]]},
            ["mutually exclusive"],
        ),
    ],
)
def test_bad_input(cfg, args, expect):
    before = state_of(cfg)
    r = run_module_inproc("sops_creation_rule", {"path": str(cfg), **args})
    assert r.failed
    for e in expect:
        assert e in r.msg, r.msg
    assert "Traceback" not in r.msg
    assert state_of(cfg) == before
