"""SSH ed25519 keys as identities, like sops, and the repair of files encrypted to a raw SSH recipient."""

from __future__ import annotations

import os
import subprocess

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, audit, fleet, sshkeys
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine

from tests.lib.secrets_repo import sops_decrypt

pytestmark = pytest.mark.interop


def _sops_encrypt_to_ssh(sops_bin, path, pub_line, text="wifi: hunter2\n"):
    with open(path, "w") as fh:
        fh.write(text)
    env = dict(os.environ, SOPS_DISABLE_VERSION_CHECK="1")
    out = subprocess.run([sops_bin, "encrypt", "--age", " ".join(pub_line.split()[:2]), "--in-place", path],
                         capture_output=True, text=True, env=env, cwd=os.path.dirname(path), check=False)
    assert out.returncode == 0, out.stderr


def test_sops_written_file_for_a_raw_ssh_recipient_opens_with_the_ssh_key(tmp_path, sops_bin):
    kp = sshkeys.generate("root@old-host")
    key = tmp_path / "id_ed25519"
    key.write_bytes(kp.private_pem)
    key.chmod(0o600)
    f = tmp_path / "secret.yaml"
    _sops_encrypt_to_ssh(sops_bin, str(f), kp.public_line)
    kr = engine.keyring(None, env={"SOPS_AGE_SSH_PRIVATE_KEY_FILE": str(key)})
    assert engine.load(str(f)).decrypt(kr) == {"wifi": "hunter2"}
    assert "BEGIN OPENSSH" not in repr(kr) and "AGE-SECRET" not in repr(kr)


def test_rekey_repairs_a_raw_ssh_recipient_to_its_age_form(tmp_path, sops_bin):
    """The #2 sops-nix failure: .sops.yaml fixed to the converted age1… key, files still for the SSH key."""
    repo = tmp_path / "nix-secrets"
    (repo / "sops").mkdir(parents=True)
    host = sshkeys.generate("root@web")
    host_key = tmp_path / "ssh_host_ed25519_key"
    host_key.write_bytes(host.private_pem)
    host_key.chmod(0o600)
    converted = age.ssh_public_key_to_recipient(host.public_line)
    (repo / ".sops.yaml").write_text(
        f"keys:\n  hosts:\n    - &web {converted}\ncreation_rules:\n  - path_regex: sops/.*\\.yaml$\n"
        "    key_groups:\n      - age:\n          - *web\n"
    )
    f = repo / "sops" / "web.yaml"
    _sops_encrypt_to_ssh(sops_bin, str(f), host.public_line)
    before = audit.run(str(repo))
    assert any(x["kind"] == "ssh_recipient" for x in before.findings)

    res = fleet.rekey(str(repo), fleet.collect_identities([str(host_key)]))
    assert res.changed_files == ["sops/web.yaml"]
    assert engine.load(str(f)).recipients == [[converted]]
    # What sops-nix will have on the host: the converted identity only.
    keyfile = tmp_path / "key.txt"
    keyfile.write_text(age.format_identity_file(age.ssh_private_key_to_identity(host.private_pem)))
    out = sops_decrypt(sops_bin, str(f), str(keyfile))
    assert out.returncode == 0, out.stderr
    assert "hunter2" in out.stdout
    assert not [x for x in audit.run(str(repo)).findings if x["kind"] == "ssh_recipient"]
