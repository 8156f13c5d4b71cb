# Copyright: nixfleet.sops contributors
# MIT License
"""ed25519 keypairs in OpenSSH format (host keys, deploy keys).

The private key is written in the ``openssh-key-v1`` format with the comment
inside it, exactly as ``ssh-keygen -t ed25519 -N ''`` writes it, so that
``ssh-keygen -y -f key`` prints the same public line (comment included). The
format itself (reading and writing) is openssh.py's; this module makes keys.
``public_line`` and ``encode_private_key`` are openssh.py's, under the names
callers know from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .age import AgeKeyError, load_ssh_private_key, parse_ssh_public_key, ssh_public_key_to_recipient
from .openssh import ed25519_public_line as public_line
from .openssh import encode_ed25519_private_key as encode_private_key


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
