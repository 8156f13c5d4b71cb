# Copyright: nixfleet.sops contributors
# MIT License
"""What an identity source holds: an age key file, an SSH private key, or a passphrase-protected file.

One reader for every place identities come from (module options, sops'
environment variables, ``~/.config/sops/age/keys.txt``). An identity is kept
as text: an age key line (X25519, post-quantum, plugin), the PEM of an SSH
private key, or the armored age file of a passphrase-protected identity file
(``age -p``) until :func:`unlock` opens it. Controller side only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .age import (
    SSH_ED25519,
    AgeKeyError,
    identity_kind,
    parse_identities,
    ssh_private_key_to_identity,
)
from .agefile import INTRO, armor, is_armored
from .ageplugin import SecretSource

# pylint cannot see that typing aliases support | (Python 3.10+).
Warn = Callable[[str], None] | None  # pylint: disable=unsupported-binary-operation
_PEM = "-----BEGIN"
PASSPHRASE_HINT = "give its passphrase with identity_passphrase or identity_passphrase_command"


def identity_texts(data: bytes | str, source: str, warn: Warn = None) -> list[str]:
    """The identities in one source, in order; [] for an empty one.

    * age key file text: every usable line (X25519, post-quantum, plugin); a
      line that is not one is skipped with a warning naming ``source`` and the
      line (raises instead when ``warn`` is None);
    * an SSH private key: its PEM (the SSH identity, as sops uses it) and, for
      an unencrypted ed25519 key, first its ssh-to-age conversion (as
      sops-nix uses it);
    * a passphrase-protected age file (binary or armored): kept, armored, for
      :func:`unlock`.
    """
    if isinstance(data, bytes):
        if data.startswith(INTRO):
            return [armor(data)]
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise AgeKeyError(f"{source}: not a text file, expected an age key file or an SSH private key") from None
    stripped = data.strip()
    if is_armored(stripped.encode("ascii", "replace")):
        return [stripped + "\n"]
    if stripped.startswith(_PEM):
        return _ssh_texts(stripped, source)
    # sops accepts an empty source (it just yields nothing); age-keygen files have comments.
    if not any(line.strip() and not line.strip().startswith("#") for line in data.splitlines()):
        return []
    return parse_identities(data, source, kinds=None, warn=warn)


def _ssh_texts(pem: str, source: str) -> list[str]:
    try:
        kind = identity_kind(pem)
    except AgeKeyError as exc:
        raise AgeKeyError(f"{source}: {exc}") from None
    text = pem + "\n"
    if kind == SSH_ED25519 and not is_locked(text):
        return [ssh_private_key_to_identity(pem), text]
    return [text]


def is_locked(identity: str) -> bool:
    """True for an identity that needs a passphrase first (protected age file, encrypted SSH key)."""
    text = identity.lstrip()
    if text.startswith("-----BEGIN AGE ENCRYPTED FILE-----"):
        return True
    if not text.startswith(_PEM):
        return False
    if "Proc-Type: 4,ENCRYPTED" in text:
        return True  # a traditional PEM key with a passphrase
    return _openssh_encrypted(text)


def _openssh_encrypted(pem: str) -> bool:
    from cryptography.hazmat.primitives import serialization

    if "OPENSSH PRIVATE KEY" not in pem:
        return False
    try:
        serialization.load_ssh_private_key(pem.encode(), password=None)
    except TypeError:
        return True  # "password was not given but private key is encrypted"
    except (ValueError, Exception):  # noqa: BLE001 - a broken key is reported when it is used
        return False
    return False


def unlock(identity: str, passphrase: SecretSource | None, source: str, warn: Warn = None) -> list[str]:
    """Open a locked identity with ``passphrase`` (asked once); return the identities inside.

    Raises AgeKeyError naming ``source`` when no passphrase was given or it is wrong.
    """
    if not passphrase:
        raise AgeKeyError(f"{source} is passphrase-protected: {PASSPHRASE_HINT}")
    secret = passphrase.get()
    if identity.lstrip().startswith("-----BEGIN AGE ENCRYPTED FILE-----"):
        return _unlock_age(identity, secret, source, warn)
    return _unlock_ssh(identity, secret, source)


def _unlock_age(text: str, secret: bytes, source: str, warn: Warn) -> list[str]:
    from .agefile import parse
    from .agekeys import SCRYPT_TYPE, unwrap_scrypt

    f = parse(text)
    if len(f.stanzas) != 1 or f.stanzas[0].type != SCRYPT_TYPE:
        raise AgeKeyError(f"{source} is an age-encrypted file, but not passphrase-protected (scrypt): "
                          "decrypt it and use the key file itself")
    file_key = unwrap_scrypt(f.stanzas[0], secret)
    if file_key is None:
        raise AgeKeyError(f"{source}: wrong passphrase")
    try:
        inner = f.open(file_key).decode("utf-8")
    except UnicodeDecodeError:
        raise AgeKeyError(f"{source}: the decrypted file is not an age key file") from None
    found = identity_texts(inner, source, warn)
    if not found or any(is_locked(i) for i in found):
        raise AgeKeyError(f"{source}: the decrypted file holds no usable identity")
    return found


def _unlock_ssh(pem: str, secret: bytes, source: str) -> list[str]:
    from cryptography.hazmat.primitives import serialization

    data = pem.strip().encode()
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=secret)
        else:
            key = serialization.load_pem_private_key(data, password=secret)
    except (ValueError, TypeError):
        raise AgeKeyError(f"{source}: cannot decrypt the SSH private key (wrong passphrase?)") from None
    except Exception:  # noqa: BLE001 - unsupported algorithms: never echo the key
        raise AgeKeyError(f"{source}: unsupported SSH private key") from None
    plain = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                              serialization.NoEncryption()).decode("ascii")
    return _ssh_texts(plain.strip(), source)


def unlock_all(identities: Iterable[str], passphrase: SecretSource | None, source: str = "identity",
               warn: Warn = None) -> list[str]:
    """Every identity, locked ones opened (the passphrase is asked once for all of them)."""
    out: list[str] = []
    for ident in identities:
        out.extend(unlock(ident, passphrase, source, warn) if is_locked(ident) else [ident])
    return out
