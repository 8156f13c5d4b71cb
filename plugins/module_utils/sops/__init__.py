# Copyright: nixfleet.sops contributors
# MIT License
"""Native sops engine: read and write sops files without the sops binary.

Everything written here is what sops 3.11 writes (same layout per format,
same MAC, same value encoding) and everything sops writes can be read. The
data key is wrapped and unwrapped with age only; master keys of other kinds
(pgp, kms, gcp_kms, hckms, azure_kv, hc_vault), in a key group beside age or
alone, are kept entry for entry as sops wrote them (updatekeys keeps the data
key, so they stay valid), and what only they could do (add one, rotate) is
refused naming the real sops command that can.

It has sops' own shape: a store per format (``stores``), the metadata
(``metadata``), a file opened once and changed in memory (``file``), and the
verbs of sops' command line as thin functions over that object.

Public API (plain Python, no Ansible):

``SopsFile.open(path, fmt=None) -> SopsFile``
    Read the file once and parse its metadata only (cheap). ``SopsFile(path,
    data, fmt=None)`` does the same from bytes already read.
``SopsFile.create(path, key_groups, rule_options=None, shamir_threshold=None, fmt=None, foreign=None) -> SopsFile``
    A new, empty file with a new data key (nothing on disk until ``write``).
    ``rule_options`` takes sops' rule names (unencrypted_suffix,
    encrypted_regex, mac_only_encrypted, …); ``foreign`` must name no other
    master key (only the real sops can wrap a new key for one).
On a ``SopsFile`` (``sf``):
    ``sf.recipients`` (age recipients per key group), ``sf.metadata``
    (``Metadata``; ``.stanza_problems() -> [StanzaProblem(group, recipient,
    problem)]`` checks every age stanza's structure without any identity:
    armor, age header, one stanza of the recipient's type, base64, sizes;
    ``.foreign_keys -> [{kind: [identifier]}]`` per key group and
    ``.has_foreign_keys()`` for the other master keys),
    ``sf.format``, ``sf.store`` (``Store``).
    ``sf.unlock(identities=None) -> sf``: the identities that open the data
    key; it is unwrapped on first need, once, and kept (a metadata-only
    operation that changes nothing never unwraps it).
    ``sf.documents() -> list[dict]`` (decrypted and MAC-checked once; live),
    ``sf.tree -> dict`` (the first document), ``sf.get(keypath)``,
    ``sf.set(keypath, value) -> bool``, ``sf.unset(keypath) -> bool``,
    ``sf.replace(data) -> bool`` (whole content; bytes for binary files),
    ``sf.updatekeys(key_groups, shamir_threshold=None, foreign=None, rewrap_all=True) -> (changed, added, removed)``
    (same data key; when the groups or threshold differ, another master key
    goes, or a kept recipient's stanza is structurally broken, every age
    stanza is wrapped afresh, as sops does, which repairs a corrupt one;
    ``rewrap_all=False``, as a fleet rekey does, keeps the sound stanzas).
    ``foreign`` is per key group ``{kind: [identifier]}`` as ``.sops.yaml``
    names them (pgp fingerprint, kms ARN[+role], gcp_kms resource id,
    azure_keyvault URL, hc_vault_transit_uri, hckms key id): kept when the file
    has them, dropped (``removed`` gets ``"kind:id"``) when the rule no longer
    names them, refused when the file lacks one; None keeps them all.
    ``sf.rotate()`` (new data
    key), ``sf.changed``, ``sf.encode() -> bytes`` (values encrypted again only
    when they changed, unchanged ones keep their ciphertexts; after updatekeys
    alone only the metadata block is replaced and every other byte is kept),
    ``sf.write(sink=None) -> bool`` (False: nothing to write). Also
    ``sf.decrypt(identities=None, keep_comments=True)`` (a copy: dict, or bytes
    for binary files), ``sf.decrypt_documents(...)``, ``sf.data_key(...)``.
Sinks (every write goes through one):
    ``FileSink()`` replaces the file at once (fsutil.atomic_write);
    ``StagedSink(staged=None)`` stages temps beside the files, ``.staged`` is a
    picklable list of (temp, target), ``.commit() -> [targets]`` makes them all
    durable with one sync then renames each (``StagedCommitError`` with
    ``.done``/``.left`` if a rename fails), ``.discard()``; ``NullSink()``
    (check mode) records ``.written[path] = bytes`` and writes nothing. Check
    mode is the same code with a NullSink, so ``changed`` is the same.
The verbs of the sops CLI, each opening the file once and writing at most once
(``dry_run`` means a NullSink; ``sink`` defaults to a FileSink):
    ``load(path, fmt=None) -> SopsFile``;
    ``encrypt_file(path, data, key_groups, rule_options=None, shamir_threshold=None, fmt=None, dry_run=False,
    sink=None) -> bytes``;
    ``set_value(path, keypath, value, identities=None, create_for=None, rule_options=None, dry_run=False,
    sink=None) -> bool``;
    ``unset_value(path, keypath, identities=None, dry_run=False, sink=None) -> bool``;
    ``updatekeys(path, key_groups, identities=None, shamir_threshold=None, dry_run=False, sink=None,
    foreign=None) -> (changed, added, removed)``;
    ``rotate(path, identities=None, dry_run=False, sink=None) -> bytes``.
Identities: ``find_identities(env=os.environ, explicit=()) -> (identities, searched)``
    searches where sops looks (SOPS_AGE_SSH_PRIVATE_KEY_FILE, ~/.ssh/id_ed25519,
    SOPS_AGE_KEY, SOPS_AGE_KEY_FILE, SOPS_AGE_KEY_CMD, $XDG_CONFIG_HOME/sops/age/keys.txt
    or ~/.config/sops/age/keys.txt); ``keyring(identities=None) -> Keyring``.
    ``identities`` anywhere is a list of identity strings, a ``Keyring``, or None
    (search like sops).
Formats: ``format_for_path(path)`` (as sops decides), ``store_for(fmt) -> Store``
    (``name``, ``floats``, ``structured``, ``load``, ``find_metadata``, ``emit``,
    ``emit_plain``, ``emit_metadata``, ``to_documents``, ``from_documents``).
Errors: ``SopsError`` (a NixfleetError; ``.path`` names the file), subclasses
    ``SopsFormatError`` (unsupported or malformed; ``SopsNotEncryptedError``
    when there is no sops metadata at all), ``SopsMacError`` (tampered value or
    MAC), ``SopsDecryptError``, ``SopsNoIdentityError`` (``.recipients``,
    ``.searched``), ``SopsKeyPathError``. Messages never contain key material.

Documents are dicts/lists of str/int/float/bool/None/datetime; YAML, INI and
dotenv comments are kept as :class:`Comment` dict keys (value None) or list
items, so they round-trip; ``strip_comments`` removes them, ``comparable``
compares them by text. A failed operation leaves the file as it was.
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
from .sinks import FileSink, NullSink, Sink, StagedCommitError, StagedSink
from .stanzas import StanzaProblem
from .stores import Store, format_for_path, store_for
from .tree import Comment, comparable, display_key_path, strip_comments

__all__ = [
    "AgeStanza",
    "Comment",
    "FileSink",
    "Keyring",
    "Metadata",
    "NullSink",
    "Sink",
    "SopsDecryptError",
    "SopsError",
    "SopsFile",
    "SopsFormatError",
    "SopsKeyPathError",
    "SopsMacError",
    "SopsNoIdentityError",
    "SopsNotEncryptedError",
    "StagedCommitError",
    "StagedSink",
    "StanzaProblem",
    "Store",
    "comparable",
    "display_key_path",
    "encrypt_file",
    "find_identities",
    "format_for_path",
    "keyring",
    "load",
    "rotate",
    "set_value",
    "store_for",
    "strip_comments",
    "unset_value",
    "updatekeys",
]
