"""Identity lookup in the places (and order) sops 3.11 uses."""

from __future__ import annotations

import sys

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as S
from ansible_collections.nixfleet.sops.plugins.module_utils.age import (
    generate_identity,
    recipient_from_identity,
    ssh_private_key_to_identity,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519


@pytest.fixture()
def home(tmp_path):
    (tmp_path / "home").mkdir()
    return tmp_path


def base_env(tmp_path):
    return {"HOME": str(tmp_path / "home")}


def test_nothing_found_lists_every_place(home):
    ids, searched = S.find_identities(env=base_env(home))
    assert ids == []
    text = "\n".join(searched)
    for place in ("SOPS_AGE_SSH_PRIVATE_KEY_FILE (not set)", "id_ed25519 (not found)", "SOPS_AGE_KEY (not set)",
                  "SOPS_AGE_KEY_FILE (not set)", "SOPS_AGE_KEY_CMD (not set)",
                  f"{home}/home/.config/sops/age/keys.txt (not found)"):
        assert place in text


def test_sops_age_key(home):
    a, b = generate_identity(), generate_identity()
    ids, searched = S.find_identities(env={**base_env(home), "SOPS_AGE_KEY": f"# comment\n{a}\n{b}\n"})
    assert ids == [a, b]
    assert "SOPS_AGE_KEY (2 identities)" in searched


def test_sops_age_key_file(home):
    a = generate_identity()
    keyfile = home / "keys.txt"
    keyfile.write_text(f"# created: now\n# public key: {recipient_from_identity(a)}\n{a}\n")
    ids, searched = S.find_identities(env={**base_env(home), "SOPS_AGE_KEY_FILE": str(keyfile)})
    assert ids == [a]
    assert f"SOPS_AGE_KEY_FILE={keyfile} (1 identity)" in searched
    ids, searched = S.find_identities(env={**base_env(home), "SOPS_AGE_KEY_FILE": str(home / "nope.txt")})
    assert ids == [] and any("cannot read" in s for s in searched)


def test_sops_age_key_cmd(home):
    a = generate_identity()
    script = home / "key.py"
    script.write_text(f"print({a!r})\n")
    ids, searched = S.find_identities(env={**base_env(home), "SOPS_AGE_KEY_CMD": f"{sys.executable} {script}"})
    assert ids == [a]
    ids, searched = S.find_identities(env={**base_env(home), "SOPS_AGE_KEY_CMD": "false"})
    assert ids == [] and any("failed: exit status 1" in s for s in searched)


def _ssh_key(path):
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                            serialization.NoEncryption())
    path.write_bytes(pem)
    return ssh_private_key_to_identity(pem)


def test_sops_age_ssh_private_key_file(home):
    expected = _ssh_key(home / "host_key")
    ids, searched = S.find_identities(env={**base_env(home), "SOPS_AGE_SSH_PRIVATE_KEY_FILE": str(home / "host_key")})
    # Converted (what sops-nix uses) and as the SSH identity itself (what sops uses).
    assert ids == [expected, (home / "host_key").read_text().strip() + "\n"]
    assert any("used as an SSH identity and converted to age" in s for s in searched)
    assert not any("BEGIN" in s for s in searched)


def test_default_ssh_id_ed25519(home):
    (home / "home" / ".ssh").mkdir()
    expected = _ssh_key(home / "home" / ".ssh" / "id_ed25519")
    ids, _ = S.find_identities(env=base_env(home))
    assert ids == [expected, (home / "home" / ".ssh" / "id_ed25519").read_text().strip() + "\n"]


def test_xdg_config_home_and_default_config(home):
    a, b = generate_identity(), generate_identity()
    xdg = home / "xdg"
    (xdg / "sops" / "age").mkdir(parents=True)
    (xdg / "sops" / "age" / "keys.txt").write_text(a + "\n")
    (home / "home" / ".config" / "sops" / "age").mkdir(parents=True)
    (home / "home" / ".config" / "sops" / "age" / "keys.txt").write_text(b + "\n")
    ids, _ = S.find_identities(env={**base_env(home), "XDG_CONFIG_HOME": str(xdg)})
    assert ids == [a]
    ids, _ = S.find_identities(env=base_env(home))
    assert ids == [b]
    # The user config file is read even when other sources are set, as sops does.
    c = generate_identity()
    ids, _ = S.find_identities(env={**base_env(home), "SOPS_AGE_KEY": c})
    assert ids == [c, b]


def test_order_and_explicit_first(home):
    a, b, c = generate_identity(), generate_identity(), generate_identity()
    keyfile = home / "k.txt"
    keyfile.write_text(b + "\n")
    ids, searched = S.find_identities(env={**base_env(home), "SOPS_AGE_KEY": c, "SOPS_AGE_KEY_FILE": str(keyfile)},
                                      explicit=[a, a])
    assert ids == [a, c, b]
    assert searched[0] == "identities passed explicitly (2 identities)"


def test_decrypt_uses_environment(home, monkeypatch):
    a = generate_identity()
    path = home / "f.yaml"
    S.encrypt_file(str(path), {"k": "v"}, [[recipient_from_identity(a)]])
    for var in ("SOPS_AGE_KEY_FILE", "SOPS_AGE_KEY_CMD", "SOPS_AGE_SSH_PRIVATE_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home / "home"))
    monkeypatch.setenv("SOPS_AGE_KEY", a)
    assert S.load(str(path)).decrypt() == {"k": "v"}
