"""playbooks/bootstrap.yml through the built-in demo inventory, checked with the real sops as oracle."""

from __future__ import annotations

import glob
import os
import shutil
import stat
import subprocess

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age

from tests.lib.runner import REPO, run_module, run_playbook
from tests.lib.secrets_repo import make_repo, sops_decrypt

SECRET_MARKERS = ("AGE-SECRET-KEY-", "PRIVATE KEY")


def git(repo, *args):
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def demo(tmp_path):
    """A copy of the demo inventory pointing at a private demo dir, so tests never touch ./demo."""
    inv = tmp_path / "inventory"
    inv.mkdir()
    text = open(os.path.join(REPO, "inventory", "demo.yml")).read()
    text = text.replace('nixfleet_demo_dir: "{{ inventory_dir }}/../demo"', f'nixfleet_demo_dir: "{tmp_path}/demo"')
    (inv / "demo.yml").write_text(text)
    return {"inventory": str(inv / "demo.yml"), "dir": str(tmp_path / "demo"), "tmp": str(tmp_path)}


def _staging_dirs(tmp):
    # The runs point XDG_RUNTIME_DIR at tmp, so their private staging lands there.
    assert os.path.isdir(os.path.join(tmp, f"nixfleet-{os.geteuid()}")), "staging was never created under tmp"
    return glob.glob(os.path.join(tmp, f"nixfleet-{os.geteuid()}", "extra-files-*"))


def test_demo_bootstrap_end_to_end(demo, sops_bin):
    tmpdir = os.path.join(demo["tmp"], "scratch")
    os.makedirs(tmpdir, mode=0o700)
    env = {"TMPDIR": tmpdir, "XDG_RUNTIME_DIR": tmpdir}
    first = run_playbook("demo.yml", inventory=demo["inventory"], env=env, verbosity=3)
    assert first.rc == 0, first.stdout[-3000:]
    for marker in SECRET_MARKERS:
        assert marker not in first.stdout and marker not in first.stderr, f"{marker} leaked with -vvv"
    assert _staging_dirs(tmpdir) == [], "the staging directory was not removed"

    repo = os.path.join(demo["dir"], "nix-secrets")
    root = os.path.join(demo["dir"], "hosts", "griefling")
    # Only the host's converted SSH host key (as sops-nix builds it) is given to the real sops.
    host_key = os.path.join(demo["tmp"], "host-only.txt")
    ident = age.ssh_private_key_to_identity(open(os.path.join(root, "etc/ssh/ssh_host_ed25519_key"), "rb").read())
    with open(host_key, "w") as fh:
        fh.write(age.format_identity_file(ident))
    for rel in ("sops/griefling.yaml", "sops/shared.yaml"):
        out = sops_decrypt(sops_bin, os.path.join(repo, rel), host_key)
        assert out.returncode == 0, f"{rel}: {out.stderr}"
    assert sops_decrypt(sops_bin, os.path.join(repo, "sops/host-keys/griefling.yaml"), host_key).returncode != 0
    admin = os.path.join(demo["dir"], "admin", "keys.txt")
    for rel in ("sops/griefling.yaml", "sops/shared.yaml", "sops/host-keys/griefling.yaml"):
        assert sops_decrypt(sops_bin, os.path.join(repo, rel), admin).returncode == 0
    # The user's key on the host is the one registered as &rain_griefling.
    user_ids = age.read_identity_file(os.path.join(root, "persist/home/rain/.config/sops/age/keys.txt"))
    config_text = open(os.path.join(repo, ".sops.yaml")).read()
    assert f"&rain_griefling {age.recipient_from_identity(user_ids[0])}" in config_text
    modes = {rel: stat.S_IMODE(os.stat(os.path.join(root, rel)).st_mode) for rel in (
        "etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub", "var/lib/sops-nix/key.txt",
        "persist/etc/ssh/ssh_host_ed25519_key", "persist/home/rain/.config/sops/age/keys.txt",
        "root/.ssh/nix-config-deploy", "root/.ssh/config")}
    assert modes == {"etc/ssh/ssh_host_ed25519_key": 0o600, "etc/ssh/ssh_host_ed25519_key.pub": 0o644,
                     "var/lib/sops-nix/key.txt": 0o600, "persist/etc/ssh/ssh_host_ed25519_key": 0o600,
                     "persist/home/rain/.config/sops/age/keys.txt": 0o600, "root/.ssh/nix-config-deploy": 0o600,
                     "root/.ssh/config": 0o600}
    assert "Host github.com-nix-config" in open(os.path.join(root, "root/.ssh/config")).read()
    known = open(os.path.join(demo["dir"], "known_hosts")).read()
    pub = open(os.path.join(root, "etc/ssh/ssh_host_ed25519_key.pub")).read().split()[1]
    assert pub in known
    commits = git(repo, "log", "--format=%s").splitlines()
    assert commits[0] == "chore(sops): register griefling keys and rekey 1 file"
    assert git(repo, "status", "--porcelain").strip() == ""

    second = run_playbook("demo.yml", inventory=demo["inventory"], env=env)
    assert second.rc == 0, second.stdout[-3000:]
    assert second.changed("griefling") == 0 and second.changed("localhost") == 0, second.recap
    assert git(repo, "log", "--format=%s").splitlines() == commits
    assert _staging_dirs(tmpdir) == []


def test_check_mode_reports_and_writes_nothing(demo):
    # Create the repo and admin key first (the demo's first play), then check-mode the bootstrap.
    run = run_playbook("demo.yml", inventory=demo["inventory"], check=True)
    # In check mode the first play cannot create files the later plays read; only assert nothing was written.
    assert not os.path.exists(os.path.join(demo["dir"], "hosts"))
    assert "AGE-SECRET-KEY-" not in run.stdout


def test_bootstrap_check_mode_on_existing_repo(tmp_path):
    repo = make_repo(str(tmp_path), hosts=("alpha",))
    before = {p: open(p, "rb").read() for p in glob.glob(repo.path + "/**", recursive=True) if os.path.isfile(p)}
    head = git(repo.path, "rev-parse", "HEAD")
    res = run_module("sops_host_keys", {"repo": repo.path, "host": "griefling", "user": "rain", "admins": ["admin"],
                                        "age_keys": [repo.identities["admin"]]}, check=True, diff=True, verbosity=3)
    assert res.changed and not res.failed, res.msg
    assert set(res.result["touched"]) >= {".sops.yaml", "sops/griefling.yaml", "sops/host-keys/griefling.yaml"}
    # Check mode never invents a key (issue 17): the diff names the key the real run would generate.
    assert "&griefling <new host key, generated by the real run>" in res.result["diff"]["after"]
    assert res.result["host_recipient"] == "(a new host key would be generated)"
    after = {p: open(p, "rb").read() for p in glob.glob(repo.path + "/**", recursive=True) if os.path.isfile(p)}
    assert after == before and git(repo.path, "rev-parse", "HEAD") == head
    assert "AGE-SECRET-KEY-" not in res.stdout


@pytest.mark.parametrize("bad", ["../x", "a b", "*", "Griefling", "x/y", "-lead", "&anchor", "a:b"])
def test_unsafe_host_names_are_refused_before_anything_is_written(tmp_path, bad):
    repo = make_repo(str(tmp_path), hosts=("alpha",))
    before = {p: open(p, "rb").read() for p in glob.glob(repo.path + "/**", recursive=True) if os.path.isfile(p)}
    res = run_module("sops_host_keys", {"repo": repo.path, "host": bad, "user": "rain", "admins": ["admin"],
                                        "age_keys": [repo.identities["admin"]]})
    assert res.failed and "host name" in res.msg and "not allowed" in res.msg
    after = {p: open(p, "rb").read() for p in glob.glob(repo.path + "/**", recursive=True) if os.path.isfile(p)}
    assert after == before


def test_unknown_admin_anchor_and_unopenable_host_file(tmp_path):
    repo = make_repo(str(tmp_path), hosts=("alpha",))
    res = run_module("sops_host_keys", {"repo": repo.path, "host": "griefling", "user": "rain", "admins": ["boss"],
                                        "age_keys": [repo.identities["admin"]]})
    assert res.failed and "&boss" in res.msg
    # A host whose file exists but cannot be opened is never regenerated over.
    ok = run_module("sops_host_keys", {"repo": repo.path, "host": "griefling", "user": "rain", "admins": ["admin"],
                                       "age_keys": [repo.identities["admin"]]})
    assert ok.changed
    data = open(repo.file("sops/griefling.yaml"), "rb").read()
    res = run_module("sops_host_keys", {"repo": repo.path, "host": "griefling", "user": "rain", "admins": ["admin"],
                                        "age_keys": [repo.identities["alpha"]]})
    assert res.failed and "sops/host-keys/griefling.yaml exists but no admin identity opens it" in res.msg
    assert open(repo.file("sops/griefling.yaml"), "rb").read() == data


def test_extra_files_modes_and_no_content_in_result(tmp_path):
    repo = make_repo(str(tmp_path), hosts=("alpha",))
    ids = {"age_keys": [repo.identities["admin"]]}
    run_module("sops_host_keys", {"repo": repo.path, "host": "griefling", "user": "rain", "admins": ["admin"],
                                  "deploy_repos": ["nix-config"], **ids})
    dest = tmp_path / "stage"
    res = run_module("sops_extra_files", {"repo": repo.path, "host": "griefling", "user": "rain", "dest": str(dest),
                                          "persist_prefix": "/persist", "deploy_repos": ["nix-config"], **ids},
                     verbosity=3)
    assert not res.failed, res.msg
    for marker in SECRET_MARKERS:
        assert marker not in res.stdout
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o700
    want = {"etc/ssh/ssh_host_ed25519_key": 0o600, "etc/ssh/ssh_host_ed25519_key.pub": 0o644,
            "var/lib/sops-nix/key.txt": 0o600, "persist/etc/ssh/ssh_host_ed25519_key": 0o600,
            "persist/etc/ssh/ssh_host_ed25519_key.pub": 0o644,
            "persist/var/lib/sops-nix/key.txt": 0o600, "persist/home/rain/.config/sops/age/keys.txt": 0o600,
            "root/.ssh/nix-config-deploy": 0o600}
    assert {f["path"]: int(f["mode"], 8) for f in res.result["files"]} == want
    for rel, mode in want.items():
        assert stat.S_IMODE(os.stat(dest / rel).st_mode) == mode
    dirs = {d["path"]: int(d["mode"], 8) for d in res.result["dirs"]}
    assert dirs["etc/ssh"] == 0o755 and dirs["root/.ssh"] == 0o700 and dirs["persist/home/rain"] == 0o700
    # key.txt is what sops-nix derives from the host key.
    host_rec = age.ssh_public_key_to_recipient((dest / "etc/ssh/ssh_host_ed25519_key.pub").read_text())
    assert age.recipient_from_identity(age.read_identity_file(str(dest / "var/lib/sops-nix/key.txt"))[0]) == host_rec
    shutil.rmtree(dest)


def test_persist_prefix_detection(tmp_path):
    from ansible_collections.nixfleet.sops.plugins.module_utils.bootstrap import detect_persist_prefix

    host = tmp_path / "hosts" / "griefling"
    host.mkdir(parents=True)
    (host / "default.nix").write_text('{ imports = [ ../../disks/btrfs-luks-impermanence.nix ]; }\n')
    assert detect_persist_prefix(str(tmp_path), "griefling") == "/persist"
    (host / "default.nix").write_text('{ fileSystems."/" = { device = "/dev/sda1"; }; }\n')
    assert detect_persist_prefix(str(tmp_path), "griefling") == ""
