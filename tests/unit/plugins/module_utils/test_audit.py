"""audit.py: each kind of finding, planted one at a time; a clean repository has none."""

from __future__ import annotations

import os
import subprocess

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, audit, keyinventory, sshkeys
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig

from tests.lib.runner import run_module
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
    res = run_module("sops_audit", {"repo": repo.path, "report_path": str(report), "hosts": ["alpha", "gamma"]})
    assert not res.failed and res.changed
    page = report.read_text()
    assert "sops/shared.yaml" in page and "host gamma has no anchor" in page
    assert any("sops/alpha.yaml" in line for line in res.result["report"])
    again = run_module("sops_audit", {"repo": repo.path, "report_path": str(report), "hosts": ["alpha", "gamma"]})
    assert not again.changed
    failing = run_module("sops_audit", {"repo": repo.path, "hosts": ["gamma"], "fail_on": "warning"})
    assert failing.failed and "host gamma" in failing.msg


def test_audit_playbook_prints_the_matrix(repo, tmp_path):
    from tests.lib.runner import run_playbook

    run = run_playbook("audit.yml", {"nixfleet_secrets_repo": repo.path,
                                     "nixfleet_audit_report": str(tmp_path / "a.html")})
    assert run.rc == 0, run.stdout
    assert "sops/shared.yaml" in run.stdout and (tmp_path / "a.html").exists()
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
