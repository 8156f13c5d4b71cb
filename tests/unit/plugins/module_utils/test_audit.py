"""audit.py: each kind of finding, planted one at a time; a clean repository has none."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, audit, keyinventory, sshkeys
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig

from tests.lib.inproc import run_module_inproc
from tests.lib.secrets_repo import make_repo


@pytest.fixture
def repo(tmp_path):
    return make_repo(str(tmp_path), hosts=("alpha", "beta"), git=False)


def kinds(result):
    return sorted({f["kind"] for f in result.findings})


def new_recipient():
    return age.recipient_from_identity(age.generate_identity())


def test_clean_repository_has_no_findings(repo):
    res = audit.run(repo.path, hosts=["alpha", "beta"], max_age_days={"host": 365})
    assert res.findings == []
    assert res.access["sops/alpha.yaml"] == ["admin", "alpha"]
    assert res.access["sops/shared.yaml"] == ["admin", "alpha", "beta"]


def test_drift(repo):
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_recipient("laptop", new_recipient(), group="users")
    cfg.ensure_rule_member(r"sops/shared\.yaml$", "laptop")
    cfg.save()
    res = audit.run(repo.path)
    assert kinds(res) == ["drift"]
    assert "sops/shared.yaml" in res.findings[0]["message"] and "missing laptop" in res.findings[0]["message"]
    assert "rekey" in res.findings[0]["fix"]


def test_no_rule(repo):
    os.makedirs(repo.file("misc"))
    engine.encrypt_file(repo.file("misc/loose.yaml"), {"a": 1}, [[repo.recipient("admin")]])
    res = audit.run(repo.path)
    assert "no_rule" in kinds(res)
    assert any(f.get("path") == "misc/loose.yaml" for f in res.findings if f["kind"] == "no_rule")


@pytest.mark.parametrize("broken", ["    age: 5\n", "    age:\n        - enc: x\n"])
def test_unreadable_metadata(repo, broken):
    path = repo.file("sops/alpha.yaml")
    lines = open(path).read().split("sops:\n")[0]
    open(path, "w").write(lines + "sops:\n" + broken + "    mac: ENC[x]\n")
    res = audit.run(repo.path)
    assert kinds(res) == ["unreadable"]
    assert res.findings[0]["path"] == "sops/alpha.yaml"


def test_plaintext_file_under_secrets_dir(repo):
    open(repo.file("sops/oops.yaml"), "w").write("password: hunter2\n")
    res = audit.run(repo.path)
    assert kinds(res) == ["plaintext_file"]
    assert res.findings[0]["path"] == "sops/oops.yaml"


def test_unused_anchor(repo):
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_recipient("retired", new_recipient(), group="hosts")
    cfg.save()
    res = audit.run(repo.path)
    assert kinds(res) == ["unused_anchor"]
    assert res.findings[0]["anchor"] == "retired"


def test_unknown_recipient(repo):
    stranger = new_recipient()
    engine.updatekeys(repo.file("sops/alpha.yaml"), [[repo.recipient("admin"), repo.recipient("alpha"), stranger]],
                      [repo.identities["admin"]])
    res = audit.run(repo.path)
    assert "unknown_recipient" in kinds(res)
    assert any(f.get("recipient") == stranger for f in res.findings)


def test_raw_ssh_recipient_in_sops_yaml(repo):
    kp = sshkeys.generate("root@alpha")
    text = open(repo.file(".sops.yaml")).read()
    text = text.replace(f"&alpha {repo.recipient('alpha')}", f"&alpha {kp.public_line.rsplit(' ', 1)[0]}")
    open(repo.file(".sops.yaml"), "w").write(text)
    res = audit.run(repo.path)
    msgs = [f["message"] for f in res.findings if f["kind"] == "ssh_recipient"]
    assert any("anchor &alpha is a raw SSH key" in m for m in msgs)
    assert "ssh_to_age" in next(f["fix"] for f in res.findings if f["kind"] == "ssh_recipient")


def test_host_without_key(repo):
    res = audit.run(repo.path, hosts=["alpha", "beta", "griefling"])
    assert kinds(res) == ["host_without_key"]
    assert res.findings[0]["host"] == "griefling"


def test_key_too_old(repo):
    keyinventory.record(repo.path, "alpha", "host", repo.recipient("alpha"), host="alpha", created="2020-01-01")
    keyinventory.record(repo.path, "beta", "host", repo.recipient("beta"), host="beta")
    res = audit.run(repo.path, max_age_days={"host": 365})
    assert kinds(res) == ["key_too_old"]
    assert res.findings[0]["anchor"] == "alpha"


def test_break_glass_coverage(repo):
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_recipient("break-glass", new_recipient(), group="users")
    cfg.ensure_rule_member(r"sops/shared\.yaml$", "break-glass")
    cfg.save()
    res = audit.run(repo.path)
    bg = [f for f in res.findings if f["kind"] == "break_glass_missing"]
    assert any("sops/alpha.yaml cannot be opened with the break-glass key" in f["message"] for f in bg)
    assert any("does not include &break-glass" in f["message"] for f in bg)


def test_config_validation_findings(repo):
    rule = "  - path_regex: never/matches/.*\n    key_groups:\n      - age:\n          - *admin\n"
    text = open(repo.file(".sops.yaml")).read() + rule
    open(repo.file(".sops.yaml"), "w").write(text)
    res = audit.run(repo.path)
    assert "config_rule_unused" in kinds(res)


def test_report_html_and_module(repo, tmp_path):
    report = tmp_path / "audit.html"
    res = run_module_inproc("sops_audit", {"repo": repo.path, "report_path": str(report), "hosts": ["alpha", "gamma"]})
    assert not res.failed and res.changed
    page = report.read_text()
    assert "sops/shared.yaml" in page and "host gamma has no anchor" in page
    assert any("sops/alpha.yaml" in line for line in res.result["report"])
    again = run_module_inproc("sops_audit",
                              {"repo": repo.path, "report_path": str(report), "hosts": ["alpha", "gamma"]})
    assert not again.changed
    failing = run_module_inproc("sops_audit", {"repo": repo.path, "hosts": ["gamma"], "fail_on": "warning"})
    assert failing.failed and "host gamma" in failing.msg


def test_audit_playbook_prints_the_matrix(repo, tmp_path):
    from tests.lib.runner import run_playbook

    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    localhost: {ansible_connection: local, "
                         "ansible_python_interpreter: '{{ ansible_playbook_python }}'}\n"
                         "  children:\n    nixos:\n      children:\n        web: {hosts: {alpha: {}, beta: {}}}\n"
                         "        db: {hosts: {beta: {}}}\n")
    run = run_playbook("audit.yml", {"nixfleet_secrets_repo": repo.path,
                                     "nixfleet_audit_report": str(tmp_path / "a.html")}, inventory=str(inventory))
    assert run.rc == 0, run.stdout
    assert "sops/shared.yaml" in run.stdout and (tmp_path / "a.html").exists()
    hosts = {h["name"]: h["groups"] for h in json.loads((tmp_path / "a.json").read_text())["hosts"]}
    assert hosts == {"alpha": ["nixos", "web"], "beta": ["db", "nixos", "web"]}
    assert subprocess.run(["grep", "-c", "AGE-SECRET-KEY", str(tmp_path / "a.html")],
                          capture_output=True, text=True, check=False).stdout.strip() == "0"


def test_structurally_broken_stanza_is_reported(repo):
    path = repo.file("sops/alpha.yaml")
    sf = engine.load(path)
    enc = next(s.enc for g in sf.metadata.key_groups for s in g if s.recipient == repo.recipient("alpha"))
    body = enc.splitlines()[1]
    with open(path) as fh:
        text = fh.read()
    with open(path, "w") as fh:
        fh.write(text.replace(body, body[:10] + "!!!!" + body[14:], 1))
    res = audit.run(repo.path)
    broken = [f for f in res.findings if f["kind"] == "broken_stanza"]
    assert [(f["path"], f["recipient"]) for f in broken] == [("sops/alpha.yaml", repo.recipient("alpha"))]
    assert "alpha" in broken[0]["message"] and "rekey" in broken[0]["fix"]


def test_recipient_types_and_host_keys_sops_nix_cannot_use(repo):
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    plugin = age.encode_plugin_recipient("yubikey", os.urandom(33))
    admin_ssh = sshkeys.generate("admin@laptop").public_line.rsplit(" ", 1)[0]
    cfg.ensure_recipient("alpha", plugin, group="hosts")
    cfg.ensure_recipient("laptop", admin_ssh, group="users")
    cfg.ensure_rule_member(r"sops/shared\.yaml$", "laptop")
    cfg.save()
    res = audit.run(repo.path)
    assert res.types["admin"] == "x25519" and res.types["alpha"] == "plugin:yubikey"
    assert res.types["laptop"] == "ssh-ed25519"
    unusable = [f for f in res.findings if f["kind"] == "host_recipient_unusable"]
    assert [f["anchor"] for f in unusable] == ["alpha"] and "plugin" in unusable[0]["message"]
    # An admin's SSH key is a fine sops recipient: only hosts must be what sops-nix can use.
    assert not [f for f in res.findings if f["kind"] == "ssh_recipient"]
    assert res.as_dict()["matrix"]["types"]["alpha"] == "plugin:yubikey"


@pytest.mark.parametrize("group", ["users", "hosts"])
def test_two_anchors_holding_one_recipient(repo, group):
    # The copy is declared before or after &alpha (users come first in this .sops.yaml): either way both
    # anchors can open alpha's files, the messages name the anchor alpha's rule uses, and the duplicate is a finding.
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_recipient("alpha-copy", repo.recipient("alpha"), group=group)
    cfg.ensure_recipient("laptop", new_recipient(), group="users")
    cfg.ensure_rule_member(r"sops/alpha(-\d+)?\.yaml$", "laptop")
    cfg.save()
    res = audit.run(repo.path)
    assert res.access["sops/alpha.yaml"] == ["admin", "alpha", "alpha-copy"]
    assert res.access["sops/shared.yaml"] == ["admin", "alpha", "alpha-copy", "beta"]
    dup = [f for f in res.findings if f["kind"] == "duplicate_recipient"]
    assert len(dup) == 1 and dup[0]["severity"] == "error"
    assert dup[0]["recipient"] == repo.recipient("alpha") and sorted(dup[0]["anchors"]) == ["alpha", "alpha-copy"]
    assert f"recipient {repo.recipient('alpha')} is held by anchors &" in dup[0]["message"]
    assert "&alpha (host)" in dup[0]["message"] and "&alpha-copy (" in dup[0]["message"]
    dups = res.as_dict()["duplicate_recipients"]
    assert dups == [{"recipient": repo.recipient("alpha"), "anchors": dup[0]["anchors"]}]
    drift = next(f for f in res.findings if f["kind"] == "drift" and f["path"] == "sops/alpha.yaml")
    assert "missing laptop" in drift["message"]
    # A stanza for the shared key is named after the anchor the file's rule uses, not the copy.
    path = repo.file("sops/alpha.yaml")
    sf = engine.load(path)
    enc = next(s.enc for g in sf.metadata.key_groups for s in g if s.recipient == repo.recipient("alpha"))
    body = enc.splitlines()[1]
    text = open(path).read()
    open(path, "w").write(text.replace(body, body[:10] + "!!!!" + body[14:], 1))
    broken = next(f for f in audit.run(repo.path).findings if f["kind"] == "broken_stanza")
    assert "wrapped for alpha (key group 1)" in broken["message"]


def test_duplicate_recipient_across_kinds_names_each_kind(repo):
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_recipient("beta-admin", repo.recipient("beta"), group="users")
    cfg.ensure_recipient("beta-too", repo.recipient("beta"), group="users")
    cfg.save()
    dup = [f for f in audit.run(repo.path).findings if f["kind"] == "duplicate_recipient"]
    assert [f["anchors"] for f in dup] == [["beta-admin", "beta-too", "beta"]]
    assert "&beta-admin (user), &beta-too (user) and &beta (host)" in dup[0]["message"]
