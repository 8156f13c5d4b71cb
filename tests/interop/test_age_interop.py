"""The real age binary agrees with our identities, recipients and ssh-to-age conversion."""

from __future__ import annotations

import os
import subprocess

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, sshkeys

pytestmark = pytest.mark.interop


def _roundtrip(age_bin: str, tmp_path, recipient: str, identity: str) -> None:
    plain = os.urandom(200)
    src = tmp_path / "plain"
    src.write_bytes(plain)
    keyfile = tmp_path / "keys.txt"
    keyfile.write_text(age.format_identity_file(identity))
    keyfile.chmod(0o600)
    enc = tmp_path / "plain.age"
    subprocess.run([age_bin, "-r", recipient, "-o", str(enc), str(src)], check=True)
    out = subprocess.run([age_bin, "-d", "-i", str(keyfile), str(enc)], check=True, capture_output=True)
    assert out.stdout == plain


@pytest.mark.parametrize("n", range(5))
def test_converted_ssh_keys_work_with_age(age_bin, tmp_path, n):
    kp = sshkeys.generate(f"host{n}")
    recipient = age.ssh_public_key_to_recipient(kp.public_line)
    identity = age.ssh_private_key_to_identity(kp.private_pem)
    _roundtrip(age_bin, tmp_path, recipient, identity)


@pytest.mark.parametrize("n", range(5))
def test_generated_identities_work_with_age(age_bin, tmp_path, n):
    identity = age.generate_identity()
    _roundtrip(age_bin, tmp_path, age.recipient_from_identity(identity), identity)


def test_age_keygen_files_parse_and_agree(tmp_path):
    path = tmp_path / "k.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    want = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()
    ids = age.read_identity_file(str(path))
    assert [age.recipient_from_identity(i) for i in ids] == [want]


def test_age_keygen_reads_our_key_files(tmp_path):
    identity = age.generate_identity()
    path = tmp_path / "k.txt"
    path.write_text(age.format_identity_file(identity))
    got = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()
    assert got == age.recipient_from_identity(identity)
