# Copyright: nixfleet.sops contributors
# MIT License
"""The value walks sops does over a tree: decrypt and check the MAC, encrypt and compute the MAC.

A *stash* maps (additional data, type, plaintext) to the ciphertext a value
had, so values that did not change keep their ciphertexts when a file is
written again (sops keeps them too; a set of one value does not touch the
others). Both walks fill it.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from . import aes
from .errors import SopsDecryptError, SopsError, SopsFormatError, SopsMacError
from .metadata import Metadata, normalize_lastmodified, now_lastmodified
from .tree import Comment, Rules, new_mac_hash, walk

Stash = dict[tuple[str, str, bytes], Any]


def decrypt_tree(
    docs: list[dict], key: bytes, meta: Metadata, floats: bool, stash: Stash, path: str | None
) -> list[dict]:
    """The documents decrypted (a copy), after checking every value and the MAC against ``key``.

    Raises SopsMacError when a value or the MAC was changed outside sops.
    """
    rules = meta.rules
    h = new_mac_hash(rules)

    def leaf(value: Any, kpath: list[str], stack: list[list[str]], is_comment: bool) -> Any:
        encrypted = rules.should_encrypt(kpath, stack, is_comment)
        aad = ":".join(kpath) + ":"
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
                    f"{type(value).__name__}", path)
            elif value == "":
                out = ""
            else:
                try:
                    plain, vtype = aes.decrypt_raw(value, key, aad)
                    out = aes.typed_value(plain, vtype)
                except aes.ValueError_ as exc:
                    raise SopsMacError(
                        f"cannot decrypt the value at '{aad[:-1]}': {exc}; the file was modified "
                        "outside sops or is corrupt", path) from None
                stash[(aad, vtype, plain)] = value
                if floats and vtype == "float" and plain.lstrip(b"-").isdigit():
                    out = int(plain)
        if (not rules.mac_only_encrypted or encrypted) and not isinstance(out, Comment):
            h.update(aes.to_bytes(out, floats))
        return out

    try:
        plain_docs = walk(copy.deepcopy(docs), leaf)
    except TypeError as exc:
        raise SopsFormatError(str(exc), path) from None
    computed = h.hexdigest().upper()
    lm = normalize_lastmodified(meta.lastmodified)
    try:
        stored = aes.decrypt_value(meta.mac, key, lm) if meta.mac else ""
    except aes.ValueError_:
        raise SopsMacError(
            "the MAC cannot be decrypted (the 'mac' or 'lastmodified' metadata was changed outside sops)",
            path) from None
    if stored != computed:
        raise SopsMacError(
            "MAC mismatch: the file's contents do not match its MAC (a value was changed outside sops)", path)
    return plain_docs


def encrypt_tree(
    docs: list[dict], key: bytes, rules: Rules, floats: bool, stash: Stash | None, path: str | None
) -> tuple[list[dict], str]:
    """(encrypted copy of ``docs``, MAC hex): stashed ciphertexts are reused, new ones stashed."""
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
        out = stash.get((aad, vtype, plain)) if stash is not None else None
        if out is None:
            out = aes.encrypt_value(value, key, aad, floats)
            if stash is not None:
                stash[(aad, vtype, plain)] = out.text if isinstance(out, Comment) else out
        if is_comment:
            text = out.text if isinstance(out, Comment) else out
            if rules.unencrypted_comment_regex and isinstance(text, str):
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


def seal(meta: Metadata, docs: list[dict], key: bytes, floats: bool, stash: Stash | None, path: str | None
         ) -> list[dict]:
    """Encrypt ``docs`` and stamp ``meta`` with a new lastmodified and MAC (what any value change does)."""
    enc_docs, mac = encrypt_tree(docs, key, meta.rules, floats, stash, path)
    meta.lastmodified = now_lastmodified()
    meta.mac = aes.encrypt_value(mac, key, meta.lastmodified)
    return enc_docs
