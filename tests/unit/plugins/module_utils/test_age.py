"""age.py: bech32, recipients, identities, key files and ssh-to-age."""

from __future__ import annotations

import os
import subprocess
import sys

import nacl.bindings as sodium
import pyrage
import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, sshkeys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa


def _openssh_private(key, password: bytes | None = None) -> bytes:
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, enc)


def _openssh_public(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


# ---------------------------------------------------------------- recipients and identities
def test_generated_identity_matches_pyrage():
    for _unused in range(20):
        ident = age.generate_identity()
        assert ident.startswith("AGE-SECRET-KEY-1")
        assert age.recipient_from_identity(ident) == str(pyrage.x25519.Identity.from_str(ident).to_public())


def test_pyrage_identity_round_trips_through_our_bech32():
    ident = pyrage.x25519.Identity.generate()
    assert age.validate_identity(str(ident)) == str(ident)
    assert age.validate_recipient(str(ident.to_public())) == str(ident.to_public())


def _flip(s: str, pos: int) -> str:
    charset = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
    c = s[pos]
    repl = charset[(charset.index(c) + 1) % 32]
    return s[:pos] + repl + s[pos + 1 :]


@pytest.mark.parametrize("pos", [5, 10, 20, 30, 40, 50, 58, -1])
def test_recipient_with_one_character_changed_is_refused(pos):
    r = str(pyrage.x25519.Identity.generate().to_public())
    pos = pos % len(r)
    with pytest.raises(age.AgeKeyError, match="checksum"):
        age.validate_recipient(_flip(r, pos))


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("", "starts with 'age1'"),
        ("age1", "bech32"),
        ("AGE1QL3Z7HJY54PW3HYWW5AYYFG7ZQGVC7W3J2ELW8ZMRJ2KG5SFN9AQMCAC8P", "lower case"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM", "convert it"),
        ("age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqbbbbbb", "not allowed"),
        ("agf1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p", "starts with 'age1'"),
    ],
)
def test_bad_recipients(bad, why):
    with pytest.raises(age.AgeKeyError, match=why):
        age.validate_recipient(bad)


def test_recipient_of_wrong_length_is_refused():
    short = age.bech32_encode("age", b"\x01" * 31)
    with pytest.raises(age.AgeKeyError, match="31 bytes"):
        age.validate_recipient(short)


def test_identity_errors_never_contain_the_identity():
    ident = age.generate_identity()
    broken = ident[:-1] + ("Q" if ident[-1] != "Q" else "P")
    with pytest.raises(age.AgeKeyError) as err:
        age.validate_identity(broken)
    assert "AGE-SECRET-KEY" not in str(err.value).upper().replace("'AGE-SECRET-KEY-1'", "")
    assert broken[16:] not in str(err.value)


# ---------------------------------------------------------------- key files
def test_parse_identity_file_in_age_keygen_layout_with_crlf_and_trailing_spaces():
    a, b = age.generate_identity(), age.generate_identity()
    text = (
        "# created: 2026-01-01T00:00:00Z\r\n"
        f"# public key: {age.recipient_from_identity(a)}\r\n"
        f"{a}   \r\n"
        "\r\n"
        "   # another key, indented comment\r\n"
        f"  {b}\t\r\n"
    )
    assert age.parse_identities(text, "keys.txt") == [a, b]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_key_file_is_an_error_naming_the_file(text):
    with pytest.raises(age.AgeKeyError, match="keys.txt: no age identity"):
        age.parse_identities(text, "keys.txt")


def test_garbage_line_names_file_and_line_but_not_content():
    a = age.generate_identity()
    with pytest.raises(age.AgeKeyError) as err:
        age.parse_identities(f"{a}\nhunter2-not-a-key\n", "/k/keys.txt")
    assert "/k/keys.txt, line 2" in str(err.value)
    assert "hunter2" not in str(err.value)


def test_truncated_identity_line_is_refused():
    a = age.generate_identity()
    with pytest.raises(age.AgeKeyError, match="line 1"):
        age.parse_identities(a[:40] + "\n", "keys.txt")


def test_format_identity_file_is_parsed_back_and_names_the_recipient():
    a = age.generate_identity()
    text = age.format_identity_file(a)
    assert age.parse_identities(text) == [a]
    assert f"# public key: {age.recipient_from_identity(a)}" in text


# ---------------------------------------------------------------- ssh-to-age vs libsodium
def test_ssh_to_age_agrees_with_libsodium_for_many_random_keys():
    for _unused in range(300):
        pk, sk = sodium.crypto_sign_keypair()
        line = sshkeys.public_line(pk, "x@y")
        want_recipient = age.recipient_from_public_bytes(sodium.crypto_sign_ed25519_pk_to_curve25519(pk))
        assert age.ssh_public_key_to_recipient(line) == want_recipient
        pem = sshkeys.encode_private_key(sk[:32], pk, "x@y")
        ident = age.ssh_private_key_to_identity(pem)
        scalar = bytearray(age.bech32_decode(ident)[1])
        # ssh-to-age writes the scalar unclamped; libsodium returns it clamped. Same X25519 key.
        scalar[0] &= 248
        scalar[31] &= 127
        scalar[31] |= 64
        assert bytes(scalar) == sodium.crypto_sign_ed25519_sk_to_curve25519(sk)
        assert age.recipient_from_identity(ident) == want_recipient


def test_ssh_private_key_from_ssh_keygen_converts(tmp_path):
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "c", "-f", str(key)], check=True)
    ident = age.ssh_private_key_to_identity(key.read_bytes())
    assert age.recipient_from_identity(ident) == age.ssh_public_key_to_recipient((tmp_path / "k.pub").read_text())


@pytest.mark.parametrize(
    "fmt",
    [
        "{key}",
        "{key} root@host",
        'no-pty,command="echo hi there" {key} user@laptop',
        "host1,192.0.2.1 {key}",
        "|1|F1E1KeoE/eEWhi10WpGv4OdiO6Y=|3988QV0VE8wmZL7suNrYQLITLCg= {key}",
        "@cert-authority *.example.org {key} ca",
        "# a comment line\n{key} after-comment",
    ],
)
def test_public_key_line_shapes(fmt):
    pk, _unused = sodium.crypto_sign_keypair()
    bare = sshkeys.public_line(pk)
    want = age.recipient_from_public_bytes(sodium.crypto_sign_ed25519_pk_to_curve25519(pk))
    assert age.ssh_public_key_to_recipient(fmt.format(key=bare)) == want


@pytest.mark.parametrize(
    ("maker", "kind"),
    [
        (lambda: rsa.generate_private_key(65537, 2048), "RSA"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ECDSA"),
    ],
)
def test_non_ed25519_keys_are_refused_with_reason(maker, kind):
    key = maker()
    with pytest.raises(age.AgeKeyError, match=f"{kind}.*only convert ed25519"):
        age.ssh_public_key_to_recipient(_openssh_public(key))
    with pytest.raises(age.AgeKeyError, match=f"{kind}.*only convert ed25519"):
        age.ssh_private_key_to_identity(_openssh_private(key))


def test_dsa_key_is_refused(tmp_path):
    key = dsa.generate_private_key(1024)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    with pytest.raises(age.AgeKeyError, match="DSA.*only convert ed25519"):
        age.ssh_private_key_to_identity(pem)
    with pytest.raises(age.AgeKeyError, match="DSA.*only convert ed25519"):
        age.ssh_public_key_to_recipient("ssh-dss " + _openssh_public(key).split()[1])


def test_passphrase_protected_key():
    key = ed25519.Ed25519PrivateKey.generate()
    pem = _openssh_private(key, b"correct horse")
    want = age.ssh_public_key_to_recipient(_openssh_public(key))
    assert age.recipient_from_identity(age.ssh_private_key_to_identity(pem, "correct horse")) == want
    with pytest.raises(age.AgeKeyError, match="encrypted: give its passphrase"):
        age.ssh_private_key_to_identity(pem)
    with pytest.raises(age.AgeKeyError, match="wrong passphrase"):
        age.ssh_private_key_to_identity(pem, "wrong")


@pytest.mark.parametrize(
    ("mangle", "why"),
    [
        (lambda pem: b"", "empty"),
        (lambda pem: pem[: len(pem) // 2], "truncated"),
        (lambda pem: pem[:60] + pem[90:], "does not parse"),
        (lambda pem: b"hello world\n", "not an SSH private key"),
        (lambda pem: b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== x", "public key"),
    ],
)
def test_bad_private_key_input(mangle, why):
    pem = _openssh_private(ed25519.Ed25519PrivateKey.generate())
    bad = mangle(pem)
    with pytest.raises(age.AgeKeyError, match=why) as err:
        age.ssh_private_key_to_identity(bad)
    assert "PRIVATE KEY" not in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("ssh-ed25519", "without its base64"),
        ("ssh-ed25519 !!!notbase64", "base64"),
        ("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ==", "key data says"),
        ("age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p", "age key"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", "private key"),
        ("hello there", "no SSH public key"),
    ],
)
def test_bad_public_key_input(text, why):
    with pytest.raises(age.AgeKeyError, match=why):
        age.ssh_public_key_to_recipient(text)


def test_point_not_on_curve_is_refused():
    # y = 2 has no x on edwards25519, so this is not an ed25519 public key.
    bad = (2).to_bytes(32, "little")
    with pytest.raises(age.AgeKeyError, match="not a point on the curve"):
        age.ssh_public_key_to_recipient(sshkeys.public_line(bad))


def test_read_identity_file_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(age.AgeKeyError, match=str(missing)):
        age.read_identity_file(str(missing))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(os.urandom(64) + b"\xff\xfe")
    with pytest.raises(age.AgeKeyError, match=str(binary)):
        age.read_identity_file(str(binary))


# ---------------------------------------------------------------- the registry of key types
def _ssh_pub(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def test_every_recipient_kind_sops_accepts():
    x = age.recipient_from_identity(age.generate_identity())
    pq = age.recipient_from_identity(age.generate_identity("pq"))
    plugin = age.encode_plugin_recipient("yubikey", os.urandom(33))
    ed = _ssh_pub(ed25519.Ed25519PrivateKey.generate())
    rs = _ssh_pub(rsa.generate_private_key(65537, 2048))
    for recipient, kind in ((x, "x25519"), (pq, "pq"), (plugin, "plugin:yubikey"), (ed, "ssh-ed25519"),
                            (rs, "ssh-rsa")):
        assert age.validate_recipient(recipient) == recipient
        assert age.recipient_kind(recipient) == kind
    assert [age.key_type(k).host_usable for k in ("x25519", "pq", "ssh-ed25519", "ssh-rsa", "plugin:yubikey")] == [
        True, True, False, False, False]


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (lambda: age.bech32_encode("age1pq", os.urandom(100)), "100 bytes of key, expected 1216"),
        (lambda: age.bech32_encode("age1yu/bi", os.urandom(32)), "plugin name"),
        (lambda: "ssh-rsa " + _ssh_pub(rsa.generate_private_key(65537, 1024)).split()[1], "2048 bits"),
        (lambda: "ecdsa-sha2-nistp256 " + _ssh_pub(ec.generate_private_key(ec.SECP256R1())).split()[1], "ECDSA"),
        (lambda: "ssh-rsa " + _ssh_pub(ed25519.Ed25519PrivateKey.generate()).split()[1], "key data says .ssh-ed25519."),
    ],
)
def test_bad_recipients_of_the_new_kinds(bad, why):
    with pytest.raises(age.AgeKeyError, match=why):
        age.validate_recipient(bad())


def test_identity_kinds_and_their_recipients():
    pq = age.generate_identity("pq")
    assert age.identity_kind(pq) == "pq" and pq.startswith("AGE-SECRET-KEY-PQ-1")
    assert age.recipient_kind(age.recipient_from_identity(pq)) == "pq"
    plugin = age.encode_plugin_identity("yubikey", os.urandom(20))
    assert age.identity_kind(plugin) == "plugin:yubikey" and plugin.startswith("AGE-PLUGIN-YUBIKEY-1")
    with pytest.raises(age.AgeKeyError, match="known only to its plugin"):
        age.recipient_from_identity(plugin)
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.BestAvailableEncryption(b"p"))
    assert age.identity_kind(pem.decode()) == "ssh-ed25519"  # read from the clear part of an encrypted key
    assert age.validate_identity(pq, kinds=None) == pq
    with pytest.raises(age.AgeKeyError, match="cannot be used here"):
        age.validate_identity(plugin, kinds=("x25519", "pq"))


def test_parse_identities_keeps_its_strict_default_and_can_skip_with_a_warning():
    a, pq = age.generate_identity(), age.generate_identity("pq")
    text = f"{a}\n{pq}\nhunter2\n"
    # Default: X25519 only, and any other line is an error (what the target-side verifier relies on).
    with pytest.raises(age.AgeKeyError, match="keys.txt, line 2"):
        age.parse_identities(text, "keys.txt")
    warned: list[str] = []
    assert age.parse_identities(text, "keys.txt", kinds=None, warn=warned.append) == [a, pq]
    assert warned == [warned[0]] and "keys.txt, line 3: skipped" in warned[0] and "hunter2" not in warned[0]
    warned.clear()
    assert age.parse_identities(text, "keys.txt", warn=warned.append) == [a]
    assert [w.split(":")[0] for w in warned] == ["keys.txt, line 2", "keys.txt, line 3"]
    with pytest.raises(age.AgeKeyError, match="no usable age identity"):
        age.parse_identities("hunter2\n", "keys.txt", warn=warned.append)


def test_age_module_stays_importable_with_the_standard_library_only(repo_root):
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('cryptography', 'pyrage', 'nacl'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from ansible_collections.nixfleet.sops.plugins.module_utils import age\n"
        "i = age.generate_identity()\n"
        "assert age.parse_identities(i + '\\n') == [i]\n"
        "assert age.recipient_kind(age.recipient_from_public_bytes(bytes(32))) == 'x25519'\n"
        "assert age.identity_kind(age.generate_identity('pq')) == 'pq'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.path.join(repo_root, ".collections")}, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
