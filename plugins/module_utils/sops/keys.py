# Copyright: nixfleet.sops contributors
# MIT License
"""Finding age identities the way sops does, and wrapping/unwrapping data keys.

sops 3.11 (age/keysource.go) looks in this order and uses everything it finds:
``SOPS_AGE_SSH_PRIVATE_KEY_FILE``, ``~/.ssh/id_ed25519``, ``~/.ssh/id_rsa``,
``SOPS_AGE_KEY``, ``SOPS_AGE_KEY_FILE``, ``SOPS_AGE_KEY_CMD`` and finally
``$XDG_CONFIG_HOME/sops/age/keys.txt`` (``~/.config/…``), which is read
whenever it exists. An SSH ed25519 key is used both ways: as an SSH identity,
as sops uses it (it opens ``ssh-ed25519 …`` stanzas), and converted with
ssh-to-age's rule, as sops-nix uses it (it opens the converted ``age1…``
recipient). In identity lists an SSH identity is its OpenSSH PEM text. RSA
keys are only noted.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyrage
from pyrage import x25519

from ..age import AgeKeyError, load_ssh_private_key, parse_identities, ssh_private_key_to_identity
from ..sshkeys import public_line
from .errors import SopsError

SOPS_AGE_KEY = "SOPS_AGE_KEY"
SOPS_AGE_KEY_FILE = "SOPS_AGE_KEY_FILE"
SOPS_AGE_KEY_CMD = "SOPS_AGE_KEY_CMD"
SOPS_AGE_SSH_PRIVATE_KEY_FILE = "SOPS_AGE_SSH_PRIVATE_KEY_FILE"
USER_CONFIG_PATH = os.path.join("sops", "age", "keys.txt")


def _count(n: int) -> str:
    return f"{n} identit{'y' if n == 1 else 'ies'}"


_OPENSSH_PEM = "-----BEGIN OPENSSH PRIVATE KEY-----"


def _ssh_pair(data: bytes | str) -> list[str]:
    """An ed25519 OpenSSH key as [converted X25519 identity, the PEM itself (the SSH identity)]."""
    pem = data.decode("utf-8") if isinstance(data, bytes) else data
    return [ssh_private_key_to_identity(pem), pem.strip() + "\n"]


def _parse_text(text: str, source: str) -> list[str]:
    if text.lstrip().startswith(_OPENSSH_PEM):
        return _ssh_pair(text)
    # sops accepts an empty source (it just yields nothing); age-keygen files have comments.
    if not any(line.strip() and not line.strip().startswith("#") for line in text.splitlines()):
        return []
    return parse_identities(text, source)


def _ssh_identity(path: str, label: str, searched: list[str]) -> list[str]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        searched.append(f"{label} (cannot read: {exc.strerror})")
        return []
    try:
        pair = _ssh_pair(data)
    except AgeKeyError as exc:
        searched.append(f"{label} (not usable: {exc})")
        return []
    searched.append(f"{label} (SSH ed25519 key: used as an SSH identity and converted to age)")
    return pair


def _read_key_file(path: str, label: str, searched: list[str], missing: str | None = None) -> list[str]:
    """Identities of an age key file; what was found (or why nothing) goes into ``searched``.

    ``missing`` is how an absent file is described; None reports it like any unreadable file.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            found = _parse_text(fh.read(), path)
    except FileNotFoundError as exc:
        searched.append(f"{label} ({missing or 'cannot read: ' + (exc.strerror or 'not found')})")
        return []
    except OSError as exc:
        searched.append(f"{label} (cannot read: {exc.strerror})")
        return []
    except (AgeKeyError, UnicodeDecodeError) as exc:
        searched.append(f"{label} (invalid: {exc})")
        return []
    searched.append(f"{label} ({_count(len(found))})")
    return found


def find_identities(
    env: Mapping[str, str] | None = None, explicit: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """Collect identities like sops does; return (identities, places searched).

    ``explicit`` identities come first. The second list describes each place
    looked at and what was found there (never any key material), for error
    messages such as "no identity can open the file".
    """
    if env is None:
        env = os.environ
    identities: list[str] = []
    searched: list[str] = []
    explicit = [i for i in explicit if i]
    if explicit:
        for i, ident in enumerate(explicit):
            try:
                identities.extend(_parse_text(ident, f"explicit identity #{i + 1}"))
            except AgeKeyError as exc:
                raise SopsError(f"invalid identity passed explicitly: {exc}") from None
        searched.append(f"identities passed explicitly ({_count(len(identities))})")

    # SSH keys first, as sops' loadAgeSSHIdentities runs first.
    if SOPS_AGE_SSH_PRIVATE_KEY_FILE in env:
        path = env[SOPS_AGE_SSH_PRIVATE_KEY_FILE]
        identities += _ssh_identity(path, f"{SOPS_AGE_SSH_PRIVATE_KEY_FILE}={path}", searched)
    else:
        searched.append(f"{SOPS_AGE_SSH_PRIVATE_KEY_FILE} (not set)")
    home = env.get("HOME", "")
    if home:
        ed = os.path.join(home, ".ssh", "id_ed25519")
        if os.path.exists(ed):
            identities += _ssh_identity(ed, ed, searched)
        else:
            searched.append(f"{ed} (not found)")
        rsa = os.path.join(home, ".ssh", "id_rsa")
        if os.path.exists(rsa):
            searched.append(f"{rsa} (RSA keys cannot be converted to age, skipped)")
        else:
            searched.append(f"{rsa} (not found)")
    else:
        searched.append("~/.ssh (HOME not set)")

    if SOPS_AGE_KEY in env:
        try:
            found = _parse_text(env[SOPS_AGE_KEY], SOPS_AGE_KEY)
            searched.append(f"{SOPS_AGE_KEY} ({_count(len(found))})")
            identities += found
        except AgeKeyError as exc:
            searched.append(f"{SOPS_AGE_KEY} (invalid: {exc})")
    else:
        searched.append(f"{SOPS_AGE_KEY} (not set)")

    if SOPS_AGE_KEY_FILE in env:
        path = env[SOPS_AGE_KEY_FILE]
        identities += _read_key_file(path, f"{SOPS_AGE_KEY_FILE}={path}", searched)
    else:
        searched.append(f"{SOPS_AGE_KEY_FILE} (not set)")

    if SOPS_AGE_KEY_CMD in env:
        cmd = env[SOPS_AGE_KEY_CMD]
        label = f"{SOPS_AGE_KEY_CMD}={cmd}"
        try:
            args = shlex.split(cmd)
            proc = subprocess.run(args, capture_output=True, check=True, timeout=60, env=dict(env))
            found = _parse_text(proc.stdout.decode("utf-8"), SOPS_AGE_KEY_CMD)
            searched.append(f"{label} ({_count(len(found))})")
            identities += found
        except (OSError, ValueError, IndexError, subprocess.SubprocessError) as exc:
            reason = f"exit status {exc.returncode}" if isinstance(exc, subprocess.CalledProcessError) else (
                type(exc).__name__)
            searched.append(f"{label} (failed: {reason})")
        except AgeKeyError as exc:
            searched.append(f"{label} (invalid output: {exc})")
    else:
        searched.append(f"{SOPS_AGE_KEY_CMD} (not set)")

    config_dir = env.get("XDG_CONFIG_HOME", "")
    if config_dir and not os.path.isabs(config_dir):
        config_dir = ""
        searched.append("XDG_CONFIG_HOME (relative path, ignored as Go does)")
    elif not config_dir and home:
        config_dir = os.path.join(home, ".config")
    if config_dir:
        path = os.path.join(config_dir, USER_CONFIG_PATH)
        # sops reads this file whenever it exists; its absence is normal, not an error.
        identities += _read_key_file(path, path, searched, missing="not found")
    # Duplicates cost a decryption attempt each; keep the first occurrence.
    seen: set[str] = set()
    unique = [i for i in identities if not (i in seen or seen.add(i))]
    return unique, searched


@dataclass
class Keyring:
    """Parsed identities indexed by recipient, so each stanza costs one decryption at most."""

    identities: list[str] = field(repr=False)  # private keys: never in a repr or traceback
    searched: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_recipient: dict[str, Any] = {}
        self._all: list[Any] = []
        for ident in self.identities:
            try:
                if ident.lstrip().startswith(_OPENSSH_PEM):
                    parsed: Any = pyrage.ssh.Identity.from_buffer(ident.encode())
                    key = "ssh-ed25519 " + public_line(load_ssh_private_key(ident).public).split()[1]
                else:
                    parsed = x25519.Identity.from_str(ident)
                    key = str(parsed.to_public())
            except Exception:  # pyrage raises its own types; never echo the key
                raise SopsError("an identity could not be parsed by age") from None
            self._all.append(parsed)
            self._by_recipient[key] = parsed

    def __bool__(self) -> bool:
        return bool(self._all)

    @staticmethod
    def _key(recipient: str) -> str:
        # An ssh-ed25519 stanza names the key as "type base64 [comment]": match on type and key.
        return " ".join(recipient.split()[:2]) if recipient.startswith("ssh-") else recipient

    def has_recipient(self, recipient: str) -> bool:
        return self._key(recipient) in self._by_recipient

    def unwrap(self, recipient: str, enc: str) -> bytes | None:
        """The data key (or shamir share) in ``enc``, or None when no identity opens it."""
        ident = self._by_recipient.get(self._key(recipient))
        data = enc.encode("ascii", "replace")
        if ident is not None:
            try:
                return pyrage.decrypt(data, [ident])
            except Exception:
                return None
        return None

    def unwrap_any(self, enc: str) -> bytes | None:
        """Try every identity (for stanzas whose recipient line does not match any of ours)."""
        if not self._all:
            return None
        try:
            return pyrage.decrypt(enc.encode("ascii", "replace"), self._all)
        except Exception:
            return None


_RECIPIENT_CACHE: dict[str, x25519.Recipient] = {}


def wrap(secret: bytes, recipient: str) -> str:
    """Encrypt ``secret`` to one recipient as an armored age file (one per recipient, as sops)."""
    parsed = _RECIPIENT_CACHE.get(recipient)
    if parsed is None:
        try:
            parsed = x25519.Recipient.from_str(recipient)
        except Exception:
            raise SopsError(f"invalid age recipient {recipient!r}") from None
        _RECIPIENT_CACHE[recipient] = parsed
    return pyrage.encrypt(secret, [parsed], armored=True).decode("ascii")
