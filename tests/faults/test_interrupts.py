"""SIGKILL and Ctrl-C (SIGINT) at each phase of a rekey and of a bootstrap, through real Ansible.

After each interruption: the run failed (non-zero), every file is whole (old or new, and opens with the
admin key), no private key lies in a temp or staging file, and the next run finishes the work and a
third one has nothing to do. The interruptions land where failpoints put them, not at random moments.
"""

from __future__ import annotations

import glob
import os
import re

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, failpoints
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig

from tests.faults.lib import SECRET_RE, TEMP_RE
from tests.lib.runner import run_module
from tests.lib.secrets_repo import make_repo

REKEY_POINTS = ["write#1", "write#3", "fleet.staged", "sync", "rename#1", "rename#2", "fleet.published"]
BOOTSTRAP_POINTS = ["write#1", "write#4", "fleet.staged", "sync", "rename#2", "rename#5", "fleet.published"]


def _repo(tmp_path):
    repo = make_repo(str(tmp_path), hosts=("alpha", "beta"))
    keys = str(tmp_path / "admin.txt")
    with open(os.open(keys, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
        fh.write(age.format_identity_file(repo.identities["admin"]))
    return repo, keys


def _sops_files(repo):
    return sorted(p for p in glob.glob(os.path.join(repo.path, "sops", "**", "*.yaml"), recursive=True)
                  if not TEMP_RE.search(p))


def _assert_whole(repo, want_plain):
    """Every sops file opens with the admin key and holds what it held."""
    for path in _sops_files(repo):
        doc = engine.load(path).decrypt([repo.identities["admin"]], keep_comments=False)
        rel = os.path.relpath(path, repo.path)
        if rel in want_plain:
            assert doc == want_plain[rel], rel


def _assert_no_plaintext_keys(root):
    """No temp or staging file anywhere under root holds a private key in the clear."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if TEMP_RE.search(name) and os.path.isfile(path):
                with open(path, "rb") as fh:
                    text = fh.read().decode("utf-8", "replace")
                # An encrypted sops file is fine (its values are ENC[…]); a clear key is not.
                assert not SECRET_RE.search(text), f"{path} holds a private key in the clear"


@pytest.mark.parametrize("signal_name", ["kill", "int"])
@pytest.mark.parametrize("point", REKEY_POINTS)
def test_interrupted_rekey(tmp_path, point, signal_name):
    repo, keys = _repo(tmp_path)
    plain = {os.path.relpath(p, repo.path): engine.load(p).decrypt([repo.identities["admin"]], keep_comments=False)
             for p in _sops_files(repo)}
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_recipient("laptop", age.recipient_from_identity(age.generate_identity()), group="users")
    for rule in (r"sops/shared\.yaml$", r"sops/alpha(-\d+)?\.yaml$", r"sops/beta(-\d+)?\.yaml$"):
        cfg.ensure_rule_member(rule, "laptop")
    cfg.save()
    args = {"repo": repo.path, "identity_files": [keys]}
    first = run_module("sops_rekey", args, env={failpoints.ENV: f"{point}:{signal_name}"})
    assert first.failed, first.result
    if signal_name == "int":
        assert re.search(r"interrupted \(Ctrl-C\)", first.msg) and "\n" not in first.msg, first.msg
    _assert_whole(repo, plain)
    _assert_no_plaintext_keys(str(tmp_path))
    second = run_module("sops_rekey", args)
    assert not second.failed, second.msg
    assert not [p for p in glob.glob(repo.path + "/**", recursive=True) if TEMP_RE.search(p)], "temps left"
    assert not run_module("sops_rekey", args).changed
    _assert_whole(repo, plain)


@pytest.mark.parametrize("signal_name", ["kill", "int"])
@pytest.mark.parametrize("point", BOOTSTRAP_POINTS)
def test_interrupted_bootstrap(tmp_path, point, signal_name):
    repo, keys = _repo(tmp_path)
    plain = {os.path.relpath(p, repo.path): engine.load(p).decrypt([repo.identities["admin"]], keep_comments=False)
             for p in _sops_files(repo)}
    args = {"repo": repo.path, "host": "griefling", "user": "rain", "admins": ["admin"],
            "deploy_repos": ["nix-config"], "identity_files": [keys], "commit": True}
    first = run_module("sops_host_keys", args, env={failpoints.ENV: f"{point}:{signal_name}"})
    assert first.failed, first.result
    _assert_whole(repo, plain)
    _assert_no_plaintext_keys(str(tmp_path))
    second = run_module("sops_host_keys", args)
    assert not second.failed and second.changed, second.msg
    assert not [p for p in glob.glob(repo.path + "/**", recursive=True) if TEMP_RE.search(p)], "temps left"
    third = run_module("sops_host_keys", args)
    assert not third.failed and not third.changed, third.result
    _assert_whole(repo, plain)
    # The host's own files open, and the commit holds everything the runs wrote.
    assert engine.load(repo.file("sops/griefling.yaml")).decrypt([repo.identities["admin"]])["keys"]["age"]
    status = os.popen(f"git -C {repo.path} status --porcelain").read()
    assert status.strip() == "", status
