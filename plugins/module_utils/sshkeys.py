# Copyright: nixfleet.sops contributors
# MIT License
"""ed25519 keypairs in OpenSSH format (host keys, deploy keys).

The private key is written in the ``openssh-key-v1`` format with the comment
inside it, exactly as ``ssh-keygen -t ed25519 -N ''`` writes it, so that
``ssh-keygen -y -f key`` prints the same public line (comment included).
"""

from __future__ import annotations

import base64
import os
import struct
from dataclasses import dataclass

from .age import AgeKeyError, load_ssh_private_key, parse_ssh_public_key, ssh_public_key_to_recipient

_MAGIC = b"openssh-key-v1\x00"
_KEYTYPE = b"ssh-ed25519"


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


@dataclass(frozen=True)
class Ed25519Keypair:
    """An ed25519 keypair: ``private_pem`` is secret and must never be logged."""

    private_pem: bytes
    public_line: str

    @property
    def age_recipient(self) -> str:
        """The ``age1…`` recipient sops-nix derives from this key."""
        return ssh_public_key_to_recipient(self.public_line)

    def __repr__(self) -> str:  # keep the private key out of tracebacks and logs
        return f"Ed25519Keypair(public_line={self.public_line!r})"


def _validate_comment(comment: str) -> str:
    if any(c in comment for c in "\r\n\x00"):
        raise AgeKeyError("an SSH key comment must be a single line")
    return comment


def public_line(public: bytes, comment: str = "") -> str:
    """The ``ssh-ed25519 AAAA… comment`` line of a raw 32-byte public key."""
    blob = _string(_KEYTYPE) + _string(public)
    line = "ssh-ed25519 " + base64.b64encode(blob).decode("ascii")
    return f"{line} {comment}" if comment else line


def encode_private_key(seed: bytes, public: bytes, comment: str = "") -> bytes:
    """Serialise an unencrypted ed25519 key in OpenSSH's own format, comment inside."""
    _validate_comment(comment)
    pub_blob = _string(_KEYTYPE) + _string(public)
    check = os.urandom(4)
    private = check + check + _string(_KEYTYPE) + _string(public) + _string(seed + public)
    private += _string(comment.encode("utf-8"))
    pad = 1
    while len(private) % 8:
        private += bytes([pad])
        pad += 1
    body = _MAGIC + _string(b"none") + _string(b"none") + _string(b"") + struct.pack(">I", 1)
    body += _string(pub_blob) + _string(private)
    b64 = base64.b64encode(body).decode("ascii")
    lines = [b64[i : i + 70] for i in range(0, len(b64), 70)]
    armor = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END OPENSSH PRIVATE KEY-----\n"
    return armor.encode()


def generate(comment: str = "") -> Ed25519Keypair:
    """A new random ed25519 keypair with ``comment``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes_raw()
    public = key.public_key().public_bytes_raw()
    return Ed25519Keypair(
        private_pem=encode_private_key(seed, public, comment), public_line=public_line(public, comment)
    )


def from_private(data: bytes | str, passphrase: bytes | str | None = None) -> Ed25519Keypair:
    """Load an existing ed25519 private key; its public line keeps the stored comment."""
    key = load_ssh_private_key(data, passphrase)
    pem = data.encode() if isinstance(data, str) else data
    return Ed25519Keypair(private_pem=pem, public_line=public_line(key.public, key.comment))


def same_public_key(line_a: str, line_b: str) -> bool:
    """True when two public key lines hold the same key (comments ignored)."""
    try:
        return parse_ssh_public_key(line_a)[1] == parse_ssh_public_key(line_b)[1]
    except AgeKeyError:
        return False
