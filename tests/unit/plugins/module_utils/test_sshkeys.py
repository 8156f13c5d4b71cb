"""sshkeys.py: ed25519 keypairs that ssh-keygen accepts as its own."""

from __future__ import annotations

import subprocess

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, sshkeys


@pytest.mark.parametrize("comment", ["root@griefling", "", "deploy key for nix-config"])
def test_ssh_keygen_prints_the_public_key_we_wrote(tmp_path, comment):
    kp = sshkeys.generate(comment)
    path = tmp_path / "key"
    path.write_bytes(kp.private_pem)
    path.chmod(0o600)
    out = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == kp.public_line
    assert kp.public_line.startswith("ssh-ed25519 ")


def test_from_private_reads_an_ssh_keygen_key(tmp_path):
    path = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "me@x", "-f", str(path)], check=True)
    kp = sshkeys.from_private(path.read_bytes())
    assert kp.public_line == (tmp_path / "k.pub").read_text().strip()
    assert kp.age_recipient == age.ssh_public_key_to_recipient(kp.public_line)


def test_repr_never_shows_the_private_key():
    kp = sshkeys.generate("c")
    assert "PRIVATE" not in repr(kp) and "PRIVATE" not in str(kp)


def test_multiline_comment_is_refused():
    with pytest.raises(age.AgeKeyError, match="single line"):
        sshkeys.generate("a\nb")


def test_same_public_key_ignores_comments():
    kp = sshkeys.generate("one")
    bare = kp.public_line.rsplit(" ", 1)[0]
    assert sshkeys.same_public_key(kp.public_line, bare + " two")
    assert not sshkeys.same_public_key(kp.public_line, sshkeys.generate("one").public_line)
