# Copyright: nixfleet.sops contributors
# MIT License
"""What one ``.sops.yaml`` text means: anchors, groups, layout and creation rules as sops reads them.

A ``ConfigModel`` belongs to one parse of one text and computes each answer
once (``SopsConfig`` drops it when the text changes). Rules are read the way
sops 3.11 reads them through yaml.v3: aliases resolved, YAML merge keys
(``<<: *all``) folded in (keys written in a mapping win), comma-separated
strings split, sops' own key-group ``merge:`` folded into its group. Rule
matching goes through ``PathMatcher`` (one RE2 set for all rules).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field, replace
from typing import Any

from .common import OTHER_KEY_TYPES, RULE_FIELDS, NoMatchingRuleError, SopsConfigError, relative_to_config
from .parse import Budget, Entry, Node, ParsedDoc, entries, lookup, node_data, paused_gc, scalar_data
from .regex import PathMatcher, path_regex_matches

# Readings of rules by (path, lenient, rule text, alias targets): see ConfigModel._memo_rule.
_RULE_MEMO: dict[tuple, tuple[CreationRule, dict[str, Any]]] = {}
_MEMO_LIMIT = 50_000
# Rule-level master keys other than age, and the key-group field each is called in a key group.
FOREIGN_KEYS = ("pgp", "kms", "gcp_kms", "azure_keyvault", "hc_vault_transit_uri")
_GROUP_FOREIGN = {"pgp": "pgp", "kms": "kms", "gcp_kms": "gcp_kms", "azure_keyvault": "azure_keyvault",
                  "hc_vault": "hc_vault_transit_uri"}


@dataclass(frozen=True)
class Anchor:
    """A recipient anchor: ``&name age1…`` somewhere in ``.sops.yaml``."""

    name: str
    recipient: str
    group: str | None
    line: int  # 1-based


def split_recipients(text: str) -> list[str]:
    """Recipients of a comma-separated string, stripped, as sops splits them."""
    return [p.strip() for p in text.split(",") if p.strip()]


_split_recipients = split_recipients  # the name the package used before


@dataclass
class AgeField:
    """The ``age`` entry of a rule (no key_groups) or of one key group, as sops reads it.

    ``owner`` is the mapping the rule or group is written as; ``key``/``value``
    are the ``age`` key and value nodes, which may sit in another mapping
    when ``merged_from`` (the ``<<`` value) brought them in. ``shared`` is
    True when ``owner`` is reached through an alias (other rules read it too).
    """

    owner: Node
    key: Node | None
    value: Node | None
    merged_from: Node | None = None
    shared: bool = False

    def tokens(self) -> list[str]:
        """Members in order: ``*name`` for an alias, the recipient text for a literal."""
        return [t for t, _r in self.pairs(None)]

    def pairs(self, path: str | None, lenient: bool = True) -> list[tuple[str, tuple[str, ...]]]:
        """(token, recipients it stands for) per member; with ``path`` (strict) bad entries raise."""
        v = self.value
        if v is None:
            return []
        if v.kind == "alias":
            return [("*" + (v.value or ""), tuple(_recipients_of(v, path, lenient)))]
        if v.kind == "scalar":
            return [(r, (r,)) for r in split_recipients(v.value or "")] if scalar_data(v) is not None else []
        if v.kind != "seq":
            if path is not None:
                raise SopsConfigError(f"{path}, line {v.line + 1}: age recipients must be strings or a list")
            return [("<" + v.kind + ">", ())]
        out: list[tuple[str, tuple[str, ...]]] = []
        for item in v.items:
            if item.kind == "alias":
                out.append(("*" + (item.value or ""), tuple(_recipients_of(item, path, lenient, in_list=True))))
            elif item.kind == "scalar":
                out.extend((r, (r,)) for r in split_recipients(item.value or "") if scalar_data(item) is not None)
            else:
                if path is not None:
                    raise SopsConfigError(
                        f"{path}, line {item.line + 1}: age recipients must be strings; this entry is a {item.kind}"
                    )
                out.append(("<" + item.kind + ">", ()))
        return out


def _recipients_of(alias: Node, path: str | None, lenient: bool, in_list: bool = False) -> list[str]:
    """Recipients an alias in ``age`` stands for (a string, or a list of strings when not in a list)."""
    target = alias.target
    if target is None:
        if path is None or lenient:
            return []
        raise SopsConfigError(
            f"{path}, line {alias.line + 1}: alias *{alias.value} refers to an anchor that is not defined"
        )
    items = target.items if target.kind == "seq" and not in_list else [target]
    out: list[str] = []
    for node in items:
        if node.kind == "scalar":
            if scalar_data(node) is not None:
                out.extend(split_recipients(node.value or ""))
        elif path is not None:
            raise SopsConfigError(
                f"{path}, line {alias.line + 1}: age recipients must be strings; this entry is a {node.kind}"
                f" (alias *{alias.value} points at a {'list' if node.kind == 'seq' else 'mapping'})"
            )
    return out


def _as_list(value: Any) -> list[str]:
    """A master-key field as sops reads it: a comma-separated string or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return split_recipients(value)
    if isinstance(value, list):
        out: list[str] = []
        for v in value:
            out.extend(_as_list(v) if isinstance(v, (str, list)) else [_key_string(v)])
        return out
    return [_key_string(value)]


def _key_string(value: Any) -> str:
    """One key-group master key (kms/gcp_kms/azure_keyvault entries are mappings) as one string."""
    if isinstance(value, dict):
        for k in ("arn", "resource_id"):
            if value.get(k):
                return str(value[k])
        if value.get("vaultUrl"):
            return "/".join(str(value.get(k) or "") for k in ("vaultUrl", "key", "version")).rstrip("/")
    return str(value)


def _foreign(data: dict[str, Any], names: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, norm in names.items():
        keys = _as_list(data.get(key))
        if keys:
            out.setdefault(norm, []).extend(keys)
    subs = (data.get("merge") or []) if names is _GROUP_FOREIGN else []
    for sub in subs if isinstance(subs, list) else []:
        if isinstance(sub, dict):
            for k, v in _foreign(sub, names).items():
                out.setdefault(k, []).extend(v)
    return out


@dataclass
class CreationRule:
    """One entry of ``creation_rules`` as sops reads it."""

    index: int
    line: int  # 1-based
    path_regex: str | None
    key_groups: list[list[str]]  # recipients (age) per key group; one group when the rule has no key_groups
    shamir_threshold: int | None
    fields: dict[str, Any]  # encrypted_regex, unencrypted_suffix, … when present
    other_keys: dict[str, Any]  # pgp, kms, … (the rule's or its groups'), untouched
    members: list[list[str]]  # age tokens per group: "*anchor" or literal recipient
    uses_key_groups: bool
    node: Node = field(repr=False)
    # Per key group, the non-age master keys sops would also encrypt to, normalised: type -> key strings.
    foreign: list[dict[str, list[str]]] = field(default_factory=list)

    @property
    def recipients(self) -> list[str]:
        """Every age recipient the rule names, flattened over key groups, in order, no duplicates."""
        seen: list[str] = []
        for group in self.key_groups:
            for r in group:
                if r not in seen:
                    seen.append(r)
        return seen

    @property
    def anchors(self) -> list[str]:
        """Anchor names referred to (by alias) anywhere in the rule's age recipients."""
        out: list[str] = []
        for group in self.members:
            for t in group:
                if t.startswith("*") and t[1:] not in out:
                    out.append(t[1:])
        return out

    def matches(self, relative_path: str) -> bool:
        """True when sops would pick this rule for ``relative_path`` (ignoring earlier rules)."""
        return not self.path_regex or path_regex_matches(self.path_regex, relative_path)

    def describe(self) -> str:
        """Short human name: the path_regex, or 'the catch-all rule'."""
        return f"rule {self.path_regex!r}" if self.path_regex else "the catch-all rule (no path_regex)"


def _anchored_group(item: Node) -> tuple[str, Node] | None:
    """(group name, its list) for an item of a ``keys:`` list that is an anchored group.

    ``- &hosts:`` followed by a list reads in yaml.v3 (and libyaml) as a
    mapping whose only key is an empty scalar anchored ``hosts``; an anchored
    list (``- &hosts`` then the list) is the other spelling.
    """
    if item.kind == "seq" and item.anchor:
        return item.anchor.rstrip(":"), item
    if item.kind == "map" and len(item.items) == 1:
        k, v = item.items[0]
        if k.kind == "scalar" and k.anchor and not k.value and v.kind == "seq":
            return k.anchor.rstrip(":"), v
    return None


class ConfigModel:
    """The read-only meaning of one parse of a ``.sops.yaml``; every answer computed once."""

    def __init__(self, doc: ParsedDoc, path: str) -> None:
        """Check the top level and keep ``doc``; nothing else is computed until asked for."""
        self.doc = doc
        self.path = path
        root = doc.root
        if root is not None and root.kind == "scalar" and scalar_data(root) is None:
            root = None
        if root is not None and root.kind != "map":
            raise SopsConfigError(f"{path}: the top level must be a mapping (keys:, creation_rules:)")
        self.root = root
        self._cache: dict[str, Any] = {}

    def where(self, node: Node | None) -> str:
        """``file, line N`` of ``node`` for messages."""
        return f"{self.path}, line {node.line + 1}" if node is not None else self.path

    def _once(self, name: str, compute: Any) -> Any:
        if name not in self._cache:
            self._cache[name] = compute()
        return self._cache[name]

    # ------------------------------------------------------------------ keys and anchors
    @property
    def keys_node(self) -> Node | None:
        """The ``keys:`` value node, if any."""
        return self.root.get("keys") if self.root else None

    @property
    def rules_node(self) -> Node | None:
        """The ``creation_rules:`` value node sops reads, if any (a merged one resolved)."""
        return self._once("rules_node", self._rules_node)

    def _rules_node(self) -> Node | None:
        if self.root is None:
            return None
        e = lookup(self.root, "creation_rules", Budget(self.path), self.path)
        return e.value.resolved() if e is not None else None

    @property
    def layout(self) -> str:
        """How ``keys:`` is shaped: ``mapping``, ``anchored_list``, ``flat`` or ``none``."""
        keys = self.keys_node
        if keys is None or keys.kind == "scalar":
            return "none"
        if keys.kind == "map":
            return "mapping"
        if keys.kind == "seq" and any(_anchored_group(i) for i in keys.items):
            return "anchored_list"
        return "flat"

    def group_nodes(self) -> dict[str, Node]:
        """Group name -> its sequence node (name without the trailing ':' of anchored-list anchors)."""
        return self._once("groups", self._group_nodes)

    def _group_nodes(self) -> dict[str, Node]:
        keys = self.keys_node
        out: dict[str, Node] = {}
        if keys is not None and keys.kind == "map":
            for k, v in keys.items:
                if v.kind == "seq":
                    out[str(k.value)] = v
        elif keys is not None and keys.kind == "seq":
            for item in keys.items:
                group = _anchored_group(item)
                if group is not None:
                    out[group[0]] = group[1]
        return out

    def anchor_nodes(self) -> dict[str, tuple[Node, str | None]]:
        """Anchor name -> (anchored scalar node, group); the last definition wins, as for YAML aliases."""
        return self._once("anchor_nodes", self._anchor_nodes)

    def _anchor_nodes(self) -> dict[str, tuple[Node, str | None]]:
        group_of: dict[int, str] = {}
        for gname, seq in self.group_nodes().items():
            for item in seq.items:
                group_of[id(item)] = gname
        group_keys = {id(k) for item in (self.keys_node.items if self.layout == "anchored_list" else [])
                      if item.kind == "map" for k, _v in item.items}
        return {
            node.anchor: (node, group_of.get(id(node)))
            for node in self.doc.anchor_defs
            if node.kind == "scalar" and node.anchor and id(node) not in group_keys
        }

    def anchors(self) -> dict[str, Anchor]:
        """Every recipient anchor (anchored scalar) in document order, by name."""
        return dict(self._once("anchors", lambda: {
            name: Anchor(name, (node.value or "").strip(), group, node.line + 1)
            for name, (node, group) in self.anchor_nodes().items()
        }))

    def groups(self) -> dict[str, list[str]]:
        """Group name -> anchor names in it (``hosts``, ``users``; empty for a flat ``keys:`` list)."""
        return {
            g: [i.anchor for i in seq.items if i.kind == "scalar" and i.anchor]
            for g, seq in self.group_nodes().items()
        }

    # ------------------------------------------------------------------ rules
    def age_fields(self, rule: Node, budget: Budget | None = None) -> list[AgeField]:
        """The ``age`` field of each key group of ``rule`` (one when it has no key_groups), merges folded."""
        budget = budget or Budget(self.path)
        kg = lookup(rule, "key_groups", budget, self.path)
        kg_value = kg.value.resolved() if kg is not None else None
        if kg_value is not None and kg_value.kind == "seq" and kg_value.items:
            shared_list = kg.value.kind == "alias" or kg.merged_from is not None
            fields_: list[AgeField] = []
            for group in kg_value.items:
                g = group.resolved()
                if g.kind != "map":
                    raise SopsConfigError(f"{self.where(group)}: a key group must be a mapping (age:, pgp:, …)")
                fields_.append(self._age_field(g, budget, shared_list or group.kind == "alias"))
            return fields_
        return [self._age_field(rule, budget, False)]

    def _age_field(self, owner: Node, budget: Budget, shared: bool) -> AgeField:
        e = lookup(owner, "age", budget, self.path)
        if e is None:
            return AgeField(owner, None, None, None, shared)
        return AgeField(owner, e.key_node, e.value, e.merged_from, shared)

    def _sops_merged(self, group: Node, budget: Budget, lenient: bool, depth: int = 0) -> list[tuple[str, tuple]]:
        """(token, recipients) of a key group's ``merge:`` entries (sops folds them into the group)."""
        merge = lookup(group, "merge", budget, self.path) if group.kind == "map" else None
        if merge is None or depth > 20:
            return []
        value = merge.value.resolved()
        out: list[tuple[str, tuple]] = []
        for sub in value.items if value.kind == "seq" else []:
            budget.spend(sub)
            node = sub.resolved()
            if node.kind == "map":
                out += self._age_field(node, budget, True).pairs(self.path, lenient)
                out += self._sops_merged(node, budget, lenient, depth + 1)
        return out

    def _rule(self, idx: int, item: Node, lenient: bool) -> tuple[CreationRule, dict[str, Any]]:
        budget = Budget(self.path)
        node = item.resolved()
        if node.kind != "map":
            raise SopsConfigError(f"{self.where(item)}: creation rule {idx + 1} is not a mapping")
        data = node_data(node, budget, self.path) or {}
        pr = data.get("path_regex")
        age_fields = self.age_fields(node, budget)
        pairs = [f.pairs(self.path, lenient) + self._sops_merged(f.owner, budget, lenient) for f in age_fields]
        uses_kg = bool(data.get("key_groups")) and isinstance(data.get("key_groups"), list)
        other: dict[str, Any] = {k: data[k] for k in OTHER_KEY_TYPES if data.get(k) is not None}
        groups_data = data.get("key_groups") if uses_kg else [data]
        if uses_kg:
            for gi, g in enumerate(groups_data):
                if isinstance(g, dict):
                    other.update({f"key_groups[{gi}].{k}": v for k, v in g.items() if k != "age"})
        names = _GROUP_FOREIGN if uses_kg else {k: k for k in FOREIGN_KEYS}
        st = data.get("shamir_threshold")
        rule = CreationRule(
            index=idx,
            line=item.line + 1,
            path_regex=str(pr) if pr not in (None, "") else None,
            key_groups=[[r for _t, rs in group for r in rs] for group in pairs],
            shamir_threshold=st if isinstance(st, int) and not isinstance(st, bool) else None,
            fields={k: data[k] for k in RULE_FIELDS if k in data},
            other_keys=other,
            members=[f.tokens() for f in age_fields],
            uses_key_groups=uses_kg,
            node=node,
            foreign=[_foreign(g, names) if isinstance(g, dict) else {} for g in groups_data],
        )
        rest = {k: v for k, v in data.items() if k not in ("age", "key_groups")}
        if isinstance(data.get("key_groups"), list):
            rest["key_groups"] = [
                {k: v for k, v in g.items() if k != "age"} if isinstance(g, dict) else g for g in data["key_groups"]
            ]
        return rule, {"rest": rest, "groups": pairs}

    def _build(self, lenient: bool) -> list[tuple[CreationRule, Any]]:
        rn = self.rules_node
        if rn is None or rn.kind != "seq":
            return []
        with paused_gc():
            return [self._memo_rule(idx, item, lenient) for idx, item in enumerate(rn.items)]

    def _memo_key(self, item: Node, lenient: bool) -> tuple | None:
        """What a rule's meaning depends on: its own text and the scalars its aliases name (None: not memoisable)."""
        if item.kind != "map":
            return None
        starts = self._once("alias_starts", lambda: [a.start for a in self.doc.aliases])
        env = []
        for a in self.doc.aliases[bisect_left(starts, item.start) : bisect_left(starts, item.end)]:
            t = a.target
            if t is None or t.kind != "scalar":
                return None  # merges and aliased lists: computed each time
            env.append((a.value, t.value, t.style, t.tag))
        return (self.path, lenient, self.doc.text[item.start : item.end], tuple(env))

    def _memo_rule(self, idx: int, item: Node, lenient: bool) -> tuple[CreationRule, dict[str, Any]]:
        """``_rule``, reusing the reading of an identical rule from an earlier text version (an edit
        re-reads 2,000 unchanged rules otherwise)."""
        key = self._memo_key(item, lenient)
        hit = _RULE_MEMO.get(key) if key is not None else None
        if hit is not None:
            return replace(hit[0], index=idx, line=item.line + 1, node=item), hit[1]
        rule, state = self._rule(idx, item, lenient)
        if key is not None:
            if len(_RULE_MEMO) >= _MEMO_LIMIT:
                _RULE_MEMO.clear()
            _RULE_MEMO[key] = (rule, state)
        return rule, state

    @property
    def rules(self) -> list[CreationRule]:
        """The creation rules, in order (an alias to an undefined anchor is an error naming its line)."""
        # Built once per text version; rule_for asks for it once per file of a fleet.
        return self._once("rule_list", lambda: [r for r, _s in self._once("rules", lambda: self._build(False))])

    def rules_lenient(self) -> list[CreationRule]:
        """The rules read past aliases to undefined anchors (for ``validate``, which reports them)."""
        return [r for r, _s in self._once("rules_lenient", lambda: self._build(True))]

    def find_rule(self, path_regex: str | None) -> CreationRule | None:
        """The first rule whose path_regex is exactly ``path_regex`` (None/'' = the catch-all)."""
        by_regex = self._once("by_regex", self._by_regex)
        return by_regex.get(path_regex or None)

    def _by_regex(self) -> dict[str | None, CreationRule]:
        out: dict[str | None, CreationRule] = {}
        for r in self.rules:
            out.setdefault(r.path_regex, r)
        return out

    def matcher(self) -> PathMatcher:
        """The rules' path_regex matcher, built once per text version (before workers fork, it serves them all)."""
        return self._once("matcher", lambda: PathMatcher([r.path_regex for r in self.rules]))

    def rule_for(self, path: str) -> CreationRule:
        """The rule sops 3.11 picks for ``path`` (absolute, or relative to the config dir)."""
        rel = relative_to_config(self.path, path)
        if self.rules_node is None:
            raise SopsConfigError(f"{self.path}: has no creation_rules")
        rules = self.rules
        index = self.matcher().first(rel)
        if index is None:
            raise NoMatchingRuleError(
                f"{self.path}: no creation rule matches {rel!r} (sops would refuse to create it)"
            )
        return rules[index]

    # ------------------------------------------------------------------ what sops reads, as plain data
    def snapshot(self) -> dict[str, Any]:
        """What the config means as sops reads it: anchors, and per rule its settings and, per key group,
        each member with the recipients it stands for (aliases and merges resolved)."""
        return self._once("snapshot", self._snapshot)

    def _snapshot(self) -> dict[str, Any]:
        rules = []
        for _rule, state in self._once("rules", lambda: self._build(False)):
            rules.append(state)
        top = {e.key: node_data(e.value, Budget(self.path), self.path) for e in self._top_entries()}
        return {
            "anchors": {a.name: (a.group, a.recipient) for a in self._once("anchors", self.anchors).values()},
            "rules": rules,
            "top": top,
        }

    def _top_entries(self) -> list[Entry]:
        if self.root is None:
            return []
        return [e for e in entries(self.root, Budget(self.path), self.path) if e.key not in ("keys", "creation_rules")]
