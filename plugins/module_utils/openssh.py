# Copyright: nixfleet.sops contributors
# MIT License
"""The one OpenSSH key parser: public key lines and private keys, standard library only.

Both sides of the collection use it: the controller (ssh-to-age in ``age.py``,
keypairs in ``sshkeys.py``, SSH identities of the sops engine) and the
target-side verifier, which runs on NixOS hosts that have Python's standard
library and nothing from PyPI. It also writes the one format the collection
produces, an unencrypted ed25519 key in ``openssh-key-v1``, exactly as
``ssh-keygen -t ed25519 -N ''`` does.

A passphrase-protected key is only described here (its type and public half,
which the format keeps in clear): decrypting it is the controller's job
(``age.load_ssh_private_key``, with ``cryptography``).

Errors are :class:`AgeKeyError` (bad key input); :class:`MalformedKeyError`
marks a key whose structure is broken. No message ever quotes key material.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from ansible_collections.nixfleet.sops.plugins.module_utils.errors import AgeKeyError

ED25519 = "ssh-ed25519"
KEY_TYPES = {
    ED25519: "ed25519",
    "ssh-rsa": "RSA",
    "ssh-dss": "DSA",
    "ecdsa-sha2-nistp256": "ECDSA",
    "ecdsa-sha2-nistp384": "ECDSA",
    "ecdsa-sha2-nistp521": "ECDSA",
    "sk-ssh-ed25519@openssh.com": "FIDO ed25519-sk",
    "sk-ecdsa-sha2-nistp256@openssh.com": "FIDO ECDSA-sk",
}
ED25519_ONLY = (
    "sops-nix and ssh-to-age can only convert ed25519 keys; "
    "use the host's /etc/ssh/ssh_host_ed25519_key(.pub)"
)

_MAGIC = b"openssh-key-v1\x00"
_OPENSSH_LABEL = "OPENSSH PRIVATE KEY"
_PEM_BEGIN = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----")
# Traditional (pre-PKCS#8) PEM labels: never ed25519, named so the refusal says what the key is.
_LEGACY_PEM = {"RSA PRIVATE KEY": "RSA", "EC PRIVATE KEY": "ECDSA", "DSA PRIVATE KEY": "DSA"}
# PKCS#8 algorithm identifiers (DER contents of the OID) and what they are.
_PKCS8_ALGORITHMS = {
    bytes.fromhex("2b6570"): "ed25519",
    bytes.fromhex("2b6571"): "Ed448",
    bytes.fromhex("2b656e"): "X25519",
    bytes.fromhex("2a864886f70d010101"): "RSA",
    bytes.fromhex("2a8648ce3d0201"): "ECDSA",
    bytes.fromhex("2a8648ce380401"): "DSA",
}


class MalformedKeyError(AgeKeyError):
    """The key's structure is broken: truncated, bad base64, halves that disagree."""


# --------------------------------------------------------------------------- wire format
def read_string(blob: bytes, offset: int) -> tuple[bytes, int]:
    """One SSH wire-format string (uint32 length, bytes) at ``offset``; returns (bytes, next offset)."""
    if offset + 4 > len(blob):
        raise MalformedKeyError("truncated SSH key data")
    (length,) = struct.unpack(">I", blob[offset : offset + 4])
    end = offset + 4 + length
    if end > len(blob):
        raise MalformedKeyError("truncated SSH key data")
    return blob[offset + 4 : end], end


def pack_string(data: bytes) -> bytes:
    """``data`` as an SSH wire-format string."""
    return struct.pack(">I", len(data)) + data


# --------------------------------------------------------------------------- public keys
class PublicKey(NamedTuple):
    """A parsed public key line: key type, the raw key blob, the comment (possibly '')."""

    keytype: str
    blob: bytes
    comment: str

    @property
    def ed25519(self) -> bytes:
        """The raw 32-byte key of an ``ssh-ed25519`` blob."""
        if self.keytype != ED25519:
            raise AgeKeyError(f"{KEY_TYPES.get(self.keytype, self.keytype)} key ({self.keytype}): {ED25519_ONLY}")
        return ed25519_key_of_blob(self.blob)


def ed25519_key_of_blob(blob: bytes) -> bytes:
    """The 32-byte key inside an ``ssh-ed25519`` public key blob."""
    keytype, off = read_string(blob, 0)
    if keytype != ED25519.encode():
        raise MalformedKeyError("not an ssh-ed25519 key blob")
    key, _unused = read_string(blob, off)
    if len(key) != 32:
        raise MalformedKeyError(f"an ed25519 public key is 32 bytes, this one has {len(key)}")
    return key


def parse_public_key(text: str) -> PublicKey:
    """Parse an SSH public key line: bare, authorized_keys (with options) or known_hosts.

    Comment lines and blank lines before the key are skipped. Raises
    AgeKeyError when no key is found or the blob does not match its declared type.
    """
    if not isinstance(text, str):
        raise AgeKeyError(f"an SSH public key must be a string, got {type(text).__name__}")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not lines:
        raise AgeKeyError("no SSH public key found (empty input)")
    if "PRIVATE KEY" in lines[0]:
        raise AgeKeyError("this is a private key, a public key was expected")
    tokens = lines[0].split()
    for i, token in enumerate(tokens):
        if token in KEY_TYPES:
            if i + 1 >= len(tokens):
                raise AgeKeyError(f"{token} key without its base64 data")
            try:
                blob = base64.b64decode(tokens[i + 1], validate=True)
            except (binascii.Error, ValueError):
                raise AgeKeyError(f"the {token} key's base64 data is invalid") from None
            inner, _unused = read_string(blob, 0)
            if inner.decode("ascii", "replace") != token:
                raise AgeKeyError(f"key data says {inner.decode('ascii', 'replace')!r} but the line says {token!r}")
            return PublicKey(token, blob, " ".join(tokens[i + 2 :]))
    if lines[0].startswith(("age1", "AGE-SECRET-KEY-")):
        raise AgeKeyError("this is an age key, an SSH ed25519 public key was expected")
    raise AgeKeyError("no SSH public key found (expected a line like 'ssh-ed25519 AAAA… comment')")


def _validate_comment(comment: str) -> str:
    if any(c in comment for c in "\r\n\x00"):
        raise AgeKeyError("an SSH key comment must be a single line")
    return comment


def ed25519_public_line(public: bytes, comment: str = "") -> str:
    """The ``ssh-ed25519 AAAA… comment`` line of a raw 32-byte public key."""
    blob = pack_string(ED25519.encode()) + pack_string(public)
    line = f"{ED25519} " + base64.b64encode(blob).decode("ascii")
    return f"{line} {comment}" if comment else line


# --------------------------------------------------------------------------- private keys
@dataclass(frozen=True)
class PrivateKey:
    """What the collection needs from an SSH private key, read without any crypto library.

    ``seed`` (the 32-byte ed25519 seed) is set for unencrypted ed25519 keys only;
    it is secret and kept out of the repr. ``keytype`` is '' when the container
    does not say (an encrypted PKCS#8 key).
    """

    keytype: str
    encrypted: bool
    public_line: str  # "ssh-ed25519 AAAA…" ('' when not known)
    seed: bytes | None = field(default=None, repr=False)
    comment: str = ""
    container: str = "openssh"  # openssh | pkcs8

    @property
    def public(self) -> bytes | None:
        """The raw 32-byte ed25519 public key, when the file states it."""
        if self.keytype != ED25519 or not self.public_line:
            return None
        return ed25519_key_of_blob(base64.b64decode(self.public_line.split()[1]))

    @property
    def kind(self) -> str:
        """A human label of the key type (``ed25519``, ``RSA``, …)."""
        return KEY_TYPES.get(self.keytype, self.keytype or "unknown")


def _as_text(data: str | bytes) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def _pem_block(text: str) -> tuple[str, bytes | None]:
    """The label of the first PEM block and its decoded body (None for legacy encrypted PEM)."""
    begin = _PEM_BEGIN.search(text)
    if begin is None:
        raise AgeKeyError("not an SSH private key (no OpenSSH or PEM key block found)")
    label = begin.group(1)
    stop = text.find(f"-----END {label}-----", begin.end())
    if stop < 0:
        raise AgeKeyError("the SSH private key is truncated (no '-----END' line)")
    if label in _LEGACY_PEM:
        return label, None
    body = "".join(text[begin.end() : stop].split())
    try:
        return label, base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedKeyError("the key block is not valid base64") from None


def parse_private_key(data: str | bytes) -> PrivateKey:
    """Parse an OpenSSH (or PKCS#8 ed25519) private key far enough to know its public half.

    The OpenSSH format stores the public key in clear even when the private part
    is encrypted; an unencrypted ed25519 key also yields its seed and comment. The
    private section's check integers, embedded public key and padding are checked,
    so a corrupt key is reported. PEM keys of other types (RSA, ECDSA, DSA) are
    refused naming their type. Raises AgeKeyError (never quoting the key).
    """
    text = _as_text(data).strip()
    if not text:
        raise AgeKeyError("the SSH private key is empty")
    if text.startswith(("ssh-", "ecdsa-", "sk-")):
        raise AgeKeyError("this is an SSH public key, a private key was expected")
    label, der = _pem_block(text)
    if label == _OPENSSH_LABEL:
        if der is None:
            raise AssertionError("internal error: der is not None does not hold")
        return _parse_openssh(der)
    if label in _LEGACY_PEM:
        raise AgeKeyError(f"{_LEGACY_PEM[label]} private key: {ED25519_ONLY}")
    if label == "ENCRYPTED PRIVATE KEY":
        return PrivateKey("", True, "", container="pkcs8")
    if label == "PRIVATE KEY":
        if der is None:
            raise AssertionError("internal error: der is not None does not hold")
        return PrivateKey(ED25519, False, "", seed=_pkcs8_ed25519_seed(der), container="pkcs8")
    raise AgeKeyError(f"not an SSH private key (a PEM block of type {label!r})")


def _parse_openssh(blob: bytes) -> PrivateKey:
    if not blob.startswith(_MAGIC):
        raise MalformedKeyError("not an openssh-key-v1 key")
    cipher, off = read_string(blob, len(_MAGIC))
    _kdf, off = read_string(blob, off)
    _kdf_options, off = read_string(blob, off)
    if off + 4 > len(blob):
        raise MalformedKeyError("truncated SSH key data")
    (count,) = struct.unpack(">I", blob[off : off + 4])
    if count != 1:
        raise MalformedKeyError(f"the file holds {count} keys, expected 1")
    pub_blob, off = read_string(blob, off + 4)
    keytype = read_string(pub_blob, 0)[0].decode("ascii", "replace")
    public_line = f"{keytype} {base64.b64encode(pub_blob).decode('ascii')}"
    if cipher != b"none":
        return PrivateKey(keytype, True, public_line)
    private, _unused = read_string(blob, off)
    if len(private) < 8 or private[:4] != private[4:8]:
        raise MalformedKeyError("the private section is corrupt (its check integers differ)")
    inner_type, p = read_string(private, 8)
    if inner_type.decode("ascii", "replace") != keytype:
        raise MalformedKeyError("the private section's key type differs from the public key's")
    if keytype != ED25519:
        return PrivateKey(keytype, False, public_line)
    public, p = read_string(private, p)
    secret, p = read_string(private, p)
    comment, p = read_string(private, p)
    if len(public) != 32 or len(secret) != 64 or secret[32:] != public or public != ed25519_key_of_blob(pub_blob):
        raise MalformedKeyError("the ed25519 key is corrupt (its public halves disagree)")
    padding = private[p:]
    if len(private) % 8 or padding != bytes(range(1, len(padding) + 1)):
        raise MalformedKeyError("the private section's padding is corrupt")
    return PrivateKey(keytype, False, public_line, seed=secret[:32], comment=comment.decode("utf-8", "replace"))


def _der(blob: bytes, offset: int, tag: int) -> tuple[bytes, int]:
    """One DER element of type ``tag`` at ``offset``: (contents, next offset)."""
    if offset + 2 > len(blob) or blob[offset] != tag:
        raise MalformedKeyError("the PKCS#8 key does not parse")
    length, offset = blob[offset + 1], offset + 2
    if length & 0x80:
        size = length & 0x7F
        if not 0 < size <= 4 or offset + size > len(blob):
            raise MalformedKeyError("the PKCS#8 key does not parse")
        length, offset = int.from_bytes(blob[offset : offset + size], "big"), offset + size
    if offset + length > len(blob):
        raise MalformedKeyError("the PKCS#8 key is truncated")
    return blob[offset : offset + length], offset + length


def _pkcs8_ed25519_seed(der: bytes) -> bytes:
    """The seed of a PKCS#8 ed25519 key (RFC 8410); other algorithms are refused by name."""
    info, _unused = _der(der, 0, 0x30)
    _version, off = _der(info, 0, 0x02)
    algorithm, off = _der(info, off, 0x30)
    oid, _unused = _der(algorithm, 0, 0x06)
    kind = _PKCS8_ALGORITHMS.get(oid)
    if kind is None:
        raise AgeKeyError(f"unsupported SSH private key type: {ED25519_ONLY}")
    if kind != "ed25519":
        raise AgeKeyError(f"{kind} private key: {ED25519_ONLY}")
    wrapped, _unused = _der(info, off, 0x04)
    seed, _unused = _der(wrapped, 0, 0x04)
    if len(seed) != 32:
        raise MalformedKeyError("the PKCS#8 ed25519 key does not hold a 32-byte seed")
    return seed


def encode_ed25519_private_key(seed: bytes, public: bytes, comment: str = "") -> bytes:
    """An unencrypted ed25519 key in OpenSSH's own format (comment inside), as ssh-keygen writes it."""
    _validate_comment(comment)
    keytype = pack_string(ED25519.encode())
    check = os.urandom(4)
    private = check + check + keytype + pack_string(public) + pack_string(seed + public)
    private += pack_string(comment.encode("utf-8"))
    private += bytes(range(1, 1 + (-len(private)) % 8))
    body = _MAGIC + pack_string(b"none") + pack_string(b"none") + pack_string(b"") + struct.pack(">I", 1)
    body += pack_string(keytype + pack_string(public)) + pack_string(private)
    b64 = base64.b64encode(body).decode("ascii")
    lines = [b64[i : i + 70] for i in range(0, len(b64), 70)]
    armor = f"-----BEGIN {_OPENSSH_LABEL}-----\n" + "\n".join(lines) + f"\n-----END {_OPENSSH_LABEL}-----\n"
    return armor.encode()
