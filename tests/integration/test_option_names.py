"""One name per concept across modules, the old names and community.sops's names as aliases, and the
secrets_repo action group that lets module_defaults set the repository and identities once (real Ansible)."""

from __future__ import annotations

import os
import subprocess

from ansible_collections.nixfleet.sops.plugins.module_utils import age

from tests.lib.runner import run_module, run_playbook
from tests.lib.secrets_repo import make_repo, sops_decrypt


def test_module_defaults_group_sets_repo_and_identities_once(tmp_path, sops_bin):
    repo = make_repo(str(tmp_path), hosts=("alpha", "beta"))
    # beta leaves the shared file: a rekey has one file to change.
    repo.write_config([(r"sops/shared\.yaml$", ["admin", "alpha"]), (r"sops/alpha\.yaml$", ["admin", "alpha"]),
                       (r"sops/beta\.yaml$", ["admin", "beta"])], users=("admin",), hosts=("alpha", "beta"))
    play = tmp_path / "play.yml"
    play.write_text(f"""
- name: Rekey with the repository and identities set once
  hosts: localhost
  gather_facts: false
  module_defaults:
    group/nixfleet.sops.secrets_repo:
      repo: {repo.path}
      identity_files: [{repo.keyfile("admin")}]
  tasks:
    - name: Rekey (no repo or identity option on the task)
      nixfleet.sops.sops_rekey:
      register: rekey
    - name: Show what changed
      ansible.builtin.debug:
        msg: "CHANGED={{{{ rekey.changed_files | join(',') }}}}"
""")
    run = run_playbook(str(play))
    assert run.rc == 0, run.stdout + run.stderr
    assert "CHANGED=sops/shared.yaml" in run.stdout
    assert sops_decrypt(sops_bin, repo.file("sops/shared.yaml"), repo.keyfile("beta")).returncode != 0
    assert sops_decrypt(sops_bin, repo.file("sops/shared.yaml"), repo.keyfile("alpha")).returncode == 0

    # Without the group defaults the same task has no repository: module_defaults is what supplied it.
    play.write_text(play.read_text().replace("group/nixfleet.sops.secrets_repo", "nixfleet.sops.sops_audit"))
    run = run_playbook(str(play))
    assert run.rc != 0 and "missing required arguments: repo" in run.stdout


def test_community_sops_names_for_identities_and_config(tmp_path, sops_bin):
    repo = make_repo(str(tmp_path), hosts=("alpha",))
    key_text = open(repo.keyfile("admin")).read()  # a key file's text: comment lines, then the identity
    assert key_text.startswith("#")
    path = repo.file("sops/shared.yaml")
    # age_keyfile (one path) for identity_files, config_path for config.
    r = run_module("sops_secret", {"path": path, "key": "new", "value": "v1", "age_keyfile": repo.keyfile("admin"),
                                   "config_path": os.path.join(repo.path, ".sops.yaml")})
    assert r.changed and not r.failed, r.msg
    # age_key: the key file's text, as community.sops takes it; never echoed.
    r = run_module("sops_secret", {"path": path, "key": "new", "value": "v2", "age_key": key_text})
    assert r.changed and not r.failed, r.msg
    assert "AGE-SECRET-KEY-" not in r.stdout + r.stderr
    out = sops_decrypt(sops_bin, path, repo.keyfile("alpha"))
    assert out.returncode == 0 and "new: v2" in out.stdout
    # A wrong key under the alias fails naming the option, without echoing it.
    other = age.generate_identity()
    r = run_module("sops_secret", {"path": path, "key": "new", "value": "v3", "age_key": other})
    assert r.failed and "AGE-SECRET-KEY-" not in r.stdout + r.stderr


def test_sops_config_option_is_config_with_path_as_alias(tmp_path):
    repo = make_repo(str(tmp_path), hosts=("alpha",), git=False)
    cfg = os.path.join(repo.path, ".sops.yaml")
    new = age.recipient_from_identity(age.generate_identity())
    r = run_module("sops_recipient", {"config": cfg, "group": "hosts", "name": "gamma", "recipient": new})
    assert r.changed and not r.failed, r.msg
    assert f"&gamma {new}" in open(cfg).read()
    for old in ("path", "config_path"):  # the old name and community.sops's name: same option
        r = run_module("sops_recipient", {old: cfg, "group": "hosts", "name": "gamma", "recipient": new})
        assert not r.failed and not r.changed, (old, r.msg)
    r = run_module("sops_creation_rule", {"config_path": cfg, "path_regex": r"sops/gamma\.yaml$",
                                          "anchors": ["admin", "gamma"]})
    assert r.changed and not r.failed, r.msg


def _git_repo(path):
    path.mkdir()
    for args in (["init", "-q"], ["config", "user.email", "t@example.invalid"], ["config", "user.name", "t"]):
        subprocess.run(["git", "-C", str(path), *args], check=True)
    (path / "f.yaml").write_text("a: 1\n")


def test_vcs_commit_takes_commit_message_and_still_the_old_message(tmp_path):
    _git_repo(tmp_path / "r")
    r = run_module("vcs_commit", {"repo": str(tmp_path / "r"), "paths": ["f.yaml"], "message": "old name"},
                   env={"ANSIBLE_DEPRECATION_WARNINGS": "1"})
    assert r.changed and not r.failed, r.msg
    assert "commit_message" in r.stderr + r.stdout and "deprecat" in (r.stderr + r.stdout).lower()
    log = subprocess.run(["git", "-C", str(tmp_path / "r"), "log", "-1", "--format=%s"], check=True,
                         capture_output=True, text=True).stdout
    assert log.strip() == "old name"
    (tmp_path / "r" / "f.yaml").write_text("a: 2\n")
    r = run_module("vcs_commit", {"secrets_repo": str(tmp_path / "r"), "paths": ["f.yaml"],
                                  "commit_message": "new name"})
    assert r.changed and not r.failed, r.msg
    both = run_module("vcs_commit", {"repo": str(tmp_path / "r"), "paths": ["f.yaml"], "message": "a",
                                     "commit_message": "b"})
    assert both.failed and "commit_message" in both.msg
