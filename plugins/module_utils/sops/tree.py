# Copyright: nixfleet.sops contributors
# MIT License
"""The document tree and the walks sops does over it (encrypt, decrypt, MAC).

A document is a ``dict`` (insertion ordered) whose values are dicts, lists
or scalars (str, int, float, bool, None, datetime). Comments are kept the way
sops keeps them: a :class:`Comment` is a dict key (with value None) or a list
item, in document order. Each Comment is a distinct object, so any number of
them can live in one dict. :func:`strip_comments` gives the plain data.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAC_ONLY_ENCRYPTED_INIT = bytes(
    [0x8A, 0x3F, 0xD2, 0xAD, 0x54, 0xCE, 0x66, 0x52, 0x7B, 0x10, 0x34, 0xF3, 0xD1, 0x47, 0xBE, 0x0B,
     0x0B, 0x97, 0x5B, 0x3B, 0xF4, 0x4F, 0x72, 0xC6, 0xFD, 0xAD, 0xEC, 0x81, 0x76, 0xF2, 0x7D, 0x69]
)
DEFAULT_UNENCRYPTED_SUFFIX = "_unencrypted"


class Comment:
    """A comment line of a YAML/INI/dotenv document (text after the ``#``).

    Equality is identity so that several comments can be keys of one dict;
    compare ``.text`` (or use strip_comments) to compare documents.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Comment({self.text!r})"


def strip_comments(value: Any) -> Any:
    """A copy of ``value`` without Comment keys or items."""
    if isinstance(value, dict):
        return {k: strip_comments(v) for k, v in value.items() if not isinstance(k, Comment)}
    if isinstance(value, list):
        return [strip_comments(v) for v in value if not isinstance(v, Comment)]
    if isinstance(value, Comment):
        return None
    return value


def comparable(value: Any) -> Any:
    """A structure where comments compare by text: for tests and change detection."""
    if isinstance(value, dict):
        return [(("#", k.text) if isinstance(k, Comment) else k, comparable(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [comparable(v) for v in value]
    if isinstance(value, Comment):
        return ("#", value.text)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, float):
        return ("float", repr(value))
    return value


@dataclass
class Rules:
    """Which values are encrypted and what the MAC covers (sops metadata fields)."""

    unencrypted_suffix: str = ""
    encrypted_suffix: str = ""
    unencrypted_regex: str = ""
    encrypted_regex: str = ""
    unencrypted_comment_regex: str = ""
    encrypted_comment_regex: str = ""
    mac_only_encrypted: bool = False

    def count(self) -> int:
        """How many of the suffix/regex rules are set (sops allows one)."""
        return sum(
            1
            for v in (
                self.unencrypted_suffix,
                self.encrypted_suffix,
                self.unencrypted_regex,
                self.encrypted_regex,
                self.unencrypted_comment_regex,
                self.encrypted_comment_regex,
            )
            if v
        )

    def should_encrypt(self, path: list[str], comments_stack: list[list[str]], is_comment: bool) -> bool:
        """sops' shouldBeEncrypted, rule by rule, in its order."""
        encrypted = True
        if self.unencrypted_suffix and any(p.endswith(self.unencrypted_suffix) for p in path):
            encrypted = False
        if self.encrypted_suffix:
            encrypted = any(p.endswith(self.encrypted_suffix) for p in path)
        if self.unencrypted_regex and any(re.search(self.unencrypted_regex, p) for p in path):
            encrypted = False
        if self.encrypted_regex:
            encrypted = any(re.search(self.encrypted_regex, p) for p in path)
        if self.unencrypted_comment_regex:
            if any(re.search(self.unencrypted_comment_regex, c) for cs in comments_stack for c in cs):
                encrypted = False
        if self.encrypted_comment_regex:
            encrypted = False
            last = len(comments_stack) - 1
            last_len = len(comments_stack[last]) if comments_stack else 0
            for i, cs in enumerate(comments_stack):
                for j, c in enumerate(cs):
                    # The comment being decided must not decide itself.
                    if is_comment and i == last and j == last_len - 1:
                        continue
                    if re.search(self.encrypted_comment_regex, c):
                        encrypted = True
                        break
                if encrypted:
                    break
        return encrypted


Leaf = Callable[[Any, list[str], list[list[str]], bool], Any]


def _walk_value(value: Any, path: list[str], stack: list[list[str]], leaf: Leaf) -> Any:
    if isinstance(value, dict):
        return _walk_dict(value, path, stack, leaf)
    if isinstance(value, list):
        return _walk_list(value, path, stack, leaf)
    if value is None:
        return None
    return leaf(value, path, stack, isinstance(value, Comment))


def _walk_list(items: list, path: list[str], stack: list[list[str]], leaf: Leaf) -> list:
    stack = stack + [[]]
    out = []
    for item in items:
        is_comment = isinstance(item, Comment)
        if is_comment:
            stack[-1] = stack[-1] + [item.text]
        out.append(_walk_value(item, path, stack, leaf))
        if not is_comment:
            stack[-1] = []
    return out


def _walk_dict(mapping: dict, path: list[str], stack: list[list[str]], leaf: Leaf) -> dict:
    stack = stack + [[]]
    out: dict = {}
    for key, value in mapping.items():
        if isinstance(key, Comment):
            stack[-1] = stack[-1] + [key.text]
            new = leaf(key, path, stack, True)
            out[new if isinstance(new, Comment) else Comment(new)] = None
            continue
        if not isinstance(key, str):
            raise TypeError(f"only string keys are supported, found a {type(key).__name__} key")
        value_is_comment = isinstance(value, Comment)
        if value_is_comment:
            stack[-1] = stack[-1] + [value.text]
        out[key] = _walk_value(value, path + [key], stack, leaf)
        if not value_is_comment:
            stack[-1] = []
    return out


def walk(branches: list[dict], leaf: Leaf) -> list[dict]:
    """Apply ``leaf(value, path, comments_stack, is_comment)`` to every leaf, as sops walks."""
    return [_walk_dict(b, [], [], leaf) for b in branches]


def new_mac_hash(rules: Rules) -> Any:
    """The SHA-512 the MAC is computed with (seeded for mac_only_encrypted, as sops does)."""
    h = hashlib.sha512()
    if rules.mac_only_encrypted:
        h.update(MAC_ONLY_ENCRYPTED_INIT)
    return h


# --------------------------------------------------------------------------- key paths
def display_key_path(keypath: list[str | int]) -> str:
    """A key path as users write it: keys joined by ``/``, list indexes as ``[n]``."""
    return "/".join(f"[{p}]" if isinstance(p, int) else p for p in keypath)


def get_path(tree: Any, keypath: list[str | int]) -> Any:
    """The value at ``keypath``; KeyError/IndexError/TypeError when it is not there."""
    cur = tree
    for part in keypath:
        if isinstance(cur, dict) and isinstance(part, str):
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int):
            cur = [v for v in cur if not isinstance(v, Comment)][part]
        else:
            raise TypeError(f"cannot index a {type(cur).__name__} with {part!r}")
    return cur


def _leaf_from_path(path: list[str | int], leaf: Any) -> Any:
    if not path:
        return leaf
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        return [_leaf_from_path(rest, leaf)]
    return {head: _leaf_from_path(rest, leaf)}


def set_path(tree: Any, keypath: list[str | int], value: Any) -> tuple[Any, bool]:
    """sops' TreeBranch.Set: returns (new tree, changed). Lists are indexed without comments."""
    if not keypath:
        return value, comparable(tree) != comparable(value)
    head, rest = keypath[0], keypath[1:]
    if isinstance(tree, dict) and isinstance(head, str):
        if head in tree:
            new, changed = set_path(tree[head], rest, value)
            tree[head] = new
            return tree, changed
        tree[head] = _leaf_from_path(rest, value)
        return tree, True
    if isinstance(tree, list) and isinstance(head, int):
        real = [i for i, v in enumerate(tree) if not isinstance(v, Comment)]
        if head < 0 or head >= len(real):
            tree.append(_leaf_from_path(rest, value))
            return tree, True
        pos = real[head]
        new, changed = set_path(tree[pos], rest, value)
        tree[pos] = new
        return tree, changed
    new = _leaf_from_path(keypath, value)
    return new, True


def unset_path(tree: Any, keypath: list[str | int]) -> Any:
    """sops' TreeBranch.Unset; raises KeyError/IndexError when the path is missing."""
    head, rest = keypath[0], keypath[1:]
    if isinstance(tree, dict) and isinstance(head, str):
        if head not in tree:
            raise KeyError(head)
        if rest:
            tree[head] = unset_path(tree[head], rest)
        else:
            del tree[head]
        return tree
    if isinstance(tree, list) and isinstance(head, int):
        real = [i for i, v in enumerate(tree) if not isinstance(v, Comment)]
        if head < 0 or head >= len(real):
            raise IndexError(head)
        pos = real[head]
        if rest:
            tree[pos] = unset_path(tree[pos], rest)
        else:
            del tree[pos]
        return tree
    raise TypeError(f"cannot descend into a {type(tree).__name__} with {head!r}")
