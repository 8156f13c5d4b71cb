"""nixfleet.sops.sops_access through real Ansible: check/real/check/real, errors, drift_only, no key in output."""

from __future__ import annotations

import pytest

from tests.lib.access_fleet import CATEGORIES, EXPECTED, HOST_SETTINGS, inventory_groups, make_access_repo, tree
from tests.lib.inproc import run_module_inproc
from tests.lib.runner import run_module


@pytest.fixture
def repo(tmp_path):
    return make_access_repo(str(tmp_path), git=False)


def args(repo, **kw):
    return {"repo": repo.path, "categories": CATEGORIES, "groups": inventory_groups(),
            "host_categories": HOST_SETTINGS, "admin_anchors": ["admin"], "identity_files": [repo.keyfile("admin")],
            **kw}


def test_check_real_check_real(repo):
    before = tree(repo)
    check = run_module("sops_access", args(repo), check=True, diff=True, verbosity=3)
    assert check.changed and not check.failed, check.msg
    assert tree(repo) == before
    assert check.result["counts"] == {"categories": 5, "rules_changed": 5, "files_rekeyed": 5, "files_rotated": 0,
                                      "hosts_without_anchor": 0}
    assert [d.get("before_header", "").endswith(".sops.yaml") for d in check.result["diff"]] == [True, False]
    real = run_module_inproc("sops_access", args(repo))
    assert real.changed and real.result["changed_files"] == check.result["changed_files"]
    assert {r["category"]: r["added"] for r in real.result["rules"]} == EXPECTED
    assert run_module_inproc("sops_access", args(repo), check=True).changed is False
    again = run_module_inproc("sops_access", args(repo))
    assert again.changed is False and again.result["changed_files"] == []
    for r in (check, real, again):
        assert "AGE-SECRET-KEY" not in r.stdout + r.stderr


def test_bad_model_fails_with_one_line_and_writes_nothing(repo):
    before = tree(repo)
    r = run_module_inproc("sops_access", args(repo, categories={"desktop": {"path_regex": "x", "groups": ["desktop"]}}))
    assert r.failed
    assert r.msg.startswith("nixfleet_secret_categories.desktop.groups: no inventory group 'desktop'")
    assert "\n" not in r.msg and "Traceback" not in r.stdout + r.stderr
    assert tree(repo) == before


def test_drift_only_needs_no_identity_and_changes_nothing(repo):
    before = tree(repo)
    r = run_module_inproc("sops_access", {**args(repo, drift_only=True), "identity_files": []})
    assert not r.failed and r.changed is False, r.msg
    assert sorted({f["kind"] for f in r.result["findings"]}) == ["access_file_drift", "access_rule_missing"]
    assert r.msg == "10 access findings"
    assert tree(repo) == before
