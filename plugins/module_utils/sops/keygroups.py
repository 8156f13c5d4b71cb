# Copyright: nixfleet.sops contributors
# MIT License
"""The data key and its key groups: recover it from age stanzas, split it into Shamir shares, wrap them.

One key group holds the data key itself; several hold one Shamir share each
(sops puts group *i*'s share at x = i + 1), of which ``shamir_threshold`` are
needed. Only age stanzas are opened or written here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..age import AgeKeyError, validate_recipient
from . import foreign as fk
from . import shamir
from .errors import SopsDecryptError, SopsError, SopsNoIdentityError
from .keys import Keyring, find_identities, wrap
from .metadata import AgeStanza, Metadata

# pylint cannot see that typing aliases support | (Python 3.10+).
Identities = Keyring | Iterable[str] | None  # pylint: disable=unsupported-binary-operation


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


_VALID: set[str] = set()


def _valid_recipient(r: str) -> str:
    if r in _VALID:
        return r
    r = validate_recipient(r)
    _VALID.add(r)
    return r


def validate_groups(
    key_groups: list[list[str]], path: str | None, covered: list[bool] | None = None
) -> list[list[str]]:
    """Key groups of valid recipients, duplicates within a group dropped; SopsError naming ``path``.

    A group may be empty only where ``covered`` says other master keys hold its share.
    """
    covered = covered or []
    if not key_groups or not all(g or (i < len(covered) and covered[i]) for i, g in enumerate(key_groups)):
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


def recover_key(meta: Metadata, kr: Keyring, path: str | None) -> tuple[bytes, dict[int, bytes]]:
    """(data key, {group index: share}) for the groups ``kr`` opens; at most one unwrap per stanza."""
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
        listing = "; ".join(f"group {i + 1}: " + (", ".join(g) or "no age recipient")
                            for i, g in enumerate(meta.recipients))
        where = "; ".join(kr.searched) or "nowhere (no identity given)"
        what = "no identity can open the data key" if groups == 1 else (
            f"identities open {len(parts)} of {groups} key groups, {need} needed")
        other = ""
        if meta.has_foreign_keys():
            # Those keys may well open the file, but not here: say so instead of asking for an age identity.
            other = (f". The file also has {fk.describe(meta.foreign)}, which this engine cannot use (only age): "
                     f"the real sops can (e.g. sops updatekeys {path or 'FILE'})")
        raise SopsNoIdentityError(
            f"{what}. The file's recipients are: {listing}{other}. Identities were searched in: {where}",
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


def shares_for(
    key: bytes, n: int, threshold: int, old: Metadata | None = None, known: dict[int, bytes] | None = None
) -> tuple[list[bytes], bool]:
    """(share per group, whether every group keeps the share it had in ``old``).

    One group holds the key itself. With the same number of groups and the
    same threshold the shares stay (the ones not opened are recomputed from
    those that were); otherwise the key is split afresh.
    """
    if n == 1:
        return [key], old is not None and len(old.key_groups) == 1
    same = old is not None and len(old.key_groups) == n and old.shamir_threshold == threshold
    if same and known is not None and len(known) >= 2:
        return [known.get(i) or shamir.interpolate(list(known.values()), i + 1) for i in range(n)], True
    return shamir.split(key, n, threshold), False


def wrap_groups(shares: list[bytes], groups: list[list[str]],
                keep: list[dict[str, AgeStanza]] | None = None) -> list[list[AgeStanza]]:
    """One age stanza per recipient, each wrapping its group's share afresh (as ``sops updatekeys`` does:
    a kept recipient whose ``enc`` was corrupt is repaired).

    ``keep`` (per group, recipient -> its current stanza) reuses those stanzas instead: the caller
    passes only sound stanzas of a group whose share did not change, so they still open it.
    """
    def stanza(gi: int, r: str) -> AgeStanza:
        kept = keep[gi].get(r) if keep is not None and gi < len(keep) else None
        return kept if kept is not None else AgeStanza(r, wrap(shares[gi], r))

    return [[stanza(gi, r) for r in group] for gi, group in enumerate(groups)]
