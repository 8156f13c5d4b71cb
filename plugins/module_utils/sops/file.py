# Copyright: nixfleet.sops contributors
# MIT License
"""A sops file as an object, opened once: read, decrypt, change, encode, write through a sink.

The module-level functions (``load``, ``encrypt_file``, ``set_value``,
``unset_value``, ``updatekeys``, ``rotate``) are the command-line verbs of
sops over that object: each opens the file once and writes it at most once.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from ..fsutil import SOPS_FILE_LIMIT, UnsafePathError, read_regular
from . import foreign as fk
from .cipher import Stash, decrypt_tree, seal
from .errors import SopsError, SopsKeyPathError, SopsNotEncryptedError
from .keygroups import Identities, keyring, recover_key, shares_for, validate_groups, wrap_groups
from .keys import Keyring
from .metadata import RULE_FIELDS, Metadata
from .sinks import FileSink, NullSink, Sink
from .stores import Store, format_for_path, store_for
from .tree import Rules, comparable, display_key_path, get_path, set_path, strip_comments, unset_path

SOPS_VERSION = "3.11.0"
_RULE_OPTIONS = (*RULE_FIELDS, "mac_only_encrypted")


def _read(path: str) -> bytes:
    try:
        return read_regular(path, SOPS_FILE_LIMIT, "sops file")
    except FileNotFoundError:
        raise SopsError("file not found", path) from None
    except UnsafePathError as exc:
        raise SopsError(exc.message.removeprefix(f"{path}: "), path) from None
    except OSError as exc:
        raise SopsError(f"cannot read: {exc.strerror}", path) from None


def _rules(rule_options: dict[str, Any] | None, store: Store, path: str | None) -> Rules:
    """The encryption rules of a new file from sops' rule option names."""
    opts = dict(rule_options or {})
    unknown = set(opts) - set(_RULE_OPTIONS)
    if unknown:
        raise SopsError(f"unknown rule option(s): {', '.join(sorted(unknown))}", path)
    mac_only = bool(opts.pop("mac_only_encrypted", False))
    rules = Rules(**{k: v for k, v in opts.items() if v}, mac_only_encrypted=mac_only)
    if rules.count() > 1:
        raise SopsError("only one of the suffix/regex rules can be used", path)
    if not store.structured:
        return Rules(mac_only_encrypted=mac_only)
    if rules.count() == 0:
        rules.unencrypted_suffix = "_unencrypted"
    return rules


def _threshold(n: int, shamir_threshold: int | None, path: str | None) -> int:
    if n > 1:
        threshold = shamir_threshold or n
        if not 2 <= threshold <= n:
            raise SopsError(f"shamir_threshold must be between 2 and {n}", path)
        return threshold
    return shamir_threshold or 0


class SopsFile:
    """One sops file, opened once.

    Opening parses only the metadata (cheap: what a fleet scan needs). The
    data key is unwrapped the first time it is needed and kept; the values are
    decrypted and the MAC checked once, on first access. Changes (set, unset,
    replace, updatekeys, rotate) apply to this object; ``encode()`` gives the
    new bytes and ``write(sink)`` hands them to a sink.
    """

    def __init__(self, path: str, data: bytes, fmt: str | None = None) -> None:
        self._setup(path, fmt)
        self.raw: bytes | None = data
        spans, meta = self.store.find_metadata(data, path)
        if meta is None:
            raise SopsNotEncryptedError(
                "not a sops-encrypted file (no 'sops' metadata found"
                + (f" for format {self.format}" if self.format else "") + ")",
                path,
            )
        self.spans: list[tuple[int, int]] | None = spans
        self.metadata = Metadata.from_mapping(meta, path)

    def _setup(self, path: str, fmt: str | None) -> None:
        self.path = path
        self.format = fmt or format_for_path(path)
        self.store: Store = store_for(self.format)
        self._encrypted: list[dict] | None = None
        self._keyring: Keyring | None = None
        self._key: bytes | None = None
        self._parts: dict[int, bytes] = {}
        self._plain: list[dict] | None = None
        self._stash: Stash = {}
        self._values_changed = False  # values must be encrypted again (new MAC, lastmodified)
        self._metadata_changed = False  # only the metadata block changes (updatekeys)
        self._encoded: bytes | None = None

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str, fmt: str | None = None) -> SopsFile:
        """Read ``path`` once and parse its metadata (nothing is decrypted)."""
        if fmt is not None:
            store_for(fmt)  # an unknown format is refused before touching the disk
        return cls(path, _read(path), fmt)

    @classmethod
    def create(
        cls,
        path: str,
        key_groups: list[list[str]],
        rule_options: dict[str, Any] | None = None,
        shamir_threshold: int | None = None,
        fmt: str | None = None,
        foreign: list[dict[str, Any]] | None = None,
    ) -> SopsFile:
        """A new, empty sops file for ``key_groups`` (nothing is written until ``write``).

        ``rule_options`` takes sops' rule names (unencrypted_suffix,
        encrypted_regex, mac_only_encrypted, …). A new data key is made here;
        fill the file with ``set`` or ``replace``. ``foreign`` (other master
        keys, as for updatekeys) must name none: only the real sops can wrap
        a new data key for them.
        """
        wanted = fk.normalize(foreign, len(key_groups), path) or []
        if any(wanted):
            names = ", ".join(f"{k}:{i}" for g in wanted for k, ids in g.items() for i in ids)
            raise SopsError(
                f"the rule also names {names}, for which this engine cannot wrap a data key (only age "
                "recipients); create the file with the real sops: sops encrypt", path)
        sf = cls.__new__(cls)
        sf._setup(path, fmt)
        groups = validate_groups(key_groups, path)
        rules = _rules(rule_options, sf.store, path)
        threshold = _threshold(len(groups), shamir_threshold, path)
        key = os.urandom(32)
        shares, _unused = shares_for(key, len(groups), threshold or 2)
        sf.raw = None
        sf.spans = []
        sf.metadata = Metadata(key_groups=wrap_groups(shares, groups), version=SOPS_VERSION,
                               shamir_threshold=threshold, rules=rules)
        sf._key, sf._parts = key, dict(enumerate(shares))
        sf._plain = sf.store.to_documents(b"" if not sf.store.structured else {}, path)
        sf._values_changed = True
        return sf

    # ----------------------------------------------------------------- metadata
    @property
    def recipients(self) -> list[list[str]]:
        """Age recipients per key group, in file order."""
        return self.metadata.recipients

    @property
    def encrypted_documents(self) -> list[dict]:
        """The documents as written in the file (values still ENC[…]), parsed on first use."""
        if self._encrypted is None:
            if self.raw is None:
                return []
            self._encrypted, _unused = self.store.load(self.raw, self.path)
        return self._encrypted

    # ----------------------------------------------------------------- keys
    def unlock(self, identities: Identities = None) -> SopsFile:
        """Open the data key with ``identities`` (a Keyring, ``AGE-SECRET-KEY-1…`` strings, or None:
        search like sops). Returns the file itself.

        The key is unwrapped the first time it is needed, once, and kept (a
        metadata-only operation that changes nothing never unwraps it). A file
        never unlocked searches like sops then.
        """
        self._keyring = keyring(identities)
        if self.raw is not None:
            self._key, self._parts = None, {}  # proven again with these identities
        return self

    def data_key(self, identities: Identities = None) -> bytes:
        """The 32-byte data key; one decryption attempt per stanza at most, then cached."""
        if identities is not None:
            self.unlock(identities)
        if self._key is None:
            if self._keyring is None:
                self._keyring = keyring(None)
            self._key, self._parts = recover_key(self.metadata, self._keyring, self.path)
        return self._key

    # ----------------------------------------------------------------- values
    def documents(self) -> list[dict]:
        """Every document, decrypted and MAC-checked once (YAML files may hold several).

        These are the live documents: change them through set/unset/replace.
        Raises SopsNoIdentityError when no identity opens the data key and
        SopsMacError when a value or the MAC was tampered with.
        """
        if self._plain is None:
            key = self.data_key()
            self._plain = decrypt_tree(self.encrypted_documents, key, self.metadata, self.store.floats,
                                       self._stash, self.path)
        return self._plain

    @property
    def tree(self) -> dict:
        """The first document, decrypted (a binary file's is ``{"data": …}``)."""
        docs = self.documents()
        return docs[0] if docs else {}

    def decrypt_documents(self, identities: Identities = None, keep_comments: bool = True) -> list[dict]:
        """A copy of every decrypted document, optionally without comments.

        Explicit ``identities`` must open the data key themselves, even when the
        values were decrypted before.
        """
        if identities is not None:
            self.unlock(identities)
            self.data_key()
        docs = self.documents()
        return [strip_comments(d) for d in docs] if not keep_comments else copy.deepcopy(docs)

    def decrypt(self, identities: Identities = None, keep_comments: bool = True) -> Any:
        """The plaintext: a dict (first document), or bytes for binary files (a copy)."""
        return self.store.from_documents(self.decrypt_documents(identities, keep_comments), self.path)

    def _keypath(self, keypath: list[str | int], verb: str) -> list[str | int]:
        if not self.store.structured:
            raise SopsError("binary files hold no key paths; decrypt() and replace() take their whole content",
                            self.path)
        if not keypath:
            raise SopsKeyPathError(f"an empty key path cannot be {verb}", self.path)
        if isinstance(keypath[0], int):
            raise SopsKeyPathError("the first element of a key path must be a key, not an index", self.path)
        return list(keypath)

    def get(self, keypath: list[str | int]) -> Any:
        """The decrypted value at ``keypath`` (comments kept); SopsKeyPathError when there is none."""
        try:
            return get_path(self.tree, self._keypath(keypath, "read"))
        except (KeyError, IndexError, TypeError):
            raise SopsKeyPathError(f"no value at key path {display_key_path(keypath)!r}", self.path) from None

    def set(self, keypath: list[str | int], value: Any) -> bool:
        """Set the value at ``keypath`` (``sops set``); False when it already holds ``value``."""
        keypath = self._keypath(keypath, "set")
        docs = self.documents()
        docs[0], changed = set_path(docs[0], keypath, value)
        if changed:
            self._touch_values()
        return changed

    def unset(self, keypath: list[str | int]) -> bool:
        """Remove the value at ``keypath`` (``sops unset``); False when it was not there."""
        keypath = self._keypath(keypath, "unset")
        docs = self.documents()
        try:
            docs[0] = unset_path(docs[0], keypath)
        except (KeyError, IndexError):
            return False
        except TypeError as exc:
            raise SopsKeyPathError(str(exc), self.path) from None
        self._touch_values()
        return True

    def replace(self, data: Any) -> bool:
        """Replace the whole content (a mapping, a list of YAML documents, bytes for binary files)."""
        docs = self.store.to_documents(data, self.path)
        # An existing file must open first: unchanged values keep their ciphertexts, and a
        # file nobody can read is not silently replaced.
        if self.raw is not None and comparable(self.documents()) == comparable(docs):
            return False
        self._plain = copy.deepcopy(docs)
        self._touch_values()
        return True

    def _touch_values(self) -> None:
        self._values_changed = True
        self._encoded = None

    # ----------------------------------------------------------------- keys of the file
    def updatekeys(
        self,
        key_groups: list[list[str]],
        shamir_threshold: int | None = None,
        foreign: list[dict[str, Any]] | None = None,
        rewrap_all: bool = True,
    ) -> tuple[bool, set[str], set[str]]:
        """Wrap the same data key for ``key_groups`` (``sops updatekeys -y``).

        Something changes when the recipients per group or the threshold
        differ, when an other master key goes, or when the ``enc`` of a
        recipient that stays is structurally broken (Metadata.stanza_problems).
        Then every age stanza is wrapped afresh, as sops does, which also
        repairs a corrupt one. Values, ``mac`` and ``lastmodified`` stay; only
        the metadata block changes (every other byte of the file is kept). The
        data key is unwrapped (from age stanzas) only when something changes.

        ``rewrap_all=False`` (a fleet rekey) wraps only for the recipients
        added and those whose stanza is structurally broken, and keeps the
        sound stanzas of a group whose share of the data key stays: one age
        encryption per added recipient instead of one per recipient. What it
        cannot repair is a stanza that is well-formed but does not decrypt
        (only its recipient's key could tell); ``rewrap_all`` does.

        ``foreign`` gives the other master keys the rule names, per key group:
        ``{"pgp": [fingerprint], "kms": [arn], "gcp_kms": [resource id],
        "azure_kv": [url], "hc_vault": [uri], …}`` (``.sops.yaml`` spellings
        too). Those the file has stay as sops wrote them (the data key does not
        change, so they stay valid); those it no longer names are dropped; one
        it does not have is refused (only the real sops can wrap for it). None:
        keep each group's other master keys as they are.

        Returns (changed, added recipients, removed recipients and ``kind:id``).
        """
        meta = self.metadata
        kept, dropped, missing = fk.plan(meta.foreign, len(key_groups),
                                         fk.normalize(foreign, len(key_groups), self.path))
        if missing:
            raise SopsError(
                f"the rule adds {', '.join(missing)}, for which this engine cannot wrap the data key (only age "
                f"recipients); add it with the real sops: sops updatekeys {self.path}", self.path)
        groups = validate_groups(key_groups, self.path, [bool(g) for g in kept])
        old_sets = [set(g) for g in meta.recipients]
        new_sets = [set(g) for g in groups]
        old_all = set().union(*old_sets) if old_sets else set()
        new_all = set().union(*new_sets)
        threshold = min(shamir_threshold or meta.shamir_threshold, len(groups))
        problems = {(p.group, p.recipient) for p in meta.stanza_problems()}
        broken = any(g < len(groups) and r in groups[g] for g, r in problems)
        if old_sets == new_sets and threshold == meta.shamir_threshold and not broken and not dropped:
            return False, set(), set()
        key = self.data_key()
        if len(groups) > 1 and threshold < 2:
            threshold = len(groups) if not shamir_threshold else threshold
            if threshold < 2:
                raise SopsError("several key groups need a shamir_threshold of at least 2", self.path)
        shares, same = shares_for(key, len(groups), threshold, meta, self._parts)
        if not same and any(kept):
            raise SopsError(
                f"the file keeps {fk.describe(kept)}, but the key groups' shares of the data key change with the "
                "number of key groups or the shamir threshold, and only the real sops can wrap the new shares for "
                f"them: sops updatekeys {self.path}", self.path)
        new_meta = copy.copy(meta)
        new_meta.shamir_threshold = threshold
        keep = None if rewrap_all or not same else [
            {st.recipient: st for st in old if (gi, st.recipient) not in problems}
            for gi, old in enumerate(meta.key_groups)]
        new_meta.key_groups = wrap_groups(shares, groups, keep)
        new_meta.foreign = kept
        self.metadata = new_meta
        self._parts = dict(enumerate(shares))  # what the new groups hold, for a later change
        self._metadata_changed = True
        self._encoded = None
        return True, new_all - old_all, (old_all - new_all) | set(dropped)

    def rotate(self) -> None:
        """New data key, every value encrypted again, new MAC and lastmodified (``sops rotate``).

        A file that also has other master keys (pgp, kms, …) is refused: the
        new key would have to be wrapped for them too.
        """
        meta = self.metadata
        if meta.has_foreign_keys():
            raise SopsError(
                f"the file also has {fk.describe(meta.foreign)}: a new data key must be wrapped for them too, which "
                f"only the real sops can do: sops rotate -i {self.path}", self.path)
        self.documents()  # decrypted with the old key before it is replaced
        key = os.urandom(32)
        threshold = meta.shamir_threshold or len(meta.key_groups)
        shares, _unused = shares_for(key, len(meta.key_groups), threshold)
        meta.key_groups = wrap_groups(shares, meta.recipients)
        self._key, self._parts, self._stash = key, dict(enumerate(shares)), {}
        self._touch_values()

    # ----------------------------------------------------------------- output
    @property
    def changed(self) -> bool:
        """Whether ``encode()`` differs from what was read (a new file always is)."""
        return self.raw is None or self._values_changed or self._metadata_changed

    def encode(self) -> bytes:
        """The file's bytes: values encrypted again only when they changed.

        Unchanged values keep their ciphertexts. After updatekeys alone only
        the metadata block is replaced, in sops' layout, and every other byte
        is kept. Stable: calling it again without a change gives the same bytes.
        """
        if self._encoded is None:
            if self._values_changed:
                enc_docs = seal(self.metadata, self.documents(), self.data_key(), self.store.floats,
                                self._stash, self.path)
                self._encoded = self.store.emit(enc_docs, self.metadata.to_mapping())
            elif self._metadata_changed and self.raw is not None:
                self._encoded = self._splice_metadata(self.raw)
            else:
                self._encoded = self.raw or b""
        return self._encoded

    def _splice_metadata(self, data: bytes) -> bytes:
        if self.spans is None:
            self.spans, _unused = self.store.find_metadata(data, self.path)
        block = self.store.emit_metadata(self.metadata.to_mapping())
        out = bytearray()
        pos = 0
        for n, (start, end) in enumerate(self.spans):
            out += data[pos:start]
            if n == 0 or self.store.multi_document:
                out += block
            pos = end
        out += data[pos:]
        return bytes(out)

    def write(self, sink: Sink | None = None) -> bool:
        """Hand the new bytes to ``sink`` (default: replace the file atomically); False when unchanged."""
        if not self.changed:
            return False
        data = self.encode()
        (sink if sink is not None else FileSink()).write(self.path, data)
        self.raw = data
        self.spans = None  # found again only if this object changes the file once more
        self._encrypted = None
        self._values_changed = self._metadata_changed = False
        return True


# --------------------------------------------------------------------------- the verbs of the sops CLI
def _sink(dry_run: bool, sink: Sink | None) -> Sink:
    return NullSink() if dry_run else (sink if sink is not None else FileSink())


def load(path: str, fmt: str | None = None) -> SopsFile:
    """Read a sops file and parse its metadata (nothing is decrypted): ``SopsFile.open``."""
    return SopsFile.open(path, fmt)


def encrypt_file(
    path: str,
    data: Any,
    key_groups: list[list[str]],
    rule_options: dict[str, Any] | None = None,
    shamir_threshold: int | None = None,
    fmt: str | None = None,
    dry_run: bool = False,
    sink: Sink | None = None,
) -> bytes:
    """Create ``path`` encrypted for ``key_groups`` (like ``sops encrypt``); returns the bytes written.

    ``data`` is a dict (a list of dicts for several YAML documents), or bytes
    for binary files. ``rule_options`` takes sops' rule names.
    """
    sf = SopsFile.create(path, key_groups, rule_options, shamir_threshold, fmt)
    sf.replace(data)
    out = sf.encode()
    sf.write(_sink(dry_run, sink))
    return out


def set_value(
    path: str,
    keypath: list[str | int],
    value: Any,
    identities: Identities = None,
    create_for: list[list[str]] | None = None,
    rule_options: dict[str, Any] | None = None,
    dry_run: bool = False,
    sink: Sink | None = None,
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
        sf = SopsFile.create(path, create_for, rule_options)
    else:
        sf = SopsFile.open(path).unlock(identities)
    changed = sf.set(keypath, value)
    sf.write(_sink(dry_run, sink))
    return changed


def unset_value(
    path: str, keypath: list[str | int], identities: Identities = None, dry_run: bool = False, sink: Sink | None = None
) -> bool:
    """Remove the value at ``keypath`` (like ``sops unset``); False when it was not there."""
    sf = SopsFile.open(path).unlock(identities)
    changed = sf.unset(keypath)
    sf.write(_sink(dry_run, sink))
    return changed


def updatekeys(
    path: str,
    key_groups: list[list[str]],
    identities: Identities = None,
    shamir_threshold: int | None = None,
    dry_run: bool = False,
    sink: Sink | None = None,
    foreign: list[dict[str, Any]] | None = None,
    rewrap_all: bool = True,
) -> tuple[bool, set[str], set[str]]:
    """``sops updatekeys -y`` on one file (see SopsFile.updatekeys); ``sink`` receives the new bytes."""
    sf = SopsFile.open(path).unlock(identities)
    result = sf.updatekeys(key_groups, shamir_threshold, foreign, rewrap_all)
    sf.write(_sink(dry_run, sink))
    return result


def rotate(path: str, identities: Identities = None, dry_run: bool = False, sink: Sink | None = None) -> bytes:
    """``sops rotate`` on one file: new data key, values encrypted again; returns the new bytes."""
    sf = SopsFile.open(path).unlock(identities)
    sf.rotate()
    out = sf.encode()
    sf.write(_sink(dry_run, sink))
    return out


__all__ = ["SopsFile", "encrypt_file", "keyring", "load", "rotate", "set_value", "unset_value", "updatekeys"]
