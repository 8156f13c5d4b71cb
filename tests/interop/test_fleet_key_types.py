"""Every key type sops accepts, through a whole fleet rekey: the rules name them, the real sops reads the result.

- a post-quantum, a plugin, an ssh-ed25519 and an ssh-rsa recipient in rules do not block the rekey;
- rekeying 100 files with a plugin identity and a new plugin recipient runs the plugin once per phase
  (one identity-v1 run for every unwrap, one recipient-v1 run for every wrap), not once per file;
- a 200-file rekey with a passphrase-protected identity file asks its passphrase source once.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, fleet, sshkeys
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.lib import nftest
from tests.lib.secrets_repo import make_repo, sops_decrypt


def _rsa_pair(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                            serialization.NoEncryption())
    path = tmp_path / "id_rsa"
    path.write_bytes(pem)
    path.chmod(0o600)
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return pub, str(path)


def _sops_with_ssh_key(sops_bin, path, ssh_key_file):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPS_AGE")}
    env.update({"SOPS_AGE_SSH_PRIVATE_KEY_FILE": ssh_key_file, "SOPS_DISABLE_VERSION_CHECK": "1",
                "HOME": os.path.dirname(ssh_key_file)})
    return subprocess.run([sops_bin, "decrypt", path], capture_output=True, text=True, env=env, check=False)


def test_every_recipient_type_in_rules_rekeys_and_the_real_sops_reads_it(tmp_path, monkeypatch, sops_bin):
    plugin = nftest.install(monkeypatch, tmp_path)
    repo = make_repo(str(tmp_path), hosts=("alpha",), git=False)
    pq_id = age.generate_identity("pq")
    plugin_r, plugin_id = nftest.keypair()
    ed = sshkeys.generate("admin@laptop")
    ed_file = tmp_path / "ed" / "id_ed25519"
    ed_file.parent.mkdir()
    ed_file.write_bytes(ed.private_pem)
    ed_file.chmod(0o600)
    rsa_pub, rsa_file = _rsa_pair(tmp_path)
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    for name, r in (("pq", age.recipient_from_identity(pq_id)), ("yk", plugin_r),
                    ("ed", ed.public_line.rsplit(" ", 1)[0]), ("rsa", " ".join(rsa_pub.split()[:2]))):
        cfg.ensure_recipient(name, r, group="users")
        cfg.ensure_rule_member(r"sops/shared\.yaml$", name)
    cfg.save()

    res = fleet.rekey(repo.path, [repo.identities["admin"]])
    assert res.changed_files == ["sops/shared.yaml"] and res.counts["failed"] == 0
    assert plugin.runs("recipient-v1") == 1
    want = engine.load(repo.file("sops/shared.yaml")).decrypt([repo.identities["admin"]])
    # The real sops opens the rekeyed file with each new key alone.
    for ident in (pq_id, plugin_id):
        keyfile = tmp_path / "k.txt"
        keyfile.write_text(ident + "\n")
        out = sops_decrypt(sops_bin, repo.file("sops/shared.yaml"), str(keyfile))
        assert out.returncode == 0, out.stderr
    for key_file in (str(ed_file), rsa_file):
        out = _sops_with_ssh_key(sops_bin, repo.file("sops/shared.yaml"), key_file)
        assert out.returncode == 0, out.stderr
    assert engine.load(repo.file("sops/shared.yaml")).decrypt([pq_id]) == want


def test_a_plugin_runs_once_per_phase_for_a_100_file_rekey(tmp_path, monkeypatch):
    plugin = nftest.install(monkeypatch, tmp_path)
    old_r, old_id = nftest.keypair()
    new_r, _new_id = nftest.keypair()
    repo = make_repo(str(tmp_path), hosts=("alpha",), files_per_host=99, git=False)
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_recipient("yk", old_r, group="users")
    for rule in (r"sops/shared\.yaml$", r"sops/alpha(-\d+)?\.yaml$"):
        cfg.ensure_rule_member(rule, "yk")
    cfg.save()
    fleet.rekey(repo.path, [repo.identities["admin"]])  # every file now also opens with the YubiKey stand-in
    plugin.log.unlink()
    # The admin has only the plugin identity now; a second plugin recipient joins every rule.
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_recipient("yk2", new_r, group="users")
    for rule in (r"sops/shared\.yaml$", r"sops/alpha(-\d+)?\.yaml$"):
        cfg.ensure_rule_member(rule, "yk2")
    cfg.save()
    res = fleet.rekey(repo.path, [old_id], workers=2)
    assert len(res.changed_files) == 100 and res.counts["failed"] == 0
    assert (plugin.runs("identity-v1"), plugin.runs("recipient-v1")) == (1, 1), plugin.log.read_text()


def test_a_passphrase_is_asked_once_for_200_files(tmp_path):
    repo = make_repo(str(tmp_path), hosts=("alpha",), files_per_host=199, git=False)
    protected = tmp_path / "admin.age"
    from ansible_collections.nixfleet.sops.plugins.module_utils import agefile, agekeys

    file_key = agefile.new_file_key()
    body = age.format_identity_file(repo.identities["admin"]).encode()
    protected.write_bytes(agefile.encrypt(body, file_key, [agekeys.wrap_scrypt(file_key, b"correct horse", 10)],
                                          armored=True))
    counter = tmp_path / "asked"
    command = f"sh -c 'echo x >> {counter}; printf %s \"correct horse\"'"
    ids = fleet.collect_identities([str(protected)], passphrase_command=command)
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_recipient("newadmin", age.recipient_from_identity(age.generate_identity()), group="users")
    for rule in (r"sops/shared\.yaml$", r"sops/alpha(-\d+)?\.yaml$"):
        cfg.ensure_rule_member(rule, "newadmin")
    cfg.save()
    res = fleet.rekey(repo.path, ids, workers=2)
    assert len(res.changed_files) == 200
    assert counter.read_text().count("x") == 1


@pytest.mark.parametrize("where", ["rule", "file"])
def test_a_pq_recipient_never_blocks_the_fleet(tmp_path, where):
    repo = make_repo(str(tmp_path), hosts=("alpha", "beta"), git=False)
    pq_id = age.generate_identity("pq")
    pq = age.recipient_from_identity(pq_id)
    if where == "rule":
        cfg = SopsConfig.load(repo.file(".sops.yaml"))
        cfg.ensure_recipient("pq", pq, group="users")
        cfg.ensure_rule_member(r"sops/alpha(-\d+)?\.yaml$", "pq")
        cfg.save()
    else:
        engine.updatekeys(repo.file("sops/beta.yaml"), [[repo.recipient("admin"), repo.recipient("beta"), pq]],
                          identities=[repo.identities["admin"]])
    res = fleet.rekey(repo.path, [repo.identities["admin"]])
    assert res.counts["failed"] == 0
    assert res.changed_files == (["sops/alpha.yaml"] if where == "rule" else ["sops/beta.yaml"])
