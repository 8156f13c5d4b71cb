"""openssh.py: the one OpenSSH key parser, against ssh-keygen and cryptography, and against broken keys."""

from __future__ import annotations

import base64
import os
import struct
import subprocess
import sys

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, openssh
from ansible_collections.nixfleet.sops.plugins.module_utils.errors import AgeKeyError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from tests.lib.runner import REPO


def _keygen(tmp_path, *args: str) -> tuple[str, str]:
    path = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", *args, "-f", str(path)], check=True, stdin=subprocess.DEVNULL)
    return path.read_text(), (tmp_path / "k.pub").read_text()


def _body(pem: bytes) -> bytes:
    return base64.b64decode(b"".join(ln for ln in pem.splitlines() if not ln.startswith(b"-----")))


def _armor(blob: bytes) -> bytes:
    return b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + base64.b64encode(blob) + b"\n-----END OPENSSH PRIVATE KEY-----\n"


def test_ssh_keygen_ed25519_key(tmp_path) -> None:
    private, public = _keygen(tmp_path, "-t", "ed25519", "-N", "", "-C", "root@griefling")
    key = openssh.parse_private_key(private)
    got = (key.keytype, key.encrypted, key.comment, key.container)
    assert got == ("ssh-ed25519", False, "root@griefling", "openssh")
    assert key.public_line.split() == public.split()[:2]
    assert age.ssh_seed_recipient(key.seed) == age.ssh_public_key_to_recipient(public)
    assert "seed" not in repr(key) and private.splitlines()[1][:20] not in repr(key)


def test_passphrase_protected_key_still_names_its_public_half(tmp_path) -> None:
    private, public = _keygen(tmp_path, "-t", "ed25519", "-N", "correct horse", "-C", "x")
    key = openssh.parse_private_key(private)
    assert key.encrypted and key.seed is None and key.comment == ""
    assert key.public_line.split() == public.split()[:2]


@pytest.mark.parametrize(("args", "keytype"), [(("-t", "rsa", "-b", "2048"), "ssh-rsa"),
                                               (("-t", "ecdsa"), "ecdsa-sha2-nistp256")])
def test_other_openssh_key_types_are_described_not_refused(tmp_path, args, keytype) -> None:
    private, public = _keygen(tmp_path, *args, "-N", "")
    key = openssh.parse_private_key(private)
    assert key.keytype == keytype and key.seed is None and not key.encrypted
    assert key.public_line.split() == public.split()[:2]


def test_encoded_key_round_trips_and_ssh_keygen_reads_it(tmp_path) -> None:
    sk = ed25519.Ed25519PrivateKey.generate()
    seed, public = sk.private_bytes_raw(), sk.public_key().public_bytes_raw()
    pem = openssh.encode_ed25519_private_key(seed, public, "deploy key")
    key = openssh.parse_private_key(pem)
    assert (key.seed, key.public, key.comment) == (seed, public, "deploy key")
    path = tmp_path / "k"
    path.write_bytes(pem)
    path.chmod(0o600)
    out = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == openssh.ed25519_public_line(public, "deploy key") == key.public_line + " deploy key"


def test_pkcs8_keys() -> None:
    sk = ed25519.Ed25519PrivateKey.generate()
    pem = sk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    key = openssh.parse_private_key(pem)
    assert key.container == "pkcs8" and key.seed == sk.private_bytes_raw() and key.public is None
    locked = sk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.BestAvailableEncryption(b"pw"))
    assert openssh.parse_private_key(locked).encrypted
    others = ((rsa.generate_private_key(65537, 2048), "RSA"), (ec.generate_private_key(ec.SECP256R1()), "ECDSA"),
              (dsa.generate_private_key(1024), "DSA"))
    for other, kind in others:
        for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
            pem = other.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
            with pytest.raises(AgeKeyError, match=f"^{kind} private key: .*only convert ed25519"):
                openssh.parse_private_key(pem)


def _reencode(pem: bytes, edit) -> bytes:
    """The key with its private section changed by ``edit`` (structure kept, so only the edit is wrong)."""
    blob = _body(pem)
    off = len(b"openssh-key-v1\x00")
    for _unused in range(3):
        _unused, off = openssh.read_string(blob, off)
    _unused, after_pub = openssh.read_string(blob, off + 4)
    private, _unused = openssh.read_string(blob, after_pub)
    return _armor(blob[:after_pub] + openssh.pack_string(edit(bytearray(private))))


@pytest.mark.parametrize(("edit", "why"), [
    (lambda p: p[:4] + b"\0\0\0\0" + p[8:], "check integers"),
    (lambda p: p[:-1] + b"\x09", "padding"),
    # The 64-byte secret is seed || public; change the public copy.
    (lambda p: p[:8 + 15 + 36 + 4 + 32] + bytes([p[8 + 15 + 36 + 4 + 32] ^ 1]) + p[8 + 15 + 36 + 4 + 33:],
     "public halves disagree"),
])
def test_corrupt_private_sections_are_refused(edit, why) -> None:
    pem = openssh.encode_ed25519_private_key(os.urandom(32), os.urandom(32), "c")
    with pytest.raises(openssh.MalformedKeyError, match=why):
        openssh.parse_private_key(_reencode(pem, edit))


def test_seed_that_does_not_give_the_stated_public_key_is_refused_by_the_loader() -> None:
    sk = ed25519.Ed25519PrivateKey.generate()
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    pem = openssh.encode_ed25519_private_key(sk.private_bytes_raw(), other, "c")
    openssh.parse_private_key(pem)  # structurally fine ...
    with pytest.raises(AgeKeyError, match="corrupt .*halves disagree"):
        age.load_ssh_private_key(pem)  # ... but it would be registered under a recipient it cannot open


def test_every_truncation_and_byte_flip_is_an_age_key_error() -> None:
    """Hostile bytes never escape as IndexError/struct.error/UnicodeError, and never echo the key."""
    pem = openssh.encode_ed25519_private_key(os.urandom(32), os.urandom(32), "comment")
    blob = _body(pem)
    for cut in range(len(blob)):
        with pytest.raises(AgeKeyError) as err:
            openssh.parse_private_key(_armor(blob[:cut]))
        assert "PRIVATE KEY" not in str(err.value)
    for pos in range(len(blob)):
        flipped = bytearray(blob)
        flipped[pos] ^= 0xFF
        try:
            openssh.parse_private_key(_armor(bytes(flipped)))
        except AgeKeyError:
            pass
    huge = blob[: len(b"openssh-key-v1\x00")] + struct.pack(">I", 2**32 - 1)
    with pytest.raises(openssh.MalformedKeyError, match="truncated"):
        openssh.parse_private_key(_armor(huge))


@pytest.mark.parametrize(("text", "why"), [
    ("", "empty"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== x", "public key"),
    ("hello", "no OpenSSH or PEM key block"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n", "truncated"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\n!!!!\n-----END OPENSSH PRIVATE KEY-----\n", "base64"),
    ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "CERTIFICATE"),
])
def test_not_a_private_key(text, why) -> None:
    with pytest.raises(AgeKeyError, match=why):
        openssh.parse_private_key(text)


def test_public_key_line_and_blob() -> None:
    public = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    parsed = openssh.parse_public_key('no-pty,command="x y" ' + openssh.ed25519_public_line(public, "me@x"))
    assert (parsed.keytype, parsed.comment, parsed.ed25519) == ("ssh-ed25519", "me@x", public)
    keytype, blob, comment = parsed  # the tuple shape age.parse_ssh_public_key always had
    assert blob == parsed.blob
    short = openssh.pack_string(b"ssh-ed25519") + openssh.pack_string(public[:31])
    with pytest.raises(openssh.MalformedKeyError, match="32 bytes"):
        _unused = openssh.parse_public_key("ssh-ed25519 " + base64.b64encode(short).decode()).ed25519


# The ed25519 public key of the all-zero seed (the loader checks the pair, so a wrong value fails the test).
ZERO_SEED_PUBLIC = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"


def test_the_parser_needs_only_the_standard_library() -> None:
    """The verifier runs on NixOS hosts without PyPI packages: openssh.py (and age.py's pure parts) must import
    and parse with every non-stdlib module blocked."""
    code = f"""
import sys
sys.path.insert(0, {os.path.join(REPO, '.collections')!r})
class Block:
    def find_spec(self, name, path=None, target=None):
        top = name.split('.')[0]
        if top not in sys.stdlib_module_names and top != 'ansible_collections':
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from ansible_collections.nixfleet.sops.plugins.module_utils import age, openssh
pem = openssh.encode_ed25519_private_key(bytes(32), bytes.fromhex({ZERO_SEED_PUBLIC!r}), 'c')
key = age.load_ssh_private_key(pem)
print(age.ssh_seed_recipient(key.seed) == age.ssh_private_key_to_recipient(pem))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
