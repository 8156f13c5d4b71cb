# Copyright: nixfleet.sops contributors
# MIT License
"""Access from the inventory: ``.sops.yaml`` rules kept in step with a declarative model.

The model (built from Ansible's ``groups`` and ``hostvars`` by playbooks/access.yml):

- ``nixfleet_secret_categories``: ``{name: {path_regex: R | path: P, groups: [...], hosts: [...]}}``,
  a category covers the sops files its regex matches and is read by the hosts of
  its inventory groups (child groups included, as Ansible's ``groups`` lists
  them) and the hosts it names;
- per host ``nixfleet_categories: {add: [...], remove: [...]}`` adds or removes
  categories for that host after the groups are applied;
- ``nixfleet_admin_anchors`` and the break-glass anchor (``break_glass`` when
  ``.sops.yaml`` has it) are members of every managed rule.

A host's recipient is its ``&<host>`` anchor (bootstrap registers it). The
per-host user key ``&<user>_<host>`` is NOT a member by default: user keys read
the host's own file (``sops/<host>.yaml``, bootstrap's rule), and shared
secrets are decrypted by sops-nix with the host key; ``user_keys`` makes
them members too (for home-manager secrets in shared files).

Managed rules are marked by a comment line directly above them::

    # managed by nixfleet.sops access: category desktop (edit the inventory, not this rule)
    - path_regex: sops/desktop\\.yaml$

Only rules so marked are ever changed or removed; a person can hand a rule
over by writing that line above it. The rule edits go through the
``.sops.yaml`` editor (each one verified transaction); the editor has no
comment edit, so the marker lines are added and removed here as text edits
that must leave what sops reads identical (checked on the re-parsed text).

Every function here is plain Python (no Ansible).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from . import fleet, vcs
from .bootstrap import BootstrapError, validate_host, validate_user
from .errors import NixfleetError
from .fsutil import repo_lock
from .sops_config import CreationRule, PathMatcher, SopsConfig, SopsConfigError, compile_path_regex
from .sops_config.common import ANCHOR_NAME_RE, check_anchor_name

MARKER = "# managed by nixfleet.sops access: category {name} (edit the inventory, not this rule)"
_MARKER_RE = re.compile(r"^\s*#\s*managed by nixfleet\.sops access: category ([A-Za-z0-9][A-Za-z0-9_.-]*)(?:\s|$)")
_CATEGORY_KEYS = {"path_regex", "path", "groups", "hosts"}
DEFAULT_BREAK_GLASS = "break_glass"


class AccessError(NixfleetError, ValueError):
    """The access model is wrong, or ``.sops.yaml`` cannot be brought in step with it safely."""


# --------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class Category:
    """A secret category: the files it covers and who reads it (before per-host additions/removals)."""

    name: str
    path_regex: str
    groups: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()


@dataclass
class AccessModel:
    """Who reads which category, as the inventory says."""

    categories: dict[str, Category]
    members: dict[str, list[str]]  # category -> hosts, sorted
    admin_anchors: list[str]
    users: dict[str, str] = field(default_factory=dict)  # host -> primary user (used with user_keys)
    break_glass_anchor: str | None = None  # None: "break_glass" if .sops.yaml has it; "": none
    user_keys: bool = False


def quote_meta(text: str) -> str:
    """``text`` as a Go RE2 literal (Go's ``regexp.QuoteMeta``)."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", text)


def _str_list(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise AccessError(f"{what} must be a list of names, not {value!r}")
    return tuple(value)


def parse_category(name: Any, spec: Any, groups: Mapping[str, Sequence[str]]) -> Category:
    """One entry of ``nixfleet_secret_categories``, checked (names, regex, known groups)."""
    if not isinstance(name, str) or not ANCHOR_NAME_RE.match(name):
        raise AccessError(f"nixfleet_secret_categories: category name {name!r} is not allowed: use a letter or digit, "
                          "then letters, digits, '_', '.' or '-' (e.g. desktop)")
    where = f"nixfleet_secret_categories.{name}"
    if not isinstance(spec, Mapping):
        raise AccessError(f"{where} must be a mapping with path_regex (or path) and groups")
    unknown = sorted(set(spec) - _CATEGORY_KEYS)
    if unknown:
        raise AccessError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_CATEGORY_KEYS))}")
    regex, path = spec.get("path_regex"), spec.get("path")
    if bool(regex) == bool(path):
        raise AccessError(f"{where}: give exactly one of path_regex and path")
    if path:
        if not isinstance(path, str) or os.path.isabs(path) or ".." in path.split("/"):
            raise AccessError(f"{where}.path {path!r} must be a path relative to the secrets repository")
        regex = "^" + quote_meta(path[2:] if path.startswith("./") else path) + "$"
    if not isinstance(regex, str):
        raise AccessError(f"{where}.path_regex must be a string")
    try:
        compile_path_regex(regex)
    except SopsConfigError as exc:
        raise AccessError(f"{where}: {exc}") from None
    cat_groups = _str_list(spec.get("groups"), f"{where}.groups")
    missing = [g for g in cat_groups if g not in groups]
    if missing:
        raise AccessError(f"{where}.groups: no inventory group {', '.join(map(repr, missing))} "
                          f"(groups: {', '.join(sorted(groups))})")
    return Category(name, regex, cat_groups, _str_list(spec.get("hosts"), f"{where}.hosts"))


def build_model(
    categories: Mapping[str, Any],
    groups: Mapping[str, Sequence[str]],
    host_categories: Mapping[str, Any] | None = None,
    admin_anchors: Sequence[str] = (),
    break_glass_anchor: str | None = None,
    user_keys: bool = False,
    host_users: Mapping[str, str] | None = None,
) -> AccessModel:
    """The access model from the inventory.

    ``categories``: nixfleet_secret_categories; ``groups``: Ansible's ``groups``;
    ``host_categories``: per host its ``nixfleet_categories`` ({add, remove}),
    only hosts that set it; ``admin_anchors``; ``break_glass_anchor`` (None:
    ``break_glass`` if present); ``user_keys`` with ``host_users`` (host ->
    nixfleet_primary_user) for the ``&<user>_<host>`` members.
    """
    if not isinstance(categories, Mapping):
        raise AccessError("nixfleet_secret_categories must be a mapping of category name to {path_regex, groups}")
    cats = {name: parse_category(name, spec, groups) for name, spec in categories.items()}
    seen: dict[str, str] = {}
    for c in cats.values():
        if c.path_regex in seen:
            raise AccessError(f"nixfleet_secret_categories: {seen[c.path_regex]} and {c.name} have the same "
                              f"path_regex {c.path_regex!r}; a file can only be in one rule")
        seen[c.path_regex] = c.name
    admins = list(_str_list(admin_anchors, "nixfleet_admin_anchors"))
    if not admins:
        raise AccessError("nixfleet_admin_anchors is empty: at least one admin anchor must read every category")
    for a in admins + ([break_glass_anchor] if break_glass_anchor else []):
        try:
            check_anchor_name(a, "nixfleet_admin_anchors" if a in admins else "nixfleet_break_glass_anchor")
        except SopsConfigError as exc:
            raise AccessError(str(exc)) from None
    members = {name: set(c.hosts).union(*(groups[g] for g in c.groups)) for name, c in cats.items()}
    for host, value in (host_categories or {}).items():
        for verb, names in _host_overrides(host, value, cats).items():
            for name in names:
                (members[name].add if verb == "add" else members[name].discard)(host)
    users = {h: u for h, u in (host_users or {}).items() if u}
    _check_readers(cats, groups, members, users if user_keys else {})
    return AccessModel(
        categories=cats,
        members={name: sorted(hs) for name, hs in members.items()},
        admin_anchors=admins,
        users={h: str(u) for h, u in users.items()},
        break_glass_anchor=break_glass_anchor,
        user_keys=user_keys,
    )


def _check_readers(cats: Mapping[str, Category], groups: Mapping[str, Sequence[str]],
                   members: Mapping[str, set[str]], users: Mapping[str, Any]) -> None:
    """Every host that reads a category has a name usable as its anchor, and (with user keys) a valid user."""
    for name, hosts in members.items():
        for host in sorted(hosts, key=str):
            via = (", ".join(f"group {g}" for g in cats[name].groups if host in groups[g])
                   or "its hosts or nixfleet_categories")
            try:
                validate_host(host)
                if host in users:
                    validate_user(users[host], host)
            except BootstrapError as exc:
                raise AccessError(f"nixfleet_secret_categories.{name} (via {via}): {exc}") from None


def _host_overrides(host: str, value: Any, cats: Mapping[str, Category]) -> dict[str, tuple[str, ...]]:
    """A host's ``nixfleet_categories`` ({add: [...], remove: [...]}), checked against the categories."""
    if value is None:
        return {}
    where = f"host {host}: nixfleet_categories"
    if not isinstance(value, Mapping) or set(value) - {"add", "remove"}:
        raise AccessError(f"{where} must be a mapping with add and/or remove lists (e.g. {{add: [cli]}}), "
                          f"not {value!r}")
    out = {verb: _str_list(value.get(verb), f"{where}.{verb}") for verb in ("add", "remove")}
    unknown = sorted({n for names in out.values() for n in names} - set(cats))
    if unknown:
        raise AccessError(f"{where} names unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                          f"{', '.join(unknown)} (known: {', '.join(sorted(cats)) or 'none'})")
    both = sorted(set(out["add"]) & set(out["remove"]))
    if both:
        raise AccessError(f"{where} both adds and removes {', '.join(both)}; keep one")
    return out


def wanted_anchors(model: AccessModel, anchors: Mapping[str, Any]) -> tuple[dict[str, list[str]], list[dict], str]:
    """(category -> member anchors, hosts whose anchor is missing, break-glass anchor used or '').

    Members: the admin anchors, the break-glass anchor, then per host ``&<host>``
    (and ``&<user>_<host>`` with ``user_keys``), hosts in name order. A host
    without its anchor is left out and reported: bootstrap registers it.
    """
    missing = [a for a in model.admin_anchors if a not in anchors]
    if missing:
        raise AccessError(f"admin anchor(s) {', '.join('&' + a for a in missing)} not in .sops.yaml "
                          f"(nixfleet_admin_anchors); known anchors: {', '.join(sorted(anchors)) or 'none'}")
    glass = model.break_glass_anchor
    if glass is None:
        glass = DEFAULT_BREAK_GLASS if DEFAULT_BREAK_GLASS in anchors else ""
    elif glass and glass not in anchors:
        raise AccessError(f"break-glass anchor &{glass} is not in .sops.yaml; register it first "
                          "(playbooks/break_glass.yml) or set nixfleet_break_glass_anchor to ''")
    base = list(dict.fromkeys(model.admin_anchors + ([glass] if glass else [])))
    lacking: dict[tuple[str, str], list[str]] = {}
    out: dict[str, list[str]] = {}
    for name, hosts in model.members.items():
        names = list(base)
        for host in hosts:
            wanted = [host]
            if model.user_keys:
                user = model.users.get(host)
                wanted.append(f"{user}_{host}" if user else "")
            for a in wanted:
                if a and a in anchors:
                    if a not in names:
                        names.append(a)
                else:
                    lacking.setdefault((host, a), []).append(name)
        out[name] = names
    report = [{"host": h, "anchor": a or None, "categories": cats,
               "reason": f"no anchor &{a} in .sops.yaml" if a else "no nixfleet_primary_user for its user key"}
              for (h, a), cats in sorted(lacking.items())]
    return out, report, glass


# --------------------------------------------------------------------------- markers
def _dash_line(lines: list[str], rule: CreationRule) -> int:
    """0-based line of the ``-`` that starts ``rule`` (the line above when the dash stands alone)."""
    i = rule.line - 1
    if not lines[i].lstrip().startswith("-") and i > 0 and lines[i - 1].strip() == "-":
        i -= 1
    return i


def _markers_above(lines: list[str], rule: CreationRule) -> list[tuple[int, str]]:
    """(line, category) of the marker comments in the comment block directly above ``rule``."""
    out = []
    i = _dash_line(lines, rule) - 1
    while i >= 0 and lines[i].lstrip().startswith("#"):
        m = _MARKER_RE.match(lines[i])
        if m:
            out.append((i, m.group(1)))
        i -= 1
    return out


def managed_rules(config: SopsConfig) -> dict[str, CreationRule]:
    """Category -> the rule marked as managed for it. Two rules marked for one category is an error."""
    lines = config.text.split("\n")
    out: dict[str, CreationRule] = {}
    for rule in config.rules:
        for _line, name in _markers_above(lines, rule):
            if name in out and out[name] is not rule:
                raise AccessError(f"{config.path}, lines {out[name].line} and {rule.line}: two rules are marked as "
                                  f"managed for category {name!r}; delete the marker comment above one of them")
            out[name] = rule
    return out


def _comment_edit(config: SopsConfig, text: str, what: str) -> SopsConfig:
    """``config`` with ``text`` (comment lines changed only), verified to read exactly as before."""
    edited = SopsConfig(text, config.path)
    if edited.snapshot() != config.snapshot():
        raise AccessError(f"{config.path}: refusing to {what}: the result would read differently for sops; "
                          "the file is left unchanged (please report it)")
    edited.original = config.original  # still the text on disk: changed/save() keep working
    return edited


# --------------------------------------------------------------------------- .sops.yaml
@dataclass
class Reconciliation:
    """An edited, unsaved ``.sops.yaml`` whose managed rules are the model's, and what was edited."""

    config: SopsConfig
    rules: list[dict[str, Any]]
    hosts_without_anchor: list[dict[str, Any]]
    break_glass: str

    @property
    def changed(self) -> bool:
        """True when a managed rule was created, changed or removed."""
        return any(r["action"] != "unchanged" for r in self.rules)


def _refuse_hand_written(config: SopsConfig, model: AccessModel, managed: Mapping[str, CreationRule]) -> None:
    managed_idx = {r.index for r in managed.values()}
    for cat in model.categories.values():
        rule = config.find_rule(cat.path_regex)
        if rule is not None and rule.index not in managed_idx:
            raise AccessError(
                f"{config.path}, line {rule.line}: category {cat.name} has path_regex {cat.path_regex!r}, which the "
                f"hand-written {rule.describe()} already has; access only edits rules it manages. Put the line "
                f"'{MARKER.format(name=cat.name)}' directly above that rule to hand it over, or give the category "
                "another path_regex"
            )


def _plan_markers(model: AccessModel, managed: Mapping[str, CreationRule]) -> tuple[dict[int, str], list[CreationRule]]:
    """(rule index -> new category name for managed rules renamed, managed rules to remove).

    A managed rule whose category is gone or has another path_regex is removed,
    unless a category without a rule now has its path_regex: then it changes hands
    (the marker is rewritten, the rule stays where it is).
    """
    by_regex = {c.path_regex: c.name for c in model.categories.values()}
    renames: dict[int, str] = {}
    drops: list[CreationRule] = []
    for name, rule in managed.items():
        cat = model.categories.get(name)
        if cat is not None and cat.path_regex == rule.path_regex:
            continue
        target = by_regex.get(rule.path_regex or "")
        if target and target not in managed and target not in renames.values():
            renames[rule.index] = target
        else:
            drops.append(rule)
    return renames, drops


def _rewrite_markers(config: SopsConfig, renames: Mapping[int, str], drops: Sequence[CreationRule]) -> SopsConfig:
    """Rename or delete marker lines in one text edit (before the dropped rules are deleted)."""
    if not renames and not drops:
        return config
    # Lines split on "\n" keep a trailing "\r": joining with "\n" keeps CRLF files CRLF.
    lines = config.text.split("\n")
    drop_idx = {r.index for r in drops}
    gone: set[int] = set()
    for rule in config.rules:
        if rule.index not in renames and rule.index not in drop_idx:
            continue
        for i, _name in _markers_above(lines, rule):
            if rule.index in drop_idx:
                gone.add(i)
            else:
                indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
                lines[i] = indent + MARKER.format(name=renames[rule.index]) + ("\r" if lines[i].endswith("\r") else "")
    text = "\n".join(ln for i, ln in enumerate(lines) if i not in gone)
    return _comment_edit(config, text, "rewrite access markers")


def _add_markers(config: SopsConfig, names: Sequence[str], model: AccessModel) -> SopsConfig:
    """Put the marker comment above the rules just created for ``names``, in one text edit."""
    if not names:
        return config
    lines = config.text.split("\n")
    at: dict[int, str] = {}
    for name in names:
        rule = config.find_rule(model.categories[name].path_regex)
        if rule is None:
            raise AssertionError("internal error: rule is not None does not hold")
        dash = _dash_line(lines, rule)
        indent = lines[dash][: len(lines[dash]) - len(lines[dash].lstrip())]
        at[dash] = indent + MARKER.format(name=name) + ("\r" if lines[dash].endswith("\r") else "")
    out: list[str] = []
    for i, line in enumerate(lines):
        if i in at:
            out.append(at[i])
        out.append(line)
    edited = _comment_edit(config, "\n".join(out), "mark the new rules as managed by access")
    marked = managed_rules(edited)
    if any(marked.get(n) is None or marked[n].path_regex != model.categories[n].path_regex for n in names):
        raise AccessError(f"{config.path}: the marker comments of the new rules do not read back; left unchanged")
    return edited


def _tokens(rule: CreationRule) -> set[str]:
    return {t for group in rule.members for t in group}


def reconcile(config: SopsConfig, model: AccessModel) -> Reconciliation:
    """Edit ``config`` (not saved) so its managed rules are exactly the model's; hand-written rules untouched.

    Returns the edited config (a new object when marker comments were written;
    use ``.config``), one record per managed rule ({category, path_regex,
    action: created|updated|renamed|removed|unchanged, added, removed}), the
    hosts left out for lack of an anchor, and the break-glass anchor used.
    """
    anchors = config.anchors()
    wanted, lacking, glass = wanted_anchors(model, anchors)
    managed = managed_rules(config)
    _refuse_hand_written(config, model, managed)
    renames, drops = _plan_markers(model, managed)
    records: list[dict[str, Any]] = []
    config = _rewrite_markers(config, renames, drops)
    for rule in sorted(drops, key=lambda r: -r.index):
        gone = next(n for n, r in managed.items() if r is rule)
        first = config.find_rule(rule.path_regex)
        if first is None or first.index != rule.index:
            # The editor removes the first rule with that path_regex: here a hand-written one.
            raise AccessError(f"{config.path}, line {rule.line}: cannot remove the managed rule of category {gone} "
                              f"(gone from the inventory): the earlier rule at line {first.line if first else '?'} "
                              "has the same path_regex; remove one of them by hand")
        config.ensure_rule(rule.path_regex or "", state="absent")
        records.append({"category": gone, "path_regex": rule.path_regex, "action": "removed", "added": [],
                        "removed": sorted(rule.anchors)})
    drop_idx = {r.index for r in drops}
    has_rule = {n for n, r in managed.items() if r.index not in drop_idx} | set(renames.values())
    created: list[str] = []
    for name, cat in model.categories.items():
        want = wanted[name]
        rule = config.find_rule(cat.path_regex) if name in has_rule else None
        if rule is None:
            config.ensure_rule(cat.path_regex, want)
            created.append(name)
            records.append({"category": name, "path_regex": cat.path_regex, "action": "created", "added": want,
                            "removed": []})
            continue
        before = _tokens(rule)
        if len(rule.members) != 1 or before != {"*" + a for a in want}:
            config.ensure_rule(cat.path_regex, want, exclusive=True)
        after = _tokens(config.find_rule(cat.path_regex) or rule)
        action = "renamed" if name in renames.values() else ("updated" if after != before else "unchanged")
        records.append({"category": name, "path_regex": cat.path_regex, "action": action,
                        "added": sorted(_names(after - before)), "removed": sorted(_names(before - after))})
    config = _add_markers(config, created, model)
    return Reconciliation(config, records, lacking, glass)


def _names(tokens: Iterable[str]) -> list[str]:
    return [t[1:] if t.startswith("*") else t for t in tokens]


# --------------------------------------------------------------------------- files
def _rule_or_none(config: SopsConfig, rel: str) -> CreationRule | None:
    """The rule sops picks for ``rel`` (the model matches every path with one RE2 set, once per text)."""
    try:
        return config.rule_for(rel)
    except SopsConfigError:
        return None


def rules_before(config: SopsConfig, rels: Iterable[str]) -> tuple[dict[str, CreationRule | None], set[int]]:
    """Per file the rule sops picks now, and the indexes of the managed rules (read before editing)."""
    return {rel: _rule_or_none(config, rel) for rel in rels}, {r.index for r in managed_rules(config).values()}


def _union(groups: Iterable[Iterable[str]]) -> set[str]:
    return {r for g in groups for r in g}


def plan_files(
    after: SopsConfig,
    before: Mapping[str, CreationRule | None],
    managed_before: set[int],
    current_of: Any,
    names: Mapping[str, str],
) -> tuple[list[dict[str, Any]], list[str]]:
    """Per sops file under a managed rule (before or after the edit): recipients added and removed,
    and whether its data key must be rotated; plus warnings about managed rules sops never reaches.

    ``before``: file -> rule before the edit (``rules_before``); ``current_of(rel)``
    returns a file's recipients per key group, or None for a file that is not
    sops-encrypted. A file loses a recipient when its rule before the edit, or
    the file itself, names one the edited rule does not: its data key is
    rotated (the host that lost it may have kept a copy of the old one). A file
    that only a removed managed rule covered is refused: nothing could
    re-encrypt it.
    """
    managed_after = managed_rules(after)
    after_idx = {r.index: name for name, r in managed_after.items()}
    changes: list[dict[str, Any]] = []
    orphaned: list[str] = []
    warnings: list[str] = []

    def label(rs):
        return sorted(names.get(r, r) for r in rs)
    for rel, b in before.items():
        a = _rule_or_none(after, rel)
        was, now = b is not None and b.index in managed_before, a is not None and a.index in after_idx
        if not (was or now):
            continue
        current = current_of(rel)
        if current is None:
            continue  # not a sops file (a README next to the secrets)
        if a is None:
            orphaned.append(rel)
            continue
        wanted = [list(g) for g in a.key_groups if g]
        have, want = _union(current), _union(wanted)
        lost = (have | (set(b.recipients) if b is not None else set())) - want
        regroup = [set(g) for g in current] != [set(g) for g in wanted]
        if regroup or lost:
            changes.append({"path": rel, "rule": a.path_regex, "category": after_idx.get(a.index),
                            "added": label(want - have), "removed": label(have - want), "rekey": regroup,
                            "rotated": bool(lost), "lost": label(lost)})
    if orphaned:
        raise AccessError(
            f"{after.path}: removing the managed rule(s) of categories gone from the inventory would leave "
            f"{', '.join(orphaned[:10])}{' …' if len(orphaned) > 10 else ''} without a creation rule (sops could no "
            "longer re-encrypt them). Delete or move those files, or add a rule that covers them, then run again"
        )
    warnings += _shadowed(after, managed_after, before)
    return changes, warnings


def _shadowed(after: SopsConfig, managed: Mapping[str, CreationRule], files: Iterable[str]) -> list[str]:
    """Files a managed rule's path_regex matches but an earlier rule takes (sops: first match wins)."""
    if not managed:
        return []
    names = list(managed)
    matcher = PathMatcher([managed[n].path_regex for n in names])
    out: list[str] = []
    for rel in files:
        i = matcher.first(rel)
        if i is None:
            continue
        rule, taken = managed[names[i]], _rule_or_none(after, rel)
        if taken is not None and taken.index != rule.index and taken.index < rule.index:
            out.append(f"{rel} matches category {names[i]}'s path_regex but sops picks the earlier "
                       f"{taken.describe()} (line {taken.line}); move the managed rule above it by hand")
    return out


def _plan_reader(plan: fleet.Plan, warnings: list[str]) -> Any:
    """``current_of`` for plan_files: a file's recipients per key group, as the plan read them (once)."""
    broken = {u["path"]: u["error"] for u in plan.unreadable}

    def current_of(rel: str) -> list[list[str]] | None:
        fp = plan.by_rel.get(rel)
        if fp is not None:
            return [list(g) for g in fp.current]
        if rel in broken:
            warnings.append(f"{rel}: left alone, its sops metadata cannot be read ({broken[rel]})")
        return None

    return current_of


# --------------------------------------------------------------------------- the operation
@dataclass
class AccessResult:
    """What access did (or would do in check mode). Public data only."""

    rules: list[dict[str, Any]]
    changes: list[dict[str, Any]]
    changed_files: list[str]
    rotated_files: list[str]
    hosts_without_anchor: list[dict[str, Any]]
    warnings: list[str]
    break_glass: str
    config_before: str
    config_after: str

    @property
    def config_changed(self) -> bool:
        """True when ``.sops.yaml`` is (or would be) rewritten."""
        return self.config_before != self.config_after

    @property
    def changed(self) -> bool:
        """True when anything is (or would be) written."""
        return bool(self.changed_files)

    def counts(self) -> dict[str, int]:
        """Numbers for the one-line summary."""
        return {
            "categories": len([r for r in self.rules if r["action"] != "removed"]),
            "rules_changed": len([r for r in self.rules if r["action"] != "unchanged"]),
            "files_rekeyed": len([c for c in self.changes if c["path"] in self.changed_files and c["rekey"]]),
            "files_rotated": len(self.rotated_files),
            "hosts_without_anchor": len({h["host"] for h in self.hosts_without_anchor}),
        }

    def summary(self, check_mode: bool) -> str:
        """One line: what changed (or would change)."""
        c = self.counts()
        would = "would be " if check_mode else ""
        edited = [f"{r['category']} {r['action']}" for r in self.rules if r["action"] != "unchanged"]
        text = (f"{c['categories']} categories; {c['rules_changed']} managed rules {would}changed"
                f"{' (' + ', '.join(edited) + ')' if edited else ''}; {c['files_rekeyed']} files {would}rekeyed, "
                f"{c['files_rotated']} data keys {would}rotated")
        if c["hosts_without_anchor"]:
            text += f"; {c['hosts_without_anchor']} hosts left out (no anchor in .sops.yaml: bootstrap them)"
        return text

    def as_dict(self) -> dict[str, Any]:
        """The module's return values."""
        return {
            "rules": self.rules,
            "changes": self.changes,
            "changed_files": self.changed_files,
            "rotated_files": self.rotated_files,
            "config_changed": self.config_changed,
            "hosts_without_anchor": self.hosts_without_anchor,
            "access_warnings": self.warnings,
            "break_glass_anchor": self.break_glass or None,
            "counts": self.counts(),
        }

    def diff(self, repo: str) -> list[dict[str, str]]:
        """--diff: the ``.sops.yaml`` text, then per file the recipients removed/added and data keys rotated."""
        out = []
        if self.config_changed:
            out.append({"before_header": fleet.config_path(repo), "after_header": fleet.config_path(repo),
                        "before": self.config_before, "after": self.config_after})
        if self.changes:
            out.append(fleet.changes_diff(self.changes, repo))
        return out


def _job(fp: fleet.FilePlan, rotate: bool) -> fleet.Job:
    """The file brought to its edited rule, and its data key renewed when it lost a reader."""
    return fleet.Job(fp.path, fp.rel, fp.wanted, fp.wanted_threshold, fp.foreign, rotate=rotate)


def run(
    repo: str,
    model: AccessModel,
    identities: Sequence[str] | None = None,
    check_mode: bool = False,
    workers: int | None = None,
    lock_wait: float = 0,
) -> AccessResult:
    """Reconcile ``.sops.yaml`` with ``model``, rekey what changed, rotate what a host lost.

    Under the repository lock (not in check mode) for the whole
    read-modify-write. Plans first (the edited config in memory, each file's
    metadata); then records the paths it will write (``vcs.record_pending``),
    brings each changed file to its edited rule and renews the data key of each
    file that lost a recipient, in one write per file, and writes ``.sops.yaml``
    last: a run stopped earlier leaves the old rules, so the next run finds the
    same losses and rotates again. Check mode runs
    the same planning and the fleet operations in check mode (they prove the
    identities open those files) and writes nothing. The caller commits
    ``changed_files`` once.
    """
    repo = os.path.abspath(repo)
    cfg_path = fleet.config_path(repo)
    if not os.path.exists(cfg_path):
        raise AccessError(f"{repo} has no {fleet.CONFIG_NAME}: is this the secrets repository?")
    lock = nullcontext() if check_mode else repo_lock(
        repo, purpose="sops_access", require=fleet.CONFIG_NAME, wait=lock_wait)
    with lock:
        config = SopsConfig.load(cfg_path)
        original = config.text
        plan = fleet.Plan.scan(repo, config, workers=workers, strict=False)  # one walk, one read of each file
        before, managed_before = rules_before(config, [st.rel for st in plan.states])
        names = {a.recipient: n for n, a in config.anchors().items()}
        rec = reconcile(config, model)
        warnings: list[str] = []
        changes, shadow = plan_files(rec.config, before, managed_before, _plan_reader(plan, warnings), names)
        warnings += shadow
        after = plan.with_config(rec.config)
        jobs = [_job(after.by_rel[c["path"]], c["rotated"]) for c in changes]
        staged = fleet.run_jobs(jobs, tuple(identities) if identities is not None else None, check_mode, workers,
                                root=repo)
        fleet.refuse_failures("access", staged, False)
        written = set(staged.changed)
        rotated = [j.rel for j in jobs if j.rotate and j.rel in written]
        cfg_changed = rec.config.text != original
        if not check_mode:
            # Files first, .sops.yaml last: a run stopped between them leaves the old rules, so the
            # next run finds the same losses and rotates again.
            fleet.publish(repo, "access", staged.pairs)
            if cfg_changed:
                vcs.record_pending(repo, [fleet.CONFIG_NAME])
                rec.config.save()
    return AccessResult(
        rules=rec.rules,
        changes=changes,
        changed_files=([fleet.CONFIG_NAME] if cfg_changed else []) + sorted(written),
        rotated_files=sorted(rotated),
        hosts_without_anchor=rec.hosts_without_anchor,
        warnings=warnings,
        break_glass=rec.break_glass,
        config_before=original,
        config_after=rec.config.text,
    )


# --------------------------------------------------------------------------- audit
_FIX = "run playbooks/access.yml (it reconciles .sops.yaml with the inventory, rekeys and rotates)"
_RULE_KINDS = {"created": "access_rule_missing", "removed": "access_rule_orphan", "updated": "access_rule_drift",
               "renamed": "access_rule_drift"}


def drift_findings(config: SopsConfig, model: AccessModel, files: Iterable[Any]) -> list[dict[str, Any]]:
    """Drift between the inventory's model and ``.sops.yaml`` and the files, as audit findings.

    ``files``: the sops files of a fleet scan (``.rel``, ``.current``). Each
    finding is ``{kind, severity, message, fix, …}`` like ``audit.Audit.add``
    makes: ``access_rule_missing`` / ``access_rule_drift`` / ``access_rule_orphan``
    (a managed rule to create, change or remove), ``access_file_drift`` (a file's
    recipients differ from what the model gives it), ``access_conflict`` (the
    model cannot be applied: the reason), ``access_rule_shadowed`` and
    ``access_host_without_key`` (warnings). ``config`` is not changed.
    """
    out: list[dict[str, Any]] = []

    def add(kind: str, message: str, severity: str = "error", **where: Any) -> None:
        out.append({"kind": kind, "severity": severity, "message": message, "fix": _FIX,
                    **{k: v for k, v in where.items() if v is not None}})

    current = {f.rel: f.current for f in files}
    work = SopsConfig(config.text, config.path)
    names = {a.recipient: n for n, a in work.anchors().items()}
    try:
        before, managed_before = rules_before(work, current)
        rec = reconcile(work, model)
        changes, warnings = plan_files(rec.config, before, managed_before, current.get, names)
    except (AccessError, SopsConfigError) as exc:
        add("access_conflict", str(exc))
        return out
    for r in rec.rules:
        if r["action"] == "unchanged":
            continue
        detail = "; ".join(f"{k} {', '.join(r[k])}" for k in ("added", "removed") if r[k])
        add(_RULE_KINDS[r["action"]], f"{config.path}: category {r['category']} ({r['path_regex']}): the managed "
            f"rule would be {r['action']}{': ' + detail if detail else ''}", category=r["category"])
    for c in changes:
        if c["added"] or c["removed"]:
            add("access_file_drift", f"{c['path']}: recipients differ from the inventory's model (missing: "
                f"{', '.join(c['added']) or 'none'}; extra: {', '.join(c['removed']) or 'none'})", path=c["path"])
    for h in rec.hosts_without_anchor:
        add("access_host_without_key", f"host {h['host']} reads {', '.join(h['categories'])} but has {h['reason']}",
            severity="warning", host=h["host"])
    for w in warnings:
        add("access_rule_shadowed", w, severity="warning")
    return out
