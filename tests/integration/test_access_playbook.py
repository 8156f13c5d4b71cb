"""playbooks/access.yml end to end: a real inventory file, a git secrets repo, the real sops as oracle."""

from __future__ import annotations

import os
import subprocess

import yaml
from ansible_collections.nixfleet.sops.plugins.module_utils import access
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig

from tests.lib.access_fleet import CATEGORIES, EXPECTED, GROUPS, HOST_SETTINGS, make_access_repo, tree
from tests.lib.runner import run_playbook
from tests.lib.secrets_repo import sops_decrypt


def git(repo, *args):
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout.strip()


def write_inventory(path, repo, groups, categories=None):
    """A user's inventory: categories in all.vars, groups under nixos, per-host nixfleet_categories."""
    categories = CATEGORIES if categories is None else categories
    children = {g: {"hosts": {h: ({"nixfleet_categories": HOST_SETTINGS[h]} if h in HOST_SETTINGS else None)
                              for h in hs}} for g, hs in groups.items()}
    inv = {"all": {
        "vars": {"nixfleet_secrets_repo": repo.path, "nixfleet_identity_files": [repo.keyfile("admin")],
                 "nixfleet_admin_anchors": ["admin"], "nixfleet_secret_categories": categories,
                 "nixfleet_primary_user": "rain"},
        "hosts": {"localhost": {"ansible_connection": "local",
                                "ansible_python_interpreter": "{{ ansible_playbook_python }}"}},
        "children": {"nixos": {"children": children}},
    }}
    with open(path, "w") as fh:
        yaml.safe_dump(inv, fh, sort_keys=False)
    return path


def managed(repo):
    return {n: r.anchors for n, r in access.managed_rules(SopsConfig.load(repo.file(".sops.yaml"))).items()}


def test_access_playbook_inventory_to_rules_move_a_host_rotate(tmp_path, sops_bin):
    repo = make_access_repo(str(tmp_path))
    inv = write_inventory(str(tmp_path / "inventory.yml"), repo, GROUPS)
    head = git(repo.path, "rev-parse", "HEAD")
    before = tree(repo)

    # Check mode writes nothing, and shows the .sops.yaml diff and the recipients per file.
    check = run_playbook("access.yml", inventory=inv, check=True, diff=True)
    assert check.rc == 0, check.stdout + check.stderr
    assert tree(repo) == before and git(repo.path, "rev-parse", "HEAD") == head
    assert "+  # managed by nixfleet.sops access: category desktop" in check.stdout
    assert "+sops/desktop.yaml: d1 (" not in check.stdout and "+sops/desktop.yaml: d1\n" in check.stdout
    assert "5 managed rules would be changed" in check.stdout

    first = run_playbook("access.yml", inventory=inv)
    assert first.rc == 0, first.stdout + first.stderr
    assert first.changed() == 2  # the access task and the commit
    assert managed(repo) == EXPECTED
    assert git(repo.path, "rev-list", "--count", f"{head}..HEAD") == "1"
    assert git(repo.path, "log", "-1", "--format=%s") == (
        "chore(sops): access from the inventory: 5 rules, 5 files (0 data keys rotated)")
    assert git(repo.path, "status", "--porcelain") == ""

    again = run_playbook("access.yml", inventory=inv)
    assert again.rc == 0 and again.changed() == 0, again.stdout
    settled = tree(repo)
    head = git(repo.path, "rev-parse", "HEAD")

    # Move d2 from desktops to servers in the inventory.
    groups = {"desktops": ["d1"], "servers": ["s1", "s2", "d2"], "vms": ["v1", "v2"]}
    write_inventory(inv, repo, groups)
    check = run_playbook("access.yml", inventory=inv, check=True, diff=True)
    assert check.rc == 0, check.stdout + check.stderr
    assert tree(repo) == settled and git(repo.path, "rev-parse", "HEAD") == head
    assert "-sops/desktop.yaml: d2\n" in check.stdout and "+sops/server.yaml: d2\n" in check.stdout
    assert "+sops/cli.yaml: data key (new)" in check.stdout

    moved = run_playbook("access.yml", inventory=inv)
    assert moved.rc == 0, moved.stdout + moved.stderr
    after = tree(repo)
    touched = {rel for rel in settled if after[rel] != settled[rel]}
    assert touched == {".sops.yaml", "sops/desktop.yaml", "sops/server.yaml", "sops/network.yaml", "sops/cli.yaml"}
    assert set(git(repo.path, "show", "--name-only", "--format=", "HEAD").split()) == touched
    assert git(repo.path, "rev-list", "--count", f"{head}..HEAD") == "1"
    assert managed(repo)["desktop"] == ["admin", "break_glass", "d1"]
    assert managed(repo)["server"] == ["admin", "break_glass", "s1", "s2", "d2"]

    # The real sops, with d2's key alone: what it gained and kept opens, what it lost does not.
    d2 = repo.keyfile("d2")
    for rel, readable in (("sops/server.yaml", True), ("sops/network.yaml", True), ("sops/shared.yaml", True),
                          ("sops/d2.yaml", True), ("sops/desktop.yaml", False), ("sops/cli.yaml", False)):
        out = sops_decrypt(sops_bin, repo.file(rel), d2)
        assert (out.returncode == 0) == readable, (rel, out.stderr)
    # The files it lost got a new data key: the old version (which d2 could open) no longer matches them.
    for rel in ("sops/desktop.yaml", "sops/cli.yaml"):
        old_path = str(tmp_path / os.path.basename(rel))
        with open(old_path, "w") as fh:
            fh.write(git(repo.path, "show", f"{head}:{rel}") + "\n")
        assert sops_decrypt(sops_bin, old_path, d2).returncode == 0  # d2 could read it, and may keep its key
        old, new = yaml.safe_load(open(old_path)), yaml.safe_load(open(repo.file(rel)))
        assert new["sops"]["mac"] != old["sops"]["mac"]
        assert new["sops"]["lastmodified"] != old["sops"]["lastmodified"]
        spliced = {**new, "sops": {**new["sops"], "age": old["sops"]["age"]}}  # the new file, the old data key
        with open(old_path, "w") as fh:
            yaml.safe_dump(spliced, fh, sort_keys=False)
        assert sops_decrypt(sops_bin, old_path, d2).returncode != 0
        assert sops_decrypt(sops_bin, repo.file(rel), repo.keyfile("d1")).returncode == 0
    # Files only gaining a reader keep their data key (same mac, lastmodified).
    for rel in ("sops/server.yaml", "sops/network.yaml"):
        old = yaml.safe_load(git(repo.path, "show", f"{head}:{rel}"))
        assert engine.load(repo.file(rel)).metadata.mac == old["sops"]["mac"]

    final = run_playbook("access.yml", inventory=inv)
    assert final.rc == 0 and final.changed() == 0, final.stdout
    assert tree(repo) == after


def test_access_playbook_refuses_a_hand_written_rule_and_writes_nothing(tmp_path):
    repo = make_access_repo(str(tmp_path))
    cats = {**CATEGORIES, "cli": {**CATEGORIES["cli"], "path_regex": r"sops/d1\.yaml$"}}
    inv = write_inventory(str(tmp_path / "inventory.yml"), repo, GROUPS, cats)
    before = tree(repo)
    res = run_playbook("access.yml", inventory=inv)
    assert res.rc != 0
    assert "category cli has path_regex 'sops/d1\\\\.yaml$', which the hand-written rule" in res.stdout
    assert tree(repo) == before


def test_audit_playbook_reports_access_drift(tmp_path):
    repo = make_access_repo(str(tmp_path))
    inv = write_inventory(str(tmp_path / "inventory.yml"), repo, GROUPS)
    assert run_playbook("access.yml", inventory=inv).rc == 0
    extra = {"nixfleet_audit_report": str(tmp_path / "audit.html")}
    clean = run_playbook("audit.yml", extra, inventory=inv)
    assert clean.rc == 0, clean.stdout + clean.stderr
    assert "access in step with the inventory" in clean.stdout
    write_inventory(inv, repo, {"desktops": ["d1"], "servers": ["s1", "s2", "d2"], "vms": ["v1", "v2"]})
    before = tree(repo)
    drift = run_playbook("audit.yml", extra, inventory=inv)
    assert drift.rc == 0, drift.stdout + drift.stderr
    assert "category desktop (sops/desktop\\\\.yaml$): the managed rule would be updated: removed d2" in drift.stdout
    assert "sops/server.yaml: recipients differ from the inventory's model (missing: d2; extra: none)" in drift.stdout
    assert tree(repo) == before
