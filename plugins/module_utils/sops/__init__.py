# Copyright: nixfleet.sops contributors
# MIT License
"""Native sops engine: read and write sops files without the sops binary.

Everything written here is what sops 3.11 writes (same layout per format,
same MAC, same value encoding) and everything sops writes can be read. Only
age master keys are handled.

Public API (plain Python, no Ansible; all functions are top level and
picklable, so a caller can fan out over files with processes):

``SopsError(Exception)``
    Base error, ``.path`` names the file. Subclasses: ``SopsFormatError``
    (unsupported or malformed; its subclass ``SopsNotEncryptedError`` when
    there is no sops metadata at all), ``SopsMacError`` (tampered value or MAC),
    ``SopsDecryptError``, ``SopsNoIdentityError`` (``.recipients``,
    ``.searched``), ``SopsKeyPathError``. Messages never contain key material.
``find_identities(env=os.environ, explicit=()) -> (identities, searched)``
    Identities from the places sops looks (SOPS_AGE_SSH_PRIVATE_KEY_FILE,
    ~/.ssh/id_ed25519, SOPS_AGE_KEY, SOPS_AGE_KEY_FILE, SOPS_AGE_KEY_CMD,
    $XDG_CONFIG_HOME/sops/age/keys.txt or ~/.config/sops/age/keys.txt) and a
    description of every place searched.
``load(path, fmt=None) -> SopsFile``
    Parse the metadata only. ``SopsFile.recipients`` (list per key group),
    ``.metadata`` (``Metadata``), ``.format``, ``.data_key(identities)``,
    ``.decrypt(identities=None, keep_comments=True)`` -> dict (first document;
    bytes for binary files), ``.decrypt_documents(...)`` -> list of dicts.
``encrypt_file(path, data, key_groups, rule_options=None, shamir_threshold=None, fmt=None, dry_run=False) -> bytes``
    Create an encrypted file (``sops encrypt``).
``set_value(path, keypath, value, identities=None, create_for=None, rule_options=None, dry_run=False) -> bool``
    ``sops set``; returns changed (same value again: False, file untouched).
``unset_value(path, keypath, identities=None, dry_run=False) -> bool``
    ``sops unset``; False when the key path was not there.
``updatekeys(path, key_groups, identities=None, shamir_threshold=None, dry_run=False) -> (changed, added, removed)``
    ``sops updatekeys -y``: same data key re-wrapped; only the metadata block
    is replaced (all other bytes kept); values, mac, lastmodified unchanged.
``rotate(path, identities=None, dry_run=False) -> bytes``
    ``sops rotate``: new data key, values re-encrypted, new mac/lastmodified.

``identities`` is a list of ``AGE-SECRET-KEY-1…`` strings (only those are
used), a ``Keyring``, or None (search like sops). Documents are dicts/lists
of str/int/float/bool/None/datetime; YAML, INI and dotenv comments are kept
as :class:`Comment` dict keys (value None) or list items, so they round-trip;
``strip_comments`` removes them. Every write goes through
``fsutil.atomic_write``; a failed operation leaves the file as it was.
"""

from __future__ import annotations

from .errors import (
    SopsDecryptError,
    SopsError,
    SopsFormatError,
    SopsKeyPathError,
    SopsMacError,
    SopsNoIdentityError,
    SopsNotEncryptedError,
)
from .file import SopsFile, encrypt_file, keyring, load, rotate, set_value, unset_value, updatekeys
from .keys import Keyring, find_identities
from .metadata import AgeStanza, Metadata
from .stores import format_for_path
from .tree import Comment, comparable, strip_comments

__all__ = [
    "AgeStanza",
    "Comment",
    "Keyring",
    "Metadata",
    "SopsDecryptError",
    "SopsError",
    "SopsFile",
    "SopsFormatError",
    "SopsKeyPathError",
    "SopsMacError",
    "SopsNoIdentityError",
    "SopsNotEncryptedError",
    "comparable",
    "encrypt_file",
    "find_identities",
    "format_for_path",
    "keyring",
    "load",
    "rotate",
    "set_value",
    "strip_comments",
    "unset_value",
    "updatekeys",
]
