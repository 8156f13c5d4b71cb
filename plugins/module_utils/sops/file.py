# Copyright: nixfleet.sops contributors
# MIT License
"""Operations on sops files: load, decrypt, encrypt, set/unset, updatekeys, rotate."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable
from typing import Any

from ..age import AgeKeyError, validate_recipient
from ..fsutil import atomic_write
from . import aes, shamir
from .errors import (
    SopsDecryptError,
    SopsError,
    SopsFormatError,
    SopsKeyPathError,
    SopsMacError,
    SopsNoIdentityError,
    SopsNotEncryptedError,
)
from .keys import Keyring, find_identities, wrap
from .metadata import RULE_FIELDS, AgeStanza, Metadata, normalize_lastmodified, now_lastmodified
from .stores import Store, format_for_path, store_for
from .tree import Comment, Rules, new_mac_hash, set_path, unset_path, walk

SOPS_VERSION = "3.11.0"
Identities = Keyring | Iterable[str] | None
_RULE_OPTIONS = (*RULE_FIELDS, "mac_only_encrypted")


def keyring(identities: Identities = None, env: Any = None) -> Keyring:
    """A Keyring: the given one, the given identities only, or (None) sops' usual places."""
    if isinstance(identities, Keyring):
        return identities
    if identities is None:
        found, searched = find_identities(env=env)
        return Keyring(found, searched)
    ids = [i for i in identities if i]
    found = find_identities(env={}, explicit=ids)[0] if ids else []
    return Keyring(found, [f"identities passed explicitly ({len(found)})"])


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise SopsError("file not found", path) from None
    except OSError as exc:
        raise SopsError(f"cannot read: {exc.strerror}", path) from None


_VALID: set[str] = set()


def _valid_recipient(r: str) -> str:
    if r in _VALID:
        return r
    r = validate_recipient(r)
    _VALID.add(r)
    return r


def _validate_groups(key_groups: list[list[str]], path: str | None) -> list[list[str]]:
    if not key_groups or not all(key_groups):
        raise SopsError("at least one non-empty key group of age recipients is needed", path)
    out = []
    for group in key_groups:
        seen: list[str] = []
        for r in group:
            try:
                r = _valid_recipient(r)
            except AgeKeyError as exc:
                raise SopsError(str(exc), path) from None
            if r not in seen:
                seen.append(r)
        out.append(seen)
    return out


class SopsFile:
    """A sops file read from disk. Parsing is lazy: metadata-only operations stay cheap."""

    def __init__(self, path: str, data: bytes, fmt: str | None = None) -> None:
        self.path = path
        self.raw = data
        self.format = fmt or format_for_path(path)
        self.store: Store = store_for(self.format)
        self._docs: list[dict] | None = None
        spans, meta = self.store.find_metadata(data, path)
        if meta is None:
            raise SopsNotEncryptedError(
                "not a sops-encrypted file (no 'sops' metadata found"
                + (f" for format {self.format}" if self.format else "") + ")",
                path,
            )
        self.spans = spans
        self.metadata = Metadata.from_mapping(meta, path)
        self._stash: dict[tuple[str, str, bytes], str] = {}

    # ----------------------------------------------------------------- metadata
    @property
    def recipients(self) -> list[list[str]]:
        """Recipients per key group, in file order."""
        return self.metadata.recipients

    @property
    def documents(self) -> list[dict]:
        """The encrypted documents as parsed (values still ENC[…])."""
        if self._docs is None:
            docs, _ = self.store.load(self.raw, self.path)
            self._docs = docs
        return self._docs

    def data_key(self, identities: Identities = None) -> bytes:
        """Recover the 32-byte data key; one decryption attempt per stanza at most."""
        return _data_key(self.metadata, keyring(identities), self.path)[0]

    # ----------------------------------------------------------------- decrypt
    def decrypt_documents(self, identities: Identities = None, keep_comments: bool = True) -> list[dict]:
        """Every document decrypted and MAC-checked (YAML files may hold several)."""
        key = self.data_key(identities)
        docs = self._decrypt_tree(key)
        if not keep_comments:
            from .tree import strip_comments

            docs = [strip_comments(d) for d in docs]
        return docs

    def decrypt(self, identities: Identities = None, keep_comments: bool = True) -> Any:
        """The plaintext: a dict (first document), or bytes for binary files.

        Raises SopsNoIdentityError when no identity opens the data key and
        SopsMacError when a value or the MAC was tampered with.
        """
        docs = self.decrypt_documents(identities, keep_comments)
        if self.format == "binary":
            return self.store.from_documents(docs, self.path)
        return docs[0] if docs else {}

    def _decrypt_tree(self, key: bytes) -> list[dict]:
        rules = self.metadata.rules
        floats = self.store.floats
        h = new_mac_hash(rules)
        stash = self._stash

        def leaf(value: Any, path: list[str], stack: list[list[str]], is_comment: bool) -> Any:
            encrypted = rules.should_encrypt(path, stack, is_comment)
            aad = ":".join(path) + ":"
            out = value
            if encrypted:
                if is_comment:
                    try:
                        plain, vtype = aes.decrypt_raw(value.text, key, aad)
                        out = aes.typed_value(plain, vtype)
                        stash[(aad, vtype, plain)] = value.text
                    except aes.ValueError_:
                        out = value  # sops keeps comments it cannot decrypt (older files)
                elif not isinstance(value, str):
                    raise SopsDecryptError(
                        f"value at '{aad[:-1] or '/'}' should be encrypted but is a plain "
                        f"{type(value).__name__}", self.path)
                elif value == "":
                    out = ""
                else:
                    try:
                        plain, vtype = aes.decrypt_raw(value, key, aad)
                        out = aes.typed_value(plain, vtype)
                    except aes.ValueError_ as exc:
                        raise SopsMacError(
                            f"cannot decrypt the value at '{aad[:-1]}': {exc}; the file was modified "
                            "outside sops or is corrupt", self.path) from None
                    stash[(aad, vtype, plain)] = value
                    if floats and vtype == "float" and plain.lstrip(b"-").isdigit():
                        out = int(plain)
            if (not rules.mac_only_encrypted or encrypted) and not isinstance(out, Comment):
                h.update(aes.to_bytes(out, floats))
            return out

        try:
            docs = walk(copy.deepcopy(self.documents), leaf)
        except TypeError as exc:
            raise SopsFormatError(str(exc), self.path) from None
        computed = h.hexdigest().upper()
        lm = normalize_lastmodified(self.metadata.lastmodified)
        try:
            stored = aes.decrypt_value(self.metadata.mac, key, lm) if self.metadata.mac else ""
        except aes.ValueError_:
            raise SopsMacError(
                "the MAC cannot be decrypted (the 'mac' or 'lastmodified' metadata was changed outside sops)",
                self.path) from None
        if stored != computed:
            raise SopsMacError(
                "MAC mismatch: the file's contents do not match its MAC (a value was changed outside sops)",
                self.path)
        return docs


# --------------------------------------------------------------------------- data key
def _data_key(meta: Metadata, kr: Keyring, path: str | None) -> tuple[bytes, dict[int, bytes]]:
    """(data key, {group index: share}) for the groups we could open."""
    parts: dict[int, bytes] = {}
    corrupt: list[str] = []
    for gi, group in enumerate(meta.key_groups):
        for stanza in group:
            part = kr.unwrap(stanza.recipient, stanza.enc)
            if part is not None:
                parts[gi] = part
                break
            if kr.has_recipient(stanza.recipient):
                corrupt.append(stanza.recipient)
        if gi not in parts and not corrupt:
            # A stanza may not match its recipient line (hand-edited file): try all identities once.
            for stanza in group:
                part = kr.unwrap_any(stanza.enc)
                if part is not None:
                    parts[gi] = part
                    break
    groups = len(meta.key_groups)
    need = 1 if groups == 1 else (meta.shamir_threshold or groups)
    if len(parts) < need:
        if corrupt:
            raise SopsDecryptError(
                "the age-encrypted data key for recipient(s) " + ", ".join(corrupt)
                + " cannot be decrypted although the matching identity is available: the 'enc' block "
                "is truncated or corrupt", path)
        listing = "; ".join(f"group {i + 1}: " + ", ".join(g) for i, g in enumerate(meta.recipients))
        where = "; ".join(kr.searched) or "nowhere (no identity given)"
        what = "no identity can open the data key" if groups == 1 else (
            f"identities open {len(parts)} of {groups} key groups, {need} needed")
        raise SopsNoIdentityError(
            f"{what}. The file's recipients are: {listing}. Identities were searched in: {where}",
            path, recipients=meta.recipients, searched=list(kr.searched))
    if groups == 1:
        key = parts[0]
    else:
        try:
            key = shamir.combine(list(parts.values()))
        except ValueError as exc:
            raise SopsDecryptError(f"cannot combine the Shamir shares of the data key: {exc}", path) from None
    if len(key) != 32:
        raise SopsDecryptError(f"the data key has {len(key)} bytes, expected 32", path)
    return key, parts


def _wrap_groups(
    key: bytes,
    groups: list[list[str]],
    threshold: int,
    old: Metadata | None = None,
    known_parts: dict[int, bytes] | None = None,
) -> list[list[AgeStanza]]:
    """Stanzas for ``groups``; recipients that stay keep their ``enc`` when the share is unchanged."""
    n = len(groups)
    reuse = old is not None and len(old.key_groups) == n and (n == 1 or old.shamir_threshold == threshold)
    if n == 1:
        shares = [key]
    elif reuse and known_parts is not None and len(known_parts) >= 2:
        # sops' shares sit at x = group index + 1, so the shares we could not open are recomputed.
        shares = [known_parts.get(i) or shamir.interpolate(list(known_parts.values()), i + 1) for i in range(n)]
    else:
        reuse = False
        shares = shamir.split(key, n, threshold)
    out = []
    for gi, group in enumerate(groups):
        existing = {s.recipient: s.enc for s in old.key_groups[gi]} if reuse and old else {}
        out.append([AgeStanza(r, existing.get(r) or wrap(shares[gi], r)) for r in group])
    return out


# --------------------------------------------------------------------------- encrypting a tree
def _encrypt_tree(
    docs: list[dict], key: bytes, rules: Rules, floats: bool, stash: dict | None, path: str | None
) -> tuple[list[dict], str]:
    h = new_mac_hash(rules)

    def leaf(value: Any, kpath: list[str], stack: list[list[str]], is_comment: bool) -> Any:
        encrypted = rules.should_encrypt(kpath, stack, is_comment)
        if not encrypted and isinstance(value, float) and value == 0:
            # -0.0 is written as '-0', which reads back as the int 0: hash what will be read.
            value = 0.0
        if (not rules.mac_only_encrypted or encrypted) and not is_comment:
            try:
                h.update(aes.to_bytes(value, floats))
            except aes.ValueError_ as exc:
                raise SopsError(f"at '{':'.join(kpath)}': {exc}", path) from None
        if not encrypted:
            return value
        aad = ":".join(kpath) + ":"
        try:
            vtype = aes.value_type(value, floats)
            plain = aes.to_bytes(value, floats)
        except aes.ValueError_ as exc:
            raise SopsError(f"at '{':'.join(kpath)}': {exc}", path) from None
        if stash is not None and (aad, vtype, plain) in stash:
            out = stash[(aad, vtype, plain)]
        else:
            out = aes.encrypt_value(value, key, aad, floats)
        if is_comment:
            text = out.text if isinstance(out, Comment) else out
            if rules.unencrypted_comment_regex and isinstance(text, str):
                import re

                if re.search(rules.unencrypted_comment_regex, text):
                    raise SopsError("an encrypted comment matches unencrypted_comment_regex", path)
            # In lists sops leaves the encrypted comment as a plain string item; mirror it.
            return text
        return out

    try:
        out = walk(copy.deepcopy(docs), leaf)
    except TypeError as exc:
        raise SopsFormatError(str(exc), path) from None
    return out, h.hexdigest().upper()


def _seal(file_meta: Metadata, docs: list[dict], key: bytes, floats: bool, stash: dict | None, path: str | None
          ) -> list[dict]:
    enc_docs, mac = _encrypt_tree(docs, key, file_meta.rules, floats, stash, path)
    file_meta.lastmodified = now_lastmodified()
    file_meta.mac = aes.encrypt_value(mac, key, file_meta.lastmodified)
    return enc_docs


def _write(path: str, data: bytes) -> None:
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise SopsError(f"cannot write: {exc.strerror}", path) from None


# --------------------------------------------------------------------------- public operations
def load(path: str, fmt: str | None = None) -> SopsFile:
    """Read a sops file and parse its metadata (nothing is decrypted)."""
    if fmt is not None:
        store_for(fmt)  # an unknown format is refused before touching the disk
    return SopsFile(path, _read(path), fmt)


def encrypt_file(
    path: str,
    data: Any,
    key_groups: list[list[str]],
    rule_options: dict[str, Any] | None = None,
    shamir_threshold: int | None = None,
    fmt: str | None = None,
    dry_run: bool = False,
) -> bytes:
    """Create ``path`` encrypted for ``key_groups`` (like ``sops encrypt``); returns the bytes written.

    ``data`` is a dict (str for one YAML document, list of dicts for several),
    or bytes for binary files. ``rule_options`` takes sops' rule names
    (unencrypted_suffix, encrypted_regex, mac_only_encrypted, …).
    """
    fmt = fmt or format_for_path(path)
    store = store_for(fmt)
    groups = _validate_groups(key_groups, path)
    opts = dict(rule_options or {})
    unknown = set(opts) - set(_RULE_OPTIONS)
    if unknown:
        raise SopsError(f"unknown rule option(s): {', '.join(sorted(unknown))}", path)
    mac_only = bool(opts.pop("mac_only_encrypted", False))
    rules = Rules(**{k: v for k, v in opts.items() if v}, mac_only_encrypted=mac_only)
    if rules.count() > 1:
        raise SopsError("only one of the suffix/regex rules can be used", path)
    docs = store.to_documents(data, path)
    if not store.structured:
        rules = Rules(mac_only_encrypted=mac_only)
    else:
        if rules.count() == 0:
            rules.unencrypted_suffix = "_unencrypted"
    n = len(groups)
    threshold = 0
    if n > 1:
        threshold = shamir_threshold or n
        if not 2 <= threshold <= n:
            raise SopsError(f"shamir_threshold must be between 2 and {n}", path)
    elif shamir_threshold:
        threshold = shamir_threshold
    key = os.urandom(32)
    meta = Metadata(key_groups=[], version=SOPS_VERSION, shamir_threshold=threshold, rules=rules)
    meta.key_groups = _wrap_groups(key, groups, threshold or 2)
    enc_docs = _seal(meta, docs, key, store.floats, None, path)
    out = store.emit(enc_docs, meta.to_mapping())
    if not dry_run:
        _write(path, out)
    return out


def _rewrite(sf: SopsFile, docs: list[dict], key: bytes, stash: dict | None) -> bytes:
    enc_docs = _seal(sf.metadata, docs, key, sf.store.floats, stash, sf.path)
    return sf.store.emit(enc_docs, sf.metadata.to_mapping())


def set_value(
    path: str,
    keypath: list[str | int],
    value: Any,
    identities: Identities = None,
    create_for: list[list[str]] | None = None,
    rule_options: dict[str, Any] | None = None,
    dry_run: bool = False,
) -> bool:
    """Set the value at ``keypath`` (like ``sops set``); True when the file changed.

    Setting the value it already has changes nothing and leaves the file
    untouched. With ``create_for`` (key groups) a missing file is created.
    Unchanged values keep their ciphertexts, as sops does.
    """
    if not keypath:
        raise SopsKeyPathError("an empty key path cannot be set", path)
    if not os.path.exists(path):
        if create_for is None:
            raise SopsError("file not found (give create_for to create it)", path)
        tree, _ = set_path({}, list(keypath), value)
        encrypt_file(path, tree, create_for, rule_options, dry_run=dry_run)
        return True
    sf = load(path)
    if sf.format == "binary":
        raise SopsError("binary files hold no key paths; use encrypt_file to replace them", path)
    kr = keyring(identities)
    key = sf.data_key(kr)
    docs = sf._decrypt_tree(key)
    if isinstance(keypath[0], int):
        raise SopsKeyPathError("the first element of a key path must be a key, not an index", path)
    docs[0], changed = set_path(docs[0], list(keypath), value)
    if not changed:
        return False
    out = _rewrite(sf, docs, key, sf._stash)
    if not dry_run:
        _write(path, out)
    return True


def unset_value(path: str, keypath: list[str | int], identities: Identities = None, dry_run: bool = False) -> bool:
    """Remove the value at ``keypath`` (like ``sops unset``); False when it was not there."""
    sf = load(path)
    kr = keyring(identities)
    key = sf.data_key(kr)
    docs = sf._decrypt_tree(key)
    try:
        docs[0] = unset_path(docs[0], list(keypath))
    except (KeyError, IndexError):
        return False
    except TypeError as exc:
        raise SopsKeyPathError(str(exc), path) from None
    out = _rewrite(sf, docs, key, sf._stash)
    if not dry_run:
        _write(path, out)
    return True


def updatekeys(
    path: str,
    key_groups: list[list[str]],
    identities: Identities = None,
    shamir_threshold: int | None = None,
    dry_run: bool = False,
    write: Callable[[str, bytes], None] | None = None,
) -> tuple[bool, set[str], set[str]]:
    """Re-wrap the same data key for ``key_groups`` (``sops updatekeys -y``).

    Values, ``mac`` and ``lastmodified`` stay; only the metadata block is
    replaced, in sops' layout, so every other byte is kept. Recipients that
    stay keep their ``enc`` (sops re-encrypts them; both are valid). Returns
    (changed, added recipients, removed recipients). ``write(path, data)``
    replaces the atomic write (a fleet operation stages every file first).
    """
    data = _read(path)
    sf = SopsFile(path, data)
    meta = sf.metadata
    if meta.has_foreign_keys():
        raise SopsError("the file has non-age master keys (pgp, kms, …); the native engine only handles age", path)
    groups = _validate_groups(key_groups, path)
    old_sets = [set(g) for g in meta.recipients]
    new_sets = [set(g) for g in groups]
    old_all = set().union(*old_sets) if old_sets else set()
    new_all = set().union(*new_sets)
    threshold = meta.shamir_threshold
    if shamir_threshold:
        threshold = shamir_threshold
    threshold = min(threshold, len(groups))
    keys_change = old_sets != new_sets
    if not keys_change and threshold == meta.shamir_threshold:
        return False, set(), set()
    added, removed = new_all - old_all, old_all - new_all
    kr = keyring(identities)
    key, parts = _data_key(meta, kr, path)
    if len(groups) > 1 and threshold < 2:
        threshold = len(groups) if not shamir_threshold else threshold
        if threshold < 2:
            raise SopsError("several key groups need a shamir_threshold of at least 2", path)
    new_meta = copy.copy(meta)
    new_meta.shamir_threshold = threshold
    new_meta.key_groups = _wrap_groups(key, groups, threshold, meta, parts)
    block = sf.store.emit_metadata(new_meta.to_mapping())
    out = bytearray()
    pos = 0
    for n, (start, end) in enumerate(sf.spans):
        out += data[pos:start]
        if n == 0 or sf.format == "yaml":
            out += block
        pos = end
    out += data[pos:]
    if not dry_run:
        (write or _write)(path, bytes(out))
    return True, added, removed


def rotate(path: str, identities: Identities = None, dry_run: bool = False) -> bytes:
    """New data key, every value re-encrypted, new MAC and lastmodified (``sops rotate``)."""
    sf = load(path)
    if sf.metadata.has_foreign_keys():
        raise SopsError("the file has non-age master keys (pgp, kms, …); the native engine only handles age", path)
    kr = keyring(identities)
    old_key = sf.data_key(kr)
    docs = sf._decrypt_tree(old_key)
    key = os.urandom(32)
    meta = sf.metadata
    threshold = meta.shamir_threshold if len(meta.key_groups) > 1 else meta.shamir_threshold
    meta.key_groups = _wrap_groups(key, meta.recipients, threshold or len(meta.key_groups))
    out = _rewrite(sf, docs, key, None)
    if not dry_run:
        _write(path, out)
    return out
