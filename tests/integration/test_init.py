"""playbooks/init.yml through real Ansible: a new repository that bootstrap.yml accepts and the real sops uses."""

from __future__ import annotations

import os
import re
import stat
import subprocess

from ansible_collections.nixfleet.sops.plugins.module_utils import age, sshkeys

from tests.faults.lib import snapshot as tree
from tests.lib.runner import REPO, run_playbook
from tests.lib.secrets_repo import sops_decrypt

SECRET_MARKERS = ("AGE-SECRET-KEY-", "PRIVATE KEY")


def git(repo, *args):
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


def sops_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPS_AGE")}
    env["SOPS_DISABLE_VERSION_CHECK"] = "1"
    return env


def test_init_then_real_sops_then_bootstrap(tmp_path, sops_bin):
    repo = str(tmp_path / "nix-secrets")
    config_home = str(tmp_path / "config")
    env = {"XDG_CONFIG_HOME": config_home, "XDG_RUNTIME_DIR": str(tmp_path), "TMPDIR": str(tmp_path)}
    first = run_playbook("init.yml", extra_vars={"nixfleet_secrets_repo": repo}, env=env, verbosity=3)
    assert first.rc == 0, first.stdout[-3000:]
    assert first.changed() == 1, first.recap
    for marker in SECRET_MARKERS:
        assert marker not in first.stdout and marker not in first.stderr, f"{marker} leaked with -vvv"

    # The admin key went where sops itself looks ($XDG_CONFIG_HOME/sops/age/keys.txt), 0600.
    key = os.path.join(config_home, "sops", "age", "keys.txt")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    recipient = age.recipient_from_identity(age.read_identity_file(key)[0])
    assert f"&admin = {recipient}" in first.stdout
    assert f"- &admin {recipient}" in open(os.path.join(repo, ".sops.yaml")).read()
    assert git(repo, "log", "--format=%s").splitlines() == ["chore(sops): new secrets repository"]
    assert git(repo, "status", "--porcelain") == ""

    # The real sops opens shared.yaml with the admin key, and encrypts a new file with the repo's rules.
    out = sops_decrypt(sops_bin, os.path.join(repo, "sops/shared.yaml"), key)
    assert out.returncode == 0 and out.stdout.strip() == "{}", out.stderr
    plain = tmp_path / "plain.yaml"
    plain.write_text("wifi:\n    password: correct horse\n")
    enc = subprocess.run([sops_bin, "encrypt", "--filename-override", "sops/shared.yaml", str(plain)], cwd=repo,
                         capture_output=True, text=True, env=sops_env(), check=False)
    assert enc.returncode == 0, enc.stderr
    assert re.findall(r"recipient: (age1\w+)", enc.stdout) == [recipient]
    new = os.path.join(repo, "sops", "shared.yaml")
    os.rename(new, new + ".orig")
    with open(new, "w") as fh:
        fh.write(enc.stdout)
    out = sops_decrypt(sops_bin, new, key)
    assert out.returncode == 0 and "correct horse" in out.stdout, out.stderr
    os.replace(new + ".orig", new)

    # A second run changes nothing; so does the same run in check mode.
    before, head = tree(repo), git(repo, "rev-parse", "HEAD")
    for check in (True, False):
        again = run_playbook("init.yml", extra_vars={"nixfleet_secrets_repo": repo}, env=env, check=check)
        assert again.rc == 0 and again.changed() == 0, again.recap
    assert tree(repo) == before and git(repo, "rev-parse", "HEAD") == head

    # bootstrap.yml accepts it: the demo host, with the secrets repository and admin key from init.
    (tmp_path / "demo").mkdir()  # the demo's own first play makes it (its known_hosts file goes there)
    inv = tmp_path / "inventory.yml"
    text = open(os.path.join(REPO, "inventory", "demo.yml")).read()
    inv.write_text(text.replace('nixfleet_demo_dir: "{{ inventory_dir }}/../demo"',
                                f'nixfleet_demo_dir: "{tmp_path}/demo"'))
    boot_vars = {"nixfleet_secrets_repo": repo, "nixfleet_identity_files": [key], "nixfleet_bootstrap_hosts": "demo"}
    check = run_playbook("bootstrap.yml", inventory=str(inv), extra_vars=boot_vars, env=env, check=True)
    assert check.rc == 0, check.stdout[-3000:]
    assert tree(repo) == before and git(repo, "rev-parse", "HEAD") == head, "bootstrap --check wrote"
    # Check mode makes no key, so it prints none to add at the forge; it says which the real run makes.
    assert "ssh-ed25519 " not in check.stdout
    assert "the real run generates a deploy key for nix-config, nix-secrets" in check.stdout

    boot = run_playbook("bootstrap.yml", inventory=str(inv), extra_vars=boot_vars, env=env)
    assert boot.rc == 0, boot.stdout[-3000:]
    config = open(os.path.join(repo, ".sops.yaml")).read()
    assert re.search(r"(?m)^  hosts:\n    - &griefling age1", config)
    assert re.search(r"(?m)^    - &rain_griefling age1", config)
    # What the real run printed to add at the forge is the deploy key it stored.
    printed = re.findall(r"griefling nix-config: (ssh-ed25519 \S+)", boot.stdout)
    stored = open(os.path.join(tmp_path, "demo/hosts/griefling/root/.ssh/nix-config-deploy")).read()
    assert printed and printed[0].split()[1] == sshkeys.from_private(stored).public_line.split()[1]
    for rel in ("sops/shared.yaml", "sops/griefling.yaml", "sops/host-keys/griefling.yaml"):
        out = sops_decrypt(sops_bin, os.path.join(repo, rel), key)
        assert out.returncode == 0, f"{rel}: {out.stderr}"
    assert git(repo, "status", "--porcelain") == ""
    assert len(git(repo, "log", "--format=%s").splitlines()) == 2


def test_refuses_an_existing_repository_byte_identical(tmp_path):
    repo = tmp_path / "nix-config"
    repo.mkdir()
    (repo / "flake.nix").write_text("{ }\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    git(str(repo), "add", "flake.nix")
    git(str(repo), "commit", "-q", "-m", "mine")
    key = tmp_path / "keys.txt"
    before, head = tree(str(tmp_path)), git(str(repo), "rev-parse", "HEAD")
    for check in (True, False):
        res = run_playbook("init.yml", extra_vars={"nixfleet_secrets_repo": str(repo),
                                                   "nixfleet_admin_key_file": str(key)}, check=check)
        assert res.rc != 0, res.stdout[-2000:]
        assert "holds flake.nix and a git history, which init did not make" in res.stdout
        assert "nixfleet_init_force=true" in res.stdout
    assert tree(str(tmp_path)) == before and git(str(repo), "rev-parse", "HEAD") == head
    assert not key.exists()
