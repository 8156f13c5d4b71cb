# Copyright: nixfleet.sops contributors
# MIT License
"""Findings about a ``.sops.yaml`` and the repository files it covers.

``lint`` never walks the filesystem: the caller passes the repository's files
(path relative to the config's directory, and whether it is a sops file), so
a fleet operation that has already walked the repository reuses its walk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..age import AgeKeyError, validate_recipient
from .common import OTHER_KEY_TYPES, SopsConfigError
from .model import ConfigModel, CreationRule
from .parse import node_data
from .regex import PathMatcher, compile_path_regex


@dataclass(frozen=True)
class RepoFile:
    """One file of the repository as lint sees it: its path relative to the config dir, and whether sops made it."""

    path: str
    is_sops: bool | None = None  # None: ask ``sops_check`` if it matters (no rule matches the file)


def _finding(kind: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, **{k: v for k, v in extra.items() if v is not None}, "message": message}


def _document_findings(model: ConfigModel) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: dict[str, Any] = {}
    for node in model.doc.anchor_defs:
        name = node.anchor or ""
        if name in seen:
            out.append(_finding(
                "duplicate_anchor",
                f"{model.where(node)}: anchor &{name} is defined again (first on line {seen[name].line + 1}); "
                "later aliases use this one",
                anchor=name, line=node.line + 1,
            ))
        seen[name] = node
    for a in model.doc.aliases:
        if a.target is None:
            out.append(_finding(
                "unknown_alias",
                f"{model.where(a)}: alias *{a.value} refers to an anchor that is not defined before it",
                anchor=a.value, line=a.line + 1,
            ))
    for name, (node, _g) in model.anchor_nodes().items():
        value = (node.value or "").strip()
        if value.startswith("age") or value.startswith("ssh-"):
            try:
                validate_recipient(value)
            except AgeKeyError as exc:
                out.append(_finding("invalid_recipient", f"{model.where(node)}: anchor &{name}: {exc}",
                                    anchor=name, line=node.line + 1))
    return out


def _has_other_keys(model: ConfigModel, rule: CreationRule, gi: int) -> bool:
    owner = model.age_fields(rule.node)[gi].owner
    data = node_data(owner, path=model.path) or {}
    return any(data.get(k) for k in (*OTHER_KEY_TYPES, "merge"))


def _rule_findings(model: ConfigModel, rules: list[CreationRule]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for rule in rules:
        where = f"{model.path}, line {rule.line}"
        if rule.path_regex:
            try:
                compile_path_regex(rule.path_regex)
            except SopsConfigError as exc:
                out.append(_finding("invalid_regex", f"{where}: {exc}", line=rule.line))
        for gi, tokens in enumerate(rule.members):
            for t in tokens:
                if t.startswith(("*", "<")):
                    continue
                try:
                    validate_recipient(t)
                except AgeKeyError as exc:
                    out.append(_finding("invalid_recipient", f"{where}: {rule.describe()}: {exc}", line=rule.line))
            if not tokens and not _has_other_keys(model, rule, gi):
                out.append(_finding("bad_rule", f"{where}: {rule.describe()} has no recipient", line=rule.line))
    return out


def _file_findings(
    model: ConfigModel, rules: list[CreationRule], files: Iterable[RepoFile], sops_check: Callable[[str], bool] | None
) -> list[dict[str, Any]]:
    """rule_unused (matches no file, or only files earlier rules take) and unmatched_sops_file."""
    out: list[dict[str, Any]] = []
    good = [r for r in rules if not r.path_regex or _compiles(r.path_regex)]
    matcher = PathMatcher([r.path_regex for r in good])
    first_match: set[int] = set()
    paths: list[str] = []
    for f in files:
        paths.append(f.path)
        winner = matcher.first(f.path)
        if winner is not None:
            first_match.add(good[winner].index)
            continue
        is_sops = f.is_sops if f.is_sops is not None else bool(sops_check and sops_check(f.path))
        if is_sops:
            msg = f"{f.path} is a sops file but no creation rule in {model.path} matches it"
            out.append(_finding("unmatched_sops_file", msg, path=f.path))
    for r in good:
        if not r.path_regex or r.index in first_match:
            continue
        shadowed = next((p for p in paths if r.matches(p)), None)
        if shadowed is not None:
            msg = f"every file it matches ({shadowed}, …) is taken by an earlier rule"
        else:
            msg = "it matches no existing file"
        out.append(_finding("rule_unused", f"{model.path}, line {r.line}: {r.describe()}: {msg}", line=r.line))
    return out


def _compiles(pattern: str) -> bool:
    try:
        compile_path_regex(pattern)
    except SopsConfigError:
        return False
    return True


def lint(
    model: ConfigModel, files: Iterable[RepoFile] | None = None, sops_check: Callable[[str], bool] | None = None
) -> list[dict[str, Any]]:
    """Findings about the config: list of ``{kind, message, line?, anchor?, path?}``.

    Kinds: duplicate_anchor, unknown_alias, invalid_recipient, invalid_regex,
    bad_rule, and with ``files`` rule_unused (matches no file, or only files
    earlier rules take) and unmatched_sops_file (a sops file no rule matches;
    ``sops_check(path)`` answers for files whose ``is_sops`` is None).
    """
    findings = _document_findings(model)
    try:
        rules = model.rules_lenient()
    except SopsConfigError as exc:
        findings.append(_finding("bad_rule", str(exc)))
        return findings
    findings += _rule_findings(model, rules)
    if files is not None:
        findings += _file_findings(model, rules, files, sops_check)
    return findings


def is_sops_file(path: str) -> bool:
    """True when ``path`` holds sops metadata, as the sops engine reads it (also when that metadata is broken)."""
    from .. import sops as engine  # the engine needs pyrage; .sops.yaml edits alone do not

    if not (os.path.isfile(path) and os.access(path, os.R_OK)):
        return False
    try:
        engine.load(path)
    except engine.SopsNotEncryptedError:
        return False
    except engine.SopsError:
        return True  # sops metadata is there, only broken
    return True
