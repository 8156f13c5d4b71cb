"""The test sops-install-secrets, on the controller: same conversion, generations and failures as sops-nix."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix_check import verify
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sops-install-secrets-test.py")
_spec = importlib.util.spec_from_file_location("sops_install_secrets_test", SCRIPT)
assert _spec and _spec.loader
activation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(activation)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the activation chowns to root, as sops-nix does")


def _ssh_private() -> str:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()).decode()


@pytest.mark.parametrize("_unused", range(5))
def test_ssh_to_age_matches_the_collection(_unused: int) -> None:
    private = _ssh_private()
    assert activation.ssh_private_key_to_age(private) == age.ssh_private_key_to_identity(private)


@pytest.fixture
def host(tmp_path, sops_bin):
    """A tree with a host key, a sops file encrypted for it, and a manifest in sops-nix's schema."""
    private = _ssh_private()
    key = tmp_path / "ssh_host_ed25519_key"
    key.write_text(private)
    key.chmod(0o600)
    recipient = age.ssh_private_key_to_recipient(private)
    sops_file = tmp_path / "secrets.yaml"
    sops_file.write_text("a:\n  b: one\nn: 3\n")
    env = dict(os.environ, SOPS_DISABLE_VERSION_CHECK="1")
    subprocess.run([sops_bin, "encrypt", "-i", "--age", recipient, str(sops_file)], check=True, env=env,
                   capture_output=True)
    run = tmp_path / "run"
    manifest = {
        "secrets": [
            {"name": "ab", "key": "a/b", "path": f"{run}/secrets/ab", "owner": "root", "group": "root",
             "sopsFile": str(sops_file), "format": "yaml", "mode": "0440"},
            {"name": "nested/n", "key": "n", "path": f"{tmp_path}/elsewhere/n", "owner": "root", "group": "root",
             "sopsFile": str(sops_file), "format": "yaml", "mode": "0400"},
        ],
        "secretsMountPoint": f"{run}/secrets.d", "symlinkPath": f"{run}/secrets", "keepGenerations": 1,
        "ageKeyFile": "", "ageSshKeyPaths": [str(key)],
    }
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    return {"tmp": tmp_path, "manifest": str(path), "run": run, "recipient": recipient, "sops_file": sops_file,
            "env": dict(env, SOPS_BIN=sops_bin)}


def _activate(host) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, host["manifest"]], env=host["env"],
                          capture_output=True, text=True, check=False)


@needs_root
def test_generations_symlinks_and_pruning(host) -> None:
    assert _activate(host).returncode == 0
    assert _activate(host).returncode == 0
    run = host["run"]
    assert os.readlink(run / "secrets") == f"{run}/secrets.d/2"
    assert sorted(os.listdir(run / "secrets.d")) == ["2", "age-keys.txt"]  # keepGenerations = 1
    assert (run / "secrets" / "ab").read_text() == "one"
    assert oct((run / "secrets.d" / "2" / "ab").stat().st_mode & 0o777) == "0o440"
    assert oct((run / "secrets.d" / "2" / "nested").stat().st_mode & 0o777) == "0o751"
    assert os.readlink(host["tmp"] / "elsewhere" / "n") == f"{run}/secrets/nested/n"  # as sops-nix links it
    assert oct((run / "secrets.d" / "age-keys.txt").stat().st_mode & 0o777) == "0o600"
    result = verify(host="ctl", manifests=[host["manifest"]], expected_recipients=[host["recipient"]])
    assert result["faults"] == [] and result["recipients"] == [host["recipient"]]


@needs_root
def test_a_file_the_host_cannot_decrypt_keeps_the_old_generation(host, sops_bin) -> None:
    assert _activate(host).returncode == 0
    other = age.recipient_from_identity(age.generate_identity())
    host["sops_file"].write_text("a:\n  b: two\nn: 4\n")
    subprocess.run([sops_bin, "encrypt", "-i", "--age", other, str(host["sops_file"])], check=True,
                   env=host["env"], capture_output=True)
    proc = _activate(host)
    assert proc.returncode == 1
    assert "failed to decrypt" in proc.stderr
    run = host["run"]
    assert os.readlink(run / "secrets") == f"{run}/secrets.d/1"
    assert not (run / "secrets.d" / "2").exists()
    assert (run / "secrets" / "ab").read_text() == "one"
    # verify sees the host in order, but the file no longer lists the host: the next activation fails.
    result = verify(host="ctl", manifests=[host["manifest"]], sops_files=[str(host["sops_file"])])
    [fault] = result["faults"]
    assert fault["check"] == "sops_file" and "not encrypted for the host" in fault["message"]
