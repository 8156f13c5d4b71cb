# Copyright: nixfleet.sops contributors
# MIT License
"""One value in one sops file: read it, set it, remove it (``sops set`` / ``sops unset``).

The module ``sops_secret`` and the lookup ``secret`` are thin wrappers over this.
What it adds to the engine: key paths in the forms users write them (sops-nix's
``keys/age``, a list, sops' ``["keys"]["age"]``), creating a missing file for
the creation rule of its ``.sops.yaml``, and a diff that names the key paths
that change without ever showing a value.

Nothing here returns or raises with a secret value in it: errors and diffs
name files and key paths only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import sops as engine
from .fsutil import SOPS_FILE_LIMIT, UnsafePathError, read_regular
from .sops.file import Identities
from .sops.tree import comparable, display_key_path, get_path, strip_comments
from .sops_config import SopsConfig, SopsConfigError

CONFIG_NAME = ".sops.yaml"
KeyPath = list[str | int]
# sops' own key path syntax, as `sops set FILE '["a"][0]' VALUE` takes it.
_SOPS_INDEX = re.compile(r'\[(?:"((?:[^"\\]|\\.)*)"|(-?\d+))\]')


# --------------------------------------------------------------------------- key paths
def parse_key_path(key: Any, path: str | None = None) -> KeyPath:
    """Normalise a key path to a list of keys (str) and list indexes (int).

    Accepted forms: a list (``["deploy-keys", "nix-config"]``; ints index
    lists), a string split on ``/`` as sops-nix does for its ``key`` option
    (``"deploy-keys/nix-config"``), or sops' own syntax (``'["keys"]["age"]'``).
    Raises SopsKeyPathError (naming ``path``) for an empty path, an empty
    segment, a path starting with an index, or the reserved top-level ``sops``.
    """
    if isinstance(key, str):
        keypath = _parse_key_string(key, path)
    elif isinstance(key, (list, tuple)):
        keypath = []
        for i, part in enumerate(key):
            if isinstance(part, bool) or not isinstance(part, (str, int)):
                raise engine.SopsKeyPathError(
                    f"invalid key path: element {i + 1} is a {type(part).__name__}; "
                    "use strings for keys and integers for list indexes", path)
            keypath.append(part if isinstance(part, int) else str(part))
    else:
        raise engine.SopsKeyPathError(
            f"invalid key path: expected a list or a string like 'keys/age', got a {type(key).__name__}", path)
    if not keypath:
        raise engine.SopsKeyPathError("invalid key path: it is empty (give at least one key, e.g. 'keys/age')", path)
    for i, part in enumerate(keypath):
        if part == "":
            raise engine.SopsKeyPathError(f"invalid key path {key!r}: element {i + 1} is an empty key", path)
    if isinstance(keypath[0], int):
        raise engine.SopsKeyPathError(
            f"invalid key path {display_key_path(keypath)!r}: it must start with a key, not a list index", path)
    if keypath[0] == "sops":
        raise engine.SopsKeyPathError("invalid key path: the top-level key 'sops' holds sops' own metadata", path)
    return keypath


def _parse_key_string(key: str, path: str | None) -> KeyPath:
    if key.startswith("["):
        out: KeyPath = []
        pos = 0
        while pos < len(key):
            m = _SOPS_INDEX.match(key, pos)
            if m is None:
                raise engine.SopsKeyPathError(
                    f"invalid key path {key!r}: sops syntax is [\"key\"] or [index] repeated, "
                    f"stopped at position {pos + 1}", path)
            out.append(re.sub(r"\\(.)", r"\1", m.group(1)) if m.group(1) is not None else int(m.group(2)))
            pos = m.end()
        return out
    return list(key.split("/")) if key else []


# --------------------------------------------------------------------------- inputs
def read_value_file(path: str) -> str:
    """The text of ``path`` exactly as stored (trailing newline kept), for use as a value.

    Raises SopsError when it cannot be read or is not UTF-8 (sops values are text).
    """
    try:
        data = read_regular(path, SOPS_FILE_LIMIT, "value_file")
    except UnsafePathError as exc:
        raise engine.SopsError(exc.message.removeprefix(f"{path}: "), path) from None
    except OSError as exc:
        raise engine.SopsError(f"cannot read value_file: {exc.strerror}", path) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise engine.SopsError("value_file is not UTF-8 text; sops values are text", path) from None


def find_config(start: str) -> str | None:
    """The nearest ``.sops.yaml`` in ``start`` or one of its parents, or None."""
    current = os.path.abspath(start)
    while True:
        candidate = os.path.join(current, CONFIG_NAME)
        if os.path.isfile(candidate):
            return candidate
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


# --------------------------------------------------------------------------- reading
def read_secret(path: str, keypath: KeyPath | None = None, identities: Identities = None) -> Any:
    """The decrypted value at ``keypath`` in ``path`` (the whole document when None), comments removed.

    Binary files give their text. Raises SopsError subclasses naming the file
    and key path (SopsKeyPathError when there is no value at ``keypath``).
    """
    sf = engine.load(path)
    doc = sf.decrypt(identities, keep_comments=False)
    if isinstance(doc, (bytes, bytearray)):
        if keypath:
            raise engine.SopsKeyPathError(
                f"key path {display_key_path(keypath)!r} given, but this is a binary sops file (no key paths)", path)
        try:
            return bytes(doc).decode("utf-8")
        except UnicodeDecodeError:
            raise engine.SopsError("the decrypted binary file is not UTF-8 text", path) from None
    if not keypath:
        return doc
    try:
        return get_path(doc, keypath)
    except (KeyError, IndexError, TypeError):
        raise engine.SopsKeyPathError(f"no value at key path {display_key_path(keypath)!r}", path) from None


# --------------------------------------------------------------------------- diffs
def leaf_paths(tree: Any, prefix: KeyPath | None = None) -> list[KeyPath]:
    """Key paths of the leaves of ``tree`` under ``prefix``; an empty mapping or list is a leaf."""
    prefix = list(prefix or [])
    if isinstance(tree, dict) and tree:
        return [p for k, v in tree.items() for p in leaf_paths(v, prefix + [k])]
    if isinstance(tree, list) and tree:
        return [p for i, v in enumerate(tree) for p in leaf_paths(v, prefix + [i])]
    return [prefix]


def changed_key_paths(before: Any, after: Any, prefix: KeyPath | None = None) -> list[tuple[KeyPath, str]]:
    """Key paths whose values differ between two plain trees: (key path, 'added'|'changed'|'removed').

    A subtree that appears or disappears is reported by its leaves (an empty
    mapping or list by itself). Values are compared, never returned.
    """
    prefix = list(prefix or [])
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[tuple[KeyPath, str]] = []
        for k, v in before.items():
            if k in after:
                out += changed_key_paths(v, after[k], prefix + [k])
            else:
                out += [(p, "removed") for p in leaf_paths(v, prefix + [k])]
        for k, v in after.items():
            if k not in before:
                out += [(p, "added") for p in leaf_paths(v, prefix + [k])]
        return out
    if isinstance(before, list) and isinstance(after, list):
        out = []
        for i in range(max(len(before), len(after))):
            if i >= len(after):
                out += [(p, "removed") for p in leaf_paths(before[i], prefix + [i])]
            elif i >= len(before):
                out += [(p, "added") for p in leaf_paths(after[i], prefix + [i])]
            else:
                out += changed_key_paths(before[i], after[i], prefix + [i])
        return out
    if comparable(before) != comparable(after):
        return [(prefix, "changed")]
    return []


# --------------------------------------------------------------------------- writing
@dataclass
class SecretChange:
    """What ``ensure_secret`` did (or would do in a dry run); holds no value."""

    path: str
    key: KeyPath
    state: str
    changed: bool = False
    created: bool = False
    existed: bool = False  # whether the key path held a value before
    changes: list[tuple[KeyPath, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The module's return values (no secret in them)."""
        return {"changed": self.changed, "path": self.path, "key": list(self.key), "created": self.created}

    def diff(self) -> dict[str, str]:
        """Ansible diff: the key paths that change, as ``path: (set)`` before and ``path: (status)`` after."""
        if not self.changed:
            text = f"{display_key_path(self.key)}: (set)\n" if self.existed else ""
            return {"before": text, "after": text, "before_header": self.path, "after_header": self.path}
        before = "".join(f"{display_key_path(p)}: (set)\n" for p, s in self.changes if s != "added")
        after = "".join(f"{display_key_path(p)}: ({s})\n" for p, s in self.changes)
        return {
            "before": before,
            "after": after,
            "before_header": f"{self.path} (absent)" if self.created else self.path,
            "after_header": self.path,
        }


def _diff_or_key(before: Any, after: Any, keypath: KeyPath, fallback: str) -> list[tuple[KeyPath, str]]:
    # Only comments differ (or the trees compare equal once comments are dropped): name the key path itself.
    return changed_key_paths(before, after) or [(list(keypath), fallback)]


def new_file_for_rule(path: str, config: str | SopsConfig | None, need_dir: bool = True) -> engine.SopsFile:
    """An empty sops file for the creation rule of ``path`` in ``config`` (a path, an already loaded
    and maybe edited SopsConfig, or None: the nearest .sops.yaml). Nothing is written yet; with
    ``need_dir=False`` the caller creates the directory before writing."""
    fmt = engine.format_for_path(path)
    if fmt == "binary":
        raise engine.SopsError(
            "does not exist and its name has no extension sops reads as a structured file "
            "(.yaml, .yml, .json, .env, .ini), so it cannot hold key paths", path)
    directory = os.path.dirname(os.path.abspath(path))
    if need_dir and not os.path.isdir(directory):
        raise engine.SopsError(f"cannot create it: directory {directory} does not exist", path)
    if config is None:
        config = find_config(directory)
        if config is None:
            raise SopsConfigError(
                f"{path}: does not exist, and no {CONFIG_NAME} was found in {directory} or its parents to "
                "create it from; pass config or create the file first")
    try:
        loaded = config if isinstance(config, SopsConfig) else SopsConfig.load(config)
        rule = loaded.rule_for(os.path.abspath(path))
        config = loaded.path
    except SopsConfigError as exc:
        raise SopsConfigError(f"{path}: cannot create it: {exc}") from None
    if rule.other_keys:
        raise engine.SopsError(
            f"cannot create it: {rule.describe()} in {config} (line {rule.line}) also names "
            f"{', '.join(sorted(rule.other_keys))} keys, and only age recipients can be encrypted for here", path)
    if not rule.key_groups or not all(rule.key_groups):
        raise engine.SopsError(
            f"cannot create it: {rule.describe()} in {config} (line {rule.line}) names no age recipient "
            "(in at least one key group)", path)
    options = {k: v for k, v in rule.fields.items() if v not in (None, "", False)}
    return engine.SopsFile.create(path, rule.key_groups, options or None, rule.shamir_threshold)


def _items(values: Mapping[Any, Any] | Iterable[tuple[Any, Any]], path: str) -> list[tuple[KeyPath, Any]]:
    pairs = values.items() if isinstance(values, Mapping) else values
    out = []
    for key, value in pairs:
        if isinstance(key, (list, tuple)) and not key:
            raise engine.SopsKeyPathError("invalid key path: it is empty", path)
        out.append((parse_key_path(list(key) if isinstance(key, tuple) else key, path), value))
    if not out:
        raise engine.SopsKeyPathError("no key path given", path)
    return out


def ensure_secrets(
    path: str,
    values: Mapping[Any, Any] | Iterable[tuple[Any, Any]],
    state: str = "present",
    identities: Identities = None,
    config: str | None = None,
    create: bool = True,
    dry_run: bool = False,
) -> list[SecretChange]:
    """Bring several key paths of one sops file to their values (present) or remove them (absent).

    ``values`` maps key paths (a tuple, a list of pairs, or a string as
    parse_key_path reads it) to values (ignored when absent). The file is read
    and decrypted once and written at most once, whatever the number of
    values; the result has one SecretChange per key path, in order. Everything
    else is as ensure_secret: ``changed`` is decided the same way with and
    without ``dry_run`` (only the sink differs), a file that does not change
    is not touched, a missing file is created for its creation rule.
    """
    if state not in ("present", "absent"):
        raise ValueError(f"state must be 'present' or 'absent', not {state!r}")
    items = _items(values, path)
    created = not os.path.exists(path)
    if created:
        if state == "absent":
            return [SecretChange(path=path, key=kp, state=state) for kp, _unused in items]
        if not create:
            raise engine.SopsError("file not found (set create=true to create it for its .sops.yaml rule)", path)
        sf = new_file_for_rule(path, config)
    else:
        sf = engine.SopsFile.open(path)
        if not sf.store.structured:
            raise engine.SopsError("binary sops files hold no key paths", path)
        sf.unlock(identities)
    results = []
    for keypath, value in items:
        before = strip_comments(sf.tree)
        try:
            get_path(before, keypath)
            existed = True
        except (KeyError, IndexError, TypeError):
            existed = False
        result = SecretChange(path=path, key=keypath, state=state, existed=existed, created=created)
        if state == "present":
            result.changed = sf.set(keypath, value)
            fallback = "added" if created else "changed"
        else:
            result.changed = existed and sf.unset(keypath)
            fallback = "removed"
        if result.changed:
            result.changes = _diff_or_key(before, strip_comments(sf.tree), keypath, fallback)
        results.append(result)
    sf.write(engine.NullSink() if dry_run else engine.FileSink())
    return results


def ensure_secret(
    path: str,
    keypath: KeyPath,
    value: Any = None,
    state: str = "present",
    identities: Identities = None,
    config: str | None = None,
    create: bool = True,
    dry_run: bool = False,
) -> SecretChange:
    """Bring the value at ``keypath`` of sops file ``path`` to ``value`` (present) or remove it (absent).

    ``changed`` is decided the same way with and without ``dry_run``; a dry
    run writes nothing. Setting the value the key path already holds leaves
    the file untouched (bytes and mtime). A missing file is created when
    ``create`` (present only) for the recipients, key groups, Shamir threshold
    and options of its creation rule in ``config`` (default: the nearest
    ``.sops.yaml`` above the file). Removing from a missing file, or a key path
    that is not there, changes nothing. The file is opened once and written at
    most once (ensure_secrets with one value).
    """
    if not keypath:
        raise engine.SopsKeyPathError("invalid key path: it is empty", path)
    return ensure_secrets(path, [(list(keypath), value)], state, identities, config, create, dry_run)[0]
