"""Identity lookup in the places (and order) sops 3.11 uses."""

from __future__ import annotations

import os
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
    ids, _unused = S.find_identities(env=base_env(home))
    assert ids == [expected, (home / "home" / ".ssh" / "id_ed25519").read_text().strip() + "\n"]


def test_xdg_config_home_and_default_config(home):
    a, b = generate_identity(), generate_identity()
    xdg = home / "xdg"
    (xdg / "sops" / "age").mkdir(parents=True)
    (xdg / "sops" / "age" / "keys.txt").write_text(a + "\n")
    (home / "home" / ".config" / "sops" / "age").mkdir(parents=True)
    (home / "home" / ".config" / "sops" / "age" / "keys.txt").write_text(b + "\n")
    ids, _unused = S.find_identities(env={**base_env(home), "XDG_CONFIG_HOME": str(xdg)})
    assert ids == [a]
    ids, _unused = S.find_identities(env=base_env(home))
    assert ids == [b]
    # The user config file is read even when other sources are set, as sops does.
    c = generate_identity()
    ids, _unused = S.find_identities(env={**base_env(home), "SOPS_AGE_KEY": c})
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


# ---------------------------------------------------------------- every key type, skipped lines, passphrases
from ansible_collections.nixfleet.sops.plugins.module_utils import agefile, agekeys, fleet  # noqa: E402
from ansible_collections.nixfleet.sops.plugins.module_utils.ageplugin import SecretSource  # noqa: E402
from ansible_collections.nixfleet.sops.plugins.module_utils.sops import keys  # noqa: E402


def _protect(text: str, passphrase: bytes, armored: bool = False) -> bytes:
    fk = agefile.new_file_key()
    return agefile.encrypt(text.encode(), fk, [agekeys.wrap_scrypt(fk, passphrase, log_n=10)], armored=armored)


def _counting(tmp_path, value: str):
    counter = tmp_path / "asked"
    script = tmp_path / "pass.py"
    script.write_text(f"open({str(counter)!r}, 'a').write('x')\nprint({value!r})\n")
    return f"{sys.executable} {script}", lambda: len(counter.read_text()) if counter.exists() else 0


def test_sops_age_key_cmd_output_that_is_not_a_key_says_so(home):
    ids, searched = S.find_identities(env={**base_env(home), "SOPS_AGE_KEY_CMD": "echo not-a-key"})
    assert ids == []
    line = next(s for s in searched if s.startswith("SOPS_AGE_KEY_CMD="))
    assert "output is not an age identity" in line and "failed" not in line
    script = home / "out.py"
    script.write_text("print('hunter2')\n")
    _unused, searched = S.find_identities(env={**base_env(home), "SOPS_AGE_KEY_CMD": f"{sys.executable} {script}"})
    assert any("output is not an age identity" in s for s in searched)
    assert not any("hunter2" in s for s in searched)


def test_a_bad_line_is_skipped_with_a_warning_and_the_other_keys_work(home):
    a, pq = generate_identity(), generate_identity("pq")
    keyfile = home / "keys.txt"
    keyfile.write_text(f"# keys\n{a}\nhunter2-not-a-key\nAGE-SECRET-KEY-1TRUNCATED\n{pq}\n")
    warnings: list[str] = []
    ids, searched = S.find_identities(env={**base_env(home), "SOPS_AGE_KEY_FILE": str(keyfile)}, warn=warnings.append)
    assert ids == [a, pq]
    assert any(f"{keyfile}, line 3: skipped" in w for w in warnings)
    assert any(f"{keyfile}, line 4: skipped" in w for w in warnings)
    assert not any("hunter2" in w or "TRUNCATED" in w for w in warnings + searched)
    # The same through the module-side collector.
    got: list[str] = []
    assert fleet.collect_identities([str(keyfile)], warn=got.append) == [a, pq]
    assert len(got) == 2 and all(str(keyfile) in g for g in got)


def test_post_quantum_identities_open_files_for_their_recipients(home):
    pq = generate_identity("pq")
    path = home / "pq.yaml"
    S.encrypt_file(str(path), {"k": "v"}, [[recipient_from_identity(pq)]])
    assert S.load(str(path)).recipients[0][0].startswith("age1pq1")
    assert S.load(str(path)).decrypt([pq]) == {"k": "v"}
    assert S.load(str(path)).decrypt(S.Keyring([pq])) == {"k": "v"}
    with pytest.raises(S.SopsNoIdentityError):
        S.load(str(path)).decrypt([generate_identity("pq")])


def test_passphrase_file_200_stanzas_ask_the_passphrase_source_once(home, tmp_path):
    a = generate_identity()
    recipient = recipient_from_identity(a)
    protected = agefile.armor(_protect(a + "\n", b"s3cret"))
    cmd, asked = _counting(tmp_path, "s3cret")
    kr = keys.Keyring([protected], passphrase=SecretSource(command=cmd))
    secrets = [os.urandom(32) for _unused in range(200)]
    encs = [keys.wrap(s, recipient) for s in secrets]
    assert [kr.unwrap(recipient, e) for e in encs[:100]] == secrets[:100]
    assert kr.unwrap_many([(i, [(recipient, encs[i])]) for i in range(100, 200)]) == {
        i: secrets[i] for i in range(100, 200)}
    assert asked() == 1
    assert "s3cret" not in repr(kr) and a not in repr(kr)


def test_passphrase_protected_identity_without_passphrase_says_what_to_give(home):
    a = generate_identity()
    path = home / "p.yaml"
    S.encrypt_file(str(path), {"k": "v"}, [[recipient_from_identity(a)]])
    kf = home / "keys.age"
    kf.write_bytes(_protect(a + "\n", b"pw"))
    with pytest.raises(S.SopsNoIdentityError, match="identity_passphrase"):
        S.load(str(path)).decrypt(S.keyring(None, env={**base_env(home), "SOPS_AGE_KEY_FILE": str(kf)}))
    with pytest.raises(fleet.FleetError, match="keys.age.*identity_passphrase"):
        fleet.collect_identities([str(kf)])
    with pytest.raises(fleet.FleetError, match="wrong passphrase"):
        fleet.collect_identities([str(kf)], passphrase="nope")
    assert fleet.collect_identities([str(kf)], passphrase="pw") == [a]


def test_collect_identities_with_only_a_passphrase_searches_like_sops_once(home, tmp_path, monkeypatch):
    a = generate_identity()
    kf = home / "keys.age"
    kf.write_bytes(_protect(a + "\n", b"pw", armored=True))
    for var in ("SOPS_AGE_KEY", "SOPS_AGE_KEY_CMD", "SOPS_AGE_SSH_PRIVATE_KEY_FILE", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home / "home"))
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(kf))
    cmd, asked = _counting(tmp_path, "pw")
    assert fleet.collect_identities(passphrase_command=cmd) == [a]
    assert asked() == 1
    assert fleet.collect_identities() is None


@pytest.mark.parametrize("keytype", ["ed25519", "rsa"])
def test_encrypted_ssh_keys_open_with_the_passphrase(home, keytype):
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = ed25519.Ed25519PrivateKey.generate() if keytype == "ed25519" else rsa.generate_private_key(65537, 2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                            serialization.BestAvailableEncryption(b"sshpw"))
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    kfile = home / "id"
    kfile.write_bytes(pem)
    path = home / "s.yaml"
    S.encrypt_file(str(path), {"k": "v"}, [[pub]])
    assert S.load(str(path)).recipients == [[pub]]
    ids = fleet.collect_identities([str(kfile)], passphrase="sshpw")
    assert all("ENCRYPTED" not in i and "bcrypt" not in i for i in ids)
    assert S.load(str(path)).decrypt(ids) == {"k": "v"}
    with pytest.raises(fleet.FleetError, match="give its passphrase"):
        fleet.collect_identities([str(kfile)])


def test_default_id_rsa_is_used_like_sops(home):
    from cryptography.hazmat.primitives.asymmetric import rsa

    (home / "home" / ".ssh").mkdir()
    key = rsa.generate_private_key(65537, 2048)
    (home / "home" / ".ssh" / "id_rsa").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    path = home / "s.yaml"
    S.encrypt_file(str(path), {"k": "v"}, [[pub]])
    kr = S.keyring(None, env=base_env(home))
    assert any("SSH RSA key: used as an SSH identity" in s for s in kr.searched)
    assert S.load(str(path)).decrypt(kr) == {"k": "v"}
