# Copyright: nixfleet.sops contributors
# MIT License
"""``SopsConfig``: a ``.sops.yaml`` held as text, read through a positioned parse, edited surgically."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

from ..age import AgeKeyError, validate_recipient
from ..fsutil import atomic_write, walk_files
from .common import (
    OTHER_KEY_TYPES,
    RULE_FIELDS,
    NoMatchingRuleError,
    SopsConfigError,
    check_anchor_name,
    relative_to_config,
)
from .lint import is_sops_file
from .model import AgeField, Anchor, CreationRule, _split_recipients
from .parse import Node, _scalar_data, node_data, parse_text
from .regex import compile_path_regex


# ============================================================================ the config
class SopsConfig:
    """A ``.sops.yaml`` held as text, read through a positioned parse, edited surgically."""

    def __init__(self, text: str, path: str = ".sops.yaml") -> None:
        """Build from ``text``; ``path`` locates the config dir for matching and names the file in errors."""
        self.path = path
        self.original = text
        self.text = text
        self.newline = "\r\n" if "\r\n" in text else "\n"
        self._lenient = False  # validate() reads past broken aliases to report everything
        self._parse()

    # ------------------------------------------------------------------ load / save
    @classmethod
    def load(cls, path: str, missing_ok: bool = False) -> SopsConfig:
        """Read ``path``; with ``missing_ok`` a missing file is an empty config (created on save)."""
        try:
            with open(path, encoding="utf-8", newline="") as fh:
                text = fh.read()
        except FileNotFoundError:
            if not missing_ok:
                raise SopsConfigError(f"{path}: no such file") from None
            text = ""
        except UnicodeDecodeError as exc:
            raise SopsConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        return cls(text, path)

    @property
    def changed(self) -> bool:
        """True when the text differs from what was loaded."""
        return self.text != self.original

    def save(self, path: str | None = None) -> bool:
        """Write the text atomically when it changed (or to another ``path``); return whether written."""
        target = path or self.path
        if path is None and not self.changed and os.path.exists(target):
            return False
        atomic_write(target, self.text.encode("utf-8"), default_mode=0o644)
        self.original = self.text
        return True

    @property
    def config_dir(self) -> str:
        """Absolute directory of the config file (what rule paths are relative to)."""
        return os.path.dirname(os.path.abspath(self.path))

    # ------------------------------------------------------------------ parsing
    def _parse(self) -> None:
        self.doc = parse_text(self.text, self.path)
        root = self.doc.root
        if root is not None and root.kind == "scalar" and _scalar_data(root) is None:
            root = None
        if root is not None and root.kind != "map":
            raise SopsConfigError(f"{self.path}: the top level must be a mapping (keys:, creation_rules:)")
        self.root = root
        # Split on "\n" only, as the YAML marks count lines (str.splitlines also breaks on \f, \v, …).
        self.lines = self.text.split("\n")
        self.lines = [ln + "\n" for ln in self.lines[:-1]] + ([self.lines[-1]] if self.lines[-1] else [])
        self._line_starts = [0]
        for ln in self.lines:
            self._line_starts.append(self._line_starts[-1] + len(ln))

    def _where(self, node: Node | None) -> str:
        return f"{self.path}, line {node.line + 1}" if node is not None else self.path

    @property
    def keys_node(self) -> Node | None:
        """The ``keys:`` value node, if any."""
        return self.root.get("keys") if self.root else None

    @property
    def rules_node(self) -> Node | None:
        """The ``creation_rules:`` value node, if any."""
        return self.root.get("creation_rules") if self.root else None

    @property
    def layout(self) -> str:
        """How ``keys:`` is shaped: ``mapping``, ``anchored_list``, ``flat`` or ``none``."""
        keys = self.keys_node
        if keys is None or keys.kind == "scalar":
            return "none"
        if keys.kind == "map":
            return "mapping"
        if keys.kind == "seq" and any(i.kind == "seq" for i in keys.items):
            return "anchored_list"
        return "flat"

    def _group_nodes(self) -> dict[str, Node]:
        """Group name -> its sequence node (name without the trailing ':' of anchored-list anchors)."""
        keys = self.keys_node
        out: dict[str, Node] = {}
        if keys is None:
            return out
        if keys.kind == "map":
            for k, v in keys.items:
                if v.kind == "seq":
                    out[str(k.value)] = v
        elif keys.kind == "seq":
            for item in keys.items:
                if item.kind == "seq" and item.anchor:
                    out[item.anchor.rstrip(":")] = item
        return out

    def _anchor_nodes(self) -> dict[str, tuple[Node, str | None]]:
        """Anchor name -> (anchored scalar node, group); the last definition wins, as for YAML aliases."""
        groups = self._group_nodes()
        group_of: dict[int, str] = {}
        for gname, seq in groups.items():
            for item in seq.items:
                group_of[id(item)] = gname
        out: dict[str, tuple[Node, str | None]] = {}
        for node in self.doc.anchor_defs:
            if node.kind == "scalar" and node.anchor:
                out[node.anchor] = (node, group_of.get(id(node)))
        return out

    def anchors(self) -> dict[str, Anchor]:
        """Every recipient anchor (anchored scalar) in document order, by name."""
        return {
            name: Anchor(name, (node.value or "").strip(), group, node.line + 1)
            for name, (node, group) in self._anchor_nodes().items()
        }

    def groups(self) -> dict[str, list[str]]:
        """Group name -> anchor names in it (``hosts``, ``users``; empty for a flat ``keys:`` list)."""
        return {
            g: [i.anchor for i in seq.items if i.kind == "scalar" and i.anchor]
            for g, seq in self._group_nodes().items()
        }

    def _age_fields(self, rule: Node) -> list[AgeField]:
        kg = rule.get("key_groups")
        if kg is not None and kg.kind == "seq" and kg.items:
            fields_: list[AgeField] = []
            for group in kg.items:
                g = group.resolved()
                if g.kind != "map":
                    raise SopsConfigError(f"{self._where(group)}: a key group must be a mapping (age:, pgp:, …)")
                pair = g.pair("age")
                fields_.append(AgeField(g, pair[0] if pair else None, pair[1] if pair else None))
            return fields_
        pair = rule.pair("age")
        return [AgeField(rule, pair[0] if pair else None, pair[1] if pair else None)]

    def _field_recipients(self, f: AgeField) -> list[str]:
        v = f.value
        if v is None:
            return []
        items = v.items if v.kind == "seq" else [v]
        out: list[str] = []
        for item in items:
            target = item.resolved()
            if item.kind == "alias" and item.target is None:
                if self._lenient:
                    continue
                raise SopsConfigError(
                    f"{self._where(item)}: alias *{item.value} refers to an anchor that is not defined"
                )
            if target.kind == "scalar":
                if _scalar_data(target) is None:
                    continue
                out.extend(_split_recipients(target.value or ""))
            else:
                raise SopsConfigError(
                    f"{self._where(item)}: age recipients must be strings; this entry is a {target.kind}"
                    + (f" (alias *{item.value} points at a list)" if item.kind == "alias" else "")
                )
        return out

    def _merged_recipients(self, group: Node, depth: int = 0) -> list[str]:
        """Age recipients of a key group's ``merge:`` entries (sops folds them into the group)."""
        merge = group.get("merge") if group.kind == "map" else None
        if merge is None or merge.kind != "seq" or depth > 20:
            return []
        out: list[str] = []
        for sub in merge.items:
            node = sub.resolved()
            if node.kind == "map":
                pair = node.pair("age")
                out += self._field_recipients(AgeField(node, pair[0] if pair else None, pair[1] if pair else None))
                out += self._merged_recipients(node, depth + 1)
        return out

    @property
    def rules(self) -> list[CreationRule]:
        """The creation rules, in order."""
        rn = self.rules_node
        if rn is None or rn.kind != "seq":
            return []
        out: list[CreationRule] = []
        for idx, item in enumerate(rn.items):
            node = item.resolved()
            if node.kind != "map":
                raise SopsConfigError(f"{self._where(item)}: creation rule {idx + 1} is not a mapping")
            data = node_data(node) or {}
            pr = data.get("path_regex")
            age_fields = self._age_fields(node)
            groups = [self._field_recipients(f) + self._merged_recipients(f.owner) for f in age_fields]
            uses_kg = node.get("key_groups") is not None and bool(data.get("key_groups"))
            other: dict[str, Any] = {k: data[k] for k in OTHER_KEY_TYPES if data.get(k) is not None}
            if uses_kg:
                for gi, g in enumerate(data.get("key_groups") or []):
                    if isinstance(g, dict):
                        for k, val in g.items():
                            if k != "age":
                                other[f"key_groups[{gi}].{k}"] = val
            st = data.get("shamir_threshold")
            out.append(
                CreationRule(
                    index=idx,
                    line=item.line + 1,
                    path_regex=str(pr) if pr not in (None, "") else None,
                    key_groups=groups,
                    shamir_threshold=st if isinstance(st, int) and not isinstance(st, bool) else None,
                    fields={k: data[k] for k in RULE_FIELDS if k in data},
                    other_keys=other,
                    members=[f.tokens() for f in age_fields],
                    uses_key_groups=uses_kg,
                    node=node,
                )
            )
        return out

    def find_rule(self, path_regex: str | None) -> CreationRule | None:
        """The first rule whose path_regex is exactly ``path_regex`` (None/'' = the catch-all)."""
        want = path_regex or None
        for r in self.rules:
            if r.path_regex == want:
                return r
        return None

    def rule_for(self, path: str) -> CreationRule:
        """The rule sops 3.11 picks for ``path`` (absolute, or relative to the config dir)."""
        rel = relative_to_config(self.path, path)
        rules = self.rules
        if self.rules_node is None:
            raise SopsConfigError(f"{self.path}: has no creation_rules")
        for r in rules:
            if r.matches(rel):
                return r
        raise NoMatchingRuleError(f"{self.path}: no creation rule matches {rel!r} (sops would refuse to create it)")

    # ------------------------------------------------------------------ semantic snapshot (defensive checks)
    def snapshot(self) -> dict[str, Any]:
        """What the config means, as plain data: anchors, groups, rules (members per group), other keys."""
        rules = []
        for r in self.rules:
            data = node_data(r.node) or {}
            rest = {k: v for k, v in data.items() if k not in ("age", "key_groups")}
            kg = data.get("key_groups")
            if isinstance(kg, list):
                rest["key_groups"] = [
                    {k: v for k, v in g.items() if k != "age"} if isinstance(g, dict) else g for g in kg
                ]
            rules.append({"rest": rest, "members": r.members})
        top = node_data(self.root) or {}
        return {
            "anchors": {a.name: (a.group, a.recipient) for a in self.anchors().values()},
            "rules": rules,
            "top": {k: v for k, v in top.items() if k not in ("keys", "creation_rules")},
        }

    def _commit(self, before_text: str, expected: dict[str, Any], what: str) -> None:
        """Check the edited text means ``expected``; otherwise restore ``before_text`` and raise."""
        try:
            actual = self.snapshot()
            problem = None if actual == expected else "the result differs from the intended change"
        except SopsConfigError as exc:
            problem = str(exc)
        if problem:
            self.text = before_text
            self._parse()
            raise SopsConfigError(
                f"{self.path}: refusing to {what}: {problem}; the file is left unchanged "
                "(this layout may need a hand edit; please report it)"
            )

    # ------------------------------------------------------------------ text primitives
    def _line_text(self, line: int) -> str:
        return self.lines[line] if 0 <= line < len(self.lines) else ""

    def _last_line(self, node: Node) -> int:
        """0-based line of the last character that belongs to ``node``."""
        if node.kind in ("map", "seq") and not node.flow and node.items:
            last = node.items[-1]
            return self._last_line(last[1] if isinstance(last, tuple) else last)
        idx = node.end
        while idx > node.start and self.text[idx - 1] in " \t\r\n":
            idx -= 1
        idx = max(idx - 1, node.start)
        return self._line_of(idx)

    def _line_of(self, index: int) -> int:
        lo, hi = 0, len(self._line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._line_starts[mid] <= index:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _dash_col(self, item: Node) -> int:
        """Column of the ``-`` that introduces a block sequence item."""
        text = self._line_text(item.line)
        col = item.col - 1
        while col >= 0 and text[col] in " \t":
            col -= 1
        if col < 0 or text[col] != "-":
            raise SopsConfigError(f"{self._where(item)}: cannot find the '-' of this list item")
        return col

    def _set_text(self, text: str) -> None:
        old = self.text
        self.text = text
        try:
            self._parse()
        except SopsConfigError as exc:
            self.text = old
            self._parse()
            raise SopsConfigError(
                f"{self.path}: refusing this edit, the result would not be valid ({exc}); the file is left unchanged"
            ) from None

    def _insert_lines(self, at_line: int, new_lines: list[str]) -> None:
        nl = self.newline
        body = "".join(ln + nl for ln in new_lines)
        if at_line >= len(self.lines):
            base = self.text
            if base and not base.endswith("\n"):
                base += nl
            self._set_text(base + body)
            return
        pos = self._line_starts[at_line]
        self._set_text(self.text[:pos] + body + self.text[pos:])

    def _delete_lines(self, first: int, last: int) -> None:
        start = self._line_starts[first]
        end = self._line_starts[min(last + 1, len(self.lines))]
        self._set_text(self.text[:start] + self.text[end:])

    def _replace_span(self, start: int, end: int, new: str) -> None:
        self._set_text(self.text[:start] + new + self.text[end:])

    def _block_seq_offset(self) -> int:
        """How far this file indents a block list under its key (0 for ``key:\\n- x``, else 2)."""
        counts: dict[int, int] = {}

        def walk(node: Node) -> None:
            if node.kind == "map":
                for k, v in node.items:
                    if v.kind == "seq" and not v.flow and v.items and v.line > k.line:
                        off = self._dash_col(v.items[0]) - k.col
                        counts[off] = counts.get(off, 0) + 1
                    walk(v)
            elif node.kind == "seq":
                for i in node.items:
                    walk(i)

        if self.root is not None:
            walk(self.root)
        if not counts:
            return 2
        return max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0]

    def _seq_offset_for(self, node: Node | None) -> int:
        """Indentation of block lists nearest ``node`` (a rule), falling back to the file's habit."""
        if node is not None and node.kind == "map":
            for k, v in node.items:
                if v.kind == "seq" and not v.flow and v.items and v.line > k.line:
                    return self._dash_col(v.items[0]) - k.col
                if v.kind == "seq":
                    for g in v.items:
                        if g.kind == "map":
                            off = self._seq_offset_for(g)
                            if off >= 0:
                                return off
        return self._block_seq_offset()

    @staticmethod
    def _plain_ok(value: str) -> bool:
        try:
            doc = parse_text(f"k: {value}\n")
        except SopsConfigError:
            return False
        v = doc.root.get("k") if doc.root else None
        return v is not None and v.kind == "scalar" and v.value == value and isinstance(_scalar_data(v), str)

    @classmethod
    def _render_scalar(cls, value: str, style: str | None = None) -> str:
        if style == '"':
            return json.dumps(value)
        if style is None and cls._plain_ok(value):
            return value
        return "'" + value.replace("'", "''") + "'"

    # ------------------------------------------------------------------ anchors
    def ensure_recipient(
        self, name: str, recipient: str | None = None, group: str | None = None, state: str = "present"
    ) -> bool:
        """Ensure anchor ``name`` holds ``recipient`` (in ``group``), or with ``absent`` is gone everywhere.

        An existing anchor with another recipient is updated in place; every
        alias follows it. Returns whether the text changed.
        """
        check_anchor_name(name)
        if group is not None:
            check_anchor_name(group, "group", allow_group_colon=True)
            group = group.rstrip(":")
        if state == "absent":
            return self.remove_anchor(name)
        if state != "present":
            raise SopsConfigError(f"state must be present or absent, not {state!r}")
        if not recipient:
            raise SopsConfigError(f"anchor {name!r}: a recipient (age1…) is needed with state=present")
        try:
            recipient = validate_recipient(recipient)
        except AgeKeyError as exc:
            raise SopsConfigError(f"anchor {name!r}: {exc}") from None
        existing = self._anchor_nodes().get(name)
        before_text = self.text
        expected = self.snapshot()
        if existing is not None:
            node, have_group = existing
            if group is not None and have_group is not None and have_group != group:
                raise SopsConfigError(
                    f"{self._where(node)}: anchor {name!r} already exists in group {have_group!r}, not {group!r}; "
                    "remove it first to move it"
                )
            if (node.value or "").strip() == recipient:
                return False
            self._replace_anchored_value(node, recipient)
            expected["anchors"][name] = (have_group, recipient)
            self._commit(before_text, expected, f"update anchor {name!r}")
            return True
        self._add_anchor(name, recipient, group)
        actual_group = self._anchor_nodes()[name][1] if name in self._anchor_nodes() else group
        expected["anchors"][name] = (actual_group, recipient)
        if actual_group != group and not (group is None or self.layout == "flat"):
            self.text = before_text
            self._parse()
            raise SopsConfigError(f"{self.path}: could not place anchor {name!r} in group {group!r}")
        self._commit(before_text, expected, f"add anchor {name!r}")
        return True

    def _replace_anchored_value(self, node: Node, recipient: str) -> None:
        span = self.text[node.start : node.end]
        m = re.match(r"&\S+\s+", span)
        if not m:
            raise SopsConfigError(f"{self._where(node)}: cannot locate the value of anchor &{node.anchor}")
        start = node.start + m.end()
        if node.style not in (None, '"', "'"):
            raise SopsConfigError(f"{self._where(node)}: anchor &{node.anchor} holds a block scalar; edit it by hand")
        self._replace_span(start, node.end, self._render_scalar(recipient, node.style))

    def _add_anchor(self, name: str, recipient: str, group: str | None) -> None:
        layout = self.layout
        groups = self._group_nodes()
        keys = self.keys_node
        if layout == "none":
            if keys is not None:
                raise SopsConfigError(f"{self._where(keys)}: keys: must be a mapping or a list to add anchors")
            g = group or "hosts"
            lines = ["keys:", f"  {g}:", f"    - &{name} {recipient}"]
            at = self.root.items[0][0].line if self.root is not None and self.root.items else len(self.lines)
            self._insert_lines(self._comment_block_start(at), lines)
            return
        if layout == "flat" or (group is None and layout != "mapping"):
            seq = keys
            assert seq is not None
            self._append_item(seq, f"&{name} {self._render_scalar(recipient, self._sibling_style(seq))}")
            return
        if group is None:
            raise SopsConfigError(f"{self.path}: keys: is grouped ({', '.join(groups)}); say which group")
        if layout == "mapping" and keys is not None and keys.pair(group) is not None and group not in groups:
            raise SopsConfigError(
                f"{self._where(keys.pair(group)[0])}: group {group!r} is not a list; write it as "
                f"'{group}: []' or add the first entry by hand"
            )
        if group in groups:
            seq = groups[group]
            self._append_item(seq, f"&{name} {self._render_scalar(recipient, self._sibling_style(seq))}")
            return
        assert keys is not None
        if layout == "mapping":
            first_key = keys.items[0][0]
            kcol = first_key.col
            off = self._block_seq_offset()
            lines = [" " * kcol + f"{group}:", " " * (kcol + off) + f"- &{name} {recipient}"]
        else:
            seqs = [i for i in keys.items if i.kind == "seq"]
            dash = self._dash_col(seqs[-1])
            inner = self._dash_col(seqs[-1].items[0]) if seqs[-1].items else dash + 2
            colon = ":" if all((s.anchor or "").endswith(":") for s in seqs if s.anchor) else ""
            lines = [" " * dash + f"- &{group}{colon}", " " * inner + f"- &{name} {recipient}"]
        self._insert_lines(self._last_line(keys) + 1, lines)

    def _sibling_style(self, seq: Node) -> str | None:
        for item in seq.items:
            if item.kind == "scalar" and item.anchor:
                return item.style
        return None

    def _comment_block_start(self, line: int) -> int:
        """First line of the comment lines directly above ``line`` (they belong to what follows)."""
        while line > 0 and self._line_text(line - 1).lstrip().startswith("#"):
            line -= 1
        return line

    def _append_item(self, seq: Node, content: str) -> None:
        """Append ``- content`` to a sequence, keeping its indentation (block) or its brackets (flow)."""
        if seq.flow:
            parts = [self.text[i.start : i.end] for i in seq.items] + [content]
            self._replace_span(seq.start, seq.end, "[" + ", ".join(parts) + "]")
            return
        if not seq.items:
            raise SopsConfigError(f"{self._where(seq)}: cannot append to an empty block list")
        dash = self._dash_col(seq.items[-1])
        self._insert_lines(self._last_line(seq.items[-1]) + 1, [" " * dash + "- " + content])

    # ------------------------------------------------------------------ rule membership
    def _anchor_recipient(self, name: str) -> str:
        nodes = self._anchor_nodes()
        if name not in nodes:
            raise SopsConfigError(
                f"{self.path}: anchor {name!r} is not defined; add it first (nixfleet.sops.sops_recipient)"
            )
        return (nodes[name][0].value or "").strip()

    def _require_rule(self, path_regex: str | None) -> CreationRule:
        rule = self.find_rule(path_regex)
        if rule is None:
            raise SopsConfigError(
                f"{self.path}: no creation rule with path_regex {path_regex!r}; "
                "create it first (nixfleet.sops.sops_creation_rule)"
            )
        return rule

    def _has_member(self, rule: CreationRule, gi: int, name: str, recipient: str) -> bool:
        return any(t == "*" + name or t == recipient for t in rule.members[gi])

    def ensure_rule_member(self, path_regex: str | None, name: str, state: str = "present", key_group: int = 0) -> bool:
        """Ensure anchor ``name`` is (present) or is not (absent) a recipient of the rule for ``path_regex``.

        Present adds an alias to key group ``key_group`` unless the anchor (or
        its recipient, literally) is already in any group. Absent removes it
        from every group, refusing to leave a group without a recipient.
        """
        check_anchor_name(name)
        rule = self._require_rule(path_regex)
        recipient = self._anchor_recipient(name)
        if state == "present":
            if any(self._has_member(rule, gi, name, recipient) for gi in range(len(rule.members))):
                return False
            if key_group >= len(rule.members):
                raise SopsConfigError(f"{self._where(rule.node)}: {rule.describe()} has no key group {key_group}")
            self._add_member(rule.index, key_group, name, recipient)
            return True
        if state != "absent":
            raise SopsConfigError(f"state must be present or absent, not {state!r}")
        changed = False
        for gi in range(len(rule.members)):
            changed |= self._remove_member(rule.index, gi, name, recipient)
        return changed

    def _rule_field(self, index: int, gi: int) -> tuple[CreationRule, AgeField]:
        rule = self.rules[index]
        return rule, self._age_fields(rule.node)[gi]

    def _add_member(self, index: int, gi: int, name: str, recipient: str) -> None:
        before_text = self.text
        expected = self.snapshot()
        rule, f = self._rule_field(index, gi)
        v = f.value
        token = "*" + name
        if v is None or (v.kind == "scalar" and _scalar_data(v) is None) or (v.kind == "seq" and not v.items):
            self._set_age_list(f, [token])
        elif v.kind == "alias":
            self._set_age_list(f, [self.text[v.start : v.end], token])
        elif v.kind == "seq":
            self._append_item(v, token)
        elif v.kind == "scalar":
            # A comma-separated string cannot hold an alias: keep its shape, add the recipient.
            token = recipient
            self._rewrite_csv(v, _split_recipients(v.value or "") + [recipient])
        else:
            raise SopsConfigError(f"{self._where(v)}: age: of {rule.describe()} has an unexpected shape")
        expected["rules"][index]["members"][gi] = expected["rules"][index]["members"][gi] + [token]
        self._commit(before_text, expected, f"add {name!r} to {rule.describe()}")

    def _set_age_list(self, f: AgeField, tokens: list[str]) -> None:
        """Write ``age:`` of ``f`` as a block list of ``tokens`` (replacing a missing, empty or single value)."""
        if f.key is not None:
            kcol = f.key.col
            off = self._seq_offset_for(f.owner)
            key_line = self._line_text(f.key.line)
            value_last = self._last_line(f.value) if f.value is not None else f.key.line
            new = [" " * (kcol + off) + "- " + t for t in tokens]
            if value_last != f.key.line:
                raise SopsConfigError(f"{self._where(f.key)}: cannot rewrite a multi-line age: value here")
            comment = ""
            if f.value is not None:
                tail = self.text[f.value.end : self._line_starts[f.key.line] + len(key_line.rstrip("\r\n"))]
                comment = tail.rstrip()
            head = self.text[self._line_starts[f.key.line] : f.key.end] + ":" + comment
            start = self._line_starts[f.key.line]
            end = self._line_starts[f.key.line + 1] if f.key.line + 1 < len(self._line_starts) else len(self.text)
            nl = self.newline
            self._replace_span(start, end, head + nl + "".join(ln + nl for ln in new))
            return
        owner = f.owner
        if owner.flow or not owner.items:
            raise SopsConfigError(f"{self._where(owner)}: cannot add age: to this mapping")
        kcol = owner.items[0][0].col
        off = self._seq_offset_for(owner)
        lines = [" " * kcol + "age:"] + [" " * (kcol + off) + "- " + t for t in tokens]
        self._insert_lines(self._last_line(owner) + 1, lines)

    def _rewrite_csv(self, v: Node, recipients: list[str]) -> None:
        raw = v.value or ""
        sep = ", " if ", " in raw else ","
        if v.style in (None, '"', "'"):
            self._replace_span(v.start, v.end, self._render_scalar(sep.join(recipients), v.style))
            return
        # A folded/literal block: one recipient per line, as people write it.
        body_first = self._line_of(v.start) + 1
        indent_text = self._line_text(body_first)
        indent = len(indent_text) - len(indent_text.lstrip(" "))
        if indent == 0:
            raise SopsConfigError(f"{self._where(v)}: cannot rewrite this block scalar")
        last = self._last_line(v)
        lines = [" " * indent + r + ("," if i < len(recipients) - 1 else "") for i, r in enumerate(recipients)]
        self._delete_lines(body_first, last)
        self._insert_lines(body_first, lines)

    def _remove_member(self, index: int, gi: int, name: str, recipient: str) -> bool:
        """Remove alias ``*name`` and literal ``recipient`` from key group ``gi`` of rule ``index``."""
        changed = False
        while True:
            rule, f = self._rule_field(index, gi)
            if not self._has_member(rule, gi, name, recipient):
                return changed
            before_text = self.text
            expected = self.snapshot()
            remaining = [t for t in rule.members[gi] if t not in ("*" + name, recipient)]
            if not remaining and not self._group_has_other_keys(rule, f):
                where = f"key group {gi + 1} of " if rule.uses_key_groups else ""
                raise SopsConfigError(
                    f"{self._where(rule.node)}: removing {name!r} would leave {where}{rule.describe()} "
                    "with no recipient; add another recipient or remove the rule first"
                )
            v = f.value
            assert v is not None
            if not remaining:
                self._delete_key(f)
            elif v.kind == "seq":
                victim = next(
                    i
                    for i in v.items
                    if (i.kind == "alias" and i.value == name)
                    or (i.kind == "scalar" and recipient in _split_recipients(i.value or ""))
                )
                if victim.kind == "scalar" and len(_split_recipients(victim.value or "")) > 1:
                    self._rewrite_csv(victim, [r for r in _split_recipients(victim.value or "") if r != recipient])
                elif v.flow:
                    parts = [self.text[i.start : i.end] for i in v.items if i is not victim]
                    self._replace_span(v.start, v.end, "[" + ", ".join(parts) + "]")
                else:
                    self._delete_lines(self._dash_line(victim), self._last_line(victim))
            elif v.kind == "scalar":
                self._rewrite_csv(v, remaining)
            else:
                raise SopsConfigError(f"{self._where(v)}: cannot remove {name!r} from this age: value")
            expected["rules"][index]["members"][gi] = remaining
            self._commit(before_text, expected, f"remove {name!r} from {rule.describe()}")
            changed = True

    def _dash_line(self, item: Node) -> int:
        self._dash_col(item)  # raises when the item is not introduced by a dash on its own line
        return item.line

    def _group_has_other_keys(self, rule: CreationRule, f: AgeField) -> bool:
        data = node_data(f.owner) or {}
        return any(data.get(k) for k in OTHER_KEY_TYPES) or any(data.get(k) for k in ("merge",))

    def _delete_key(self, f: AgeField) -> None:
        assert f.key is not None and f.value is not None
        text = self._line_text(f.key.line)
        if text[: f.key.col].strip():
            raise SopsConfigError(f"{self._where(f.key)}: age: shares its line with the list dash; remove it by hand")
        self._delete_lines(f.key.line, self._last_line(f.value))

    # ------------------------------------------------------------------ rules
    def ensure_rule(
        self,
        path_regex: str,
        anchors: list[str] | None = None,
        state: str = "present",
        exclusive: bool = False,
        shamir_threshold: int | None = None,
        key_groups: list[list[str]] | None = None,
    ) -> bool:
        """Ensure a creation rule for ``path_regex`` exists with ``anchors`` as members (or is gone).

        A new rule goes before the first catch-all rule (no path_regex), or at
        the end. ``exclusive`` makes the age recipients exactly ``anchors``;
        otherwise they are only added. ``key_groups`` (lists of anchors) sets
        the members per group of a rule with that many groups; ``shamir_threshold``
        is set when given. Returns whether the text changed.
        """
        if not isinstance(path_regex, str) or not path_regex:
            raise SopsConfigError("path_regex must be a non-empty string")
        compile_path_regex(path_regex)
        anchors = list(anchors or [])
        for a in anchors + [a for g in key_groups or [] for a in g]:
            check_anchor_name(a)
        if state == "absent":
            rule = self.find_rule(path_regex)
            if rule is None:
                return False
            self._delete_rule(rule)
            return True
        if state != "present":
            raise SopsConfigError(f"state must be present or absent, not {state!r}")
        if key_groups is not None and anchors:
            raise SopsConfigError("give either anchors or key_groups, not both")
        wanted_groups = key_groups if key_groups is not None else [anchors]
        existing = self.find_rule(path_regex)
        if existing is not None and key_groups is None and not anchors and not exclusive:
            # Only shamir_threshold (or nothing) to ensure on an existing rule.
            return self._set_shamir(existing.index, shamir_threshold) if shamir_threshold is not None else False
        if not any(wanted_groups) or any(not g for g in wanted_groups):
            raise SopsConfigError(
                f"creation rule {path_regex!r}: every key group needs at least one anchor (a rule without "
                "recipients cannot encrypt anything)"
            )
        recipients = {a: self._anchor_recipient(a) for g in wanted_groups for a in g}
        changed = False
        rule = self.find_rule(path_regex)
        if rule is None:
            self._create_rule(path_regex, wanted_groups, key_groups is not None, shamir_threshold)
            return True
        if key_groups is not None and len(key_groups) != len(rule.members):
            raise SopsConfigError(
                f"{self._where(rule.node)}: {rule.describe()} has {len(rule.members)} key group(s), "
                f"{len(key_groups)} given; changing the number of key groups is not supported, edit it by hand"
            )
        for gi, group in enumerate(wanted_groups):
            for a in group:
                rule = self.rules[rule.index]
                if key_groups is None:
                    present = any(self._has_member(rule, g, a, recipients[a]) for g in range(len(rule.members)))
                else:
                    present = self._has_member(rule, gi, a, recipients[a])
                if not present:
                    self._add_member(rule.index, gi, a, recipients[a])
                    changed = True
        if exclusive or key_groups is not None:
            changed |= self._prune_rule(rule.index, wanted_groups, key_groups is not None, recipients)
        if shamir_threshold is not None:
            changed |= self._set_shamir(rule.index, shamir_threshold)
        return changed

    def _prune_rule(self, index: int, wanted: list[list[str]], per_group: bool, recipients: dict[str, str]) -> bool:
        changed = False
        anchors = self._anchor_nodes()
        while True:
            rule = self.rules[index]
            victim = None
            for gi, tokens in enumerate(rule.members):
                allowed = wanted[gi] if per_group else [a for g in wanted for a in g]
                allowed_r = {recipients[a] for a in allowed}
                for t in tokens:
                    if t.startswith("*"):
                        nm = t[1:]
                        if nm in allowed or (nm in anchors and (anchors[nm][0].value or "").strip() in allowed_r):
                            continue
                        victim = (gi, nm, (anchors[nm][0].value or "").strip() if nm in anchors else "\0")
                    elif t not in allowed_r:
                        victim = (gi, "\0", t)
                    if victim:
                        break
                if victim:
                    break
            if victim is None:
                return changed
            gi, nm, rec = victim
            self._remove_member_token(index, gi, nm, rec)
            changed = True

    def _remove_member_token(self, index: int, gi: int, name: str, recipient: str) -> None:
        rule = self.rules[index]
        # _remove_member matches by alias name or literal recipient; a literal-only removal passes a
        # name no alias can have.
        if not self._remove_member(index, gi, name, recipient):
            raise SopsConfigError(f"{self._where(rule.node)}: could not remove a member of {rule.describe()}")

    def _set_shamir(self, index: int, threshold: int) -> bool:
        rule = self.rules[index]
        if not isinstance(threshold, int) or threshold < 1:
            raise SopsConfigError("shamir_threshold must be a positive integer")
        if threshold > max(1, len(rule.members)):
            raise SopsConfigError(
                f"{self._where(rule.node)}: shamir_threshold {threshold} is more than the "
                f"{len(rule.members)} key group(s) of {rule.describe()}"
            )
        if rule.shamir_threshold == threshold:
            return False
        before_text = self.text
        expected = self.snapshot()
        expected["rules"][index]["rest"]["shamir_threshold"] = threshold
        pair = rule.node.pair("shamir_threshold")
        if pair is not None:
            self._replace_span(pair[1].start, pair[1].end, str(threshold))
        else:
            kg = rule.node.pair("key_groups")
            kcol = rule.node.items[0][0].col
            at = kg[0].line if kg else self._last_line(rule.node) + 1
            self._insert_lines(at, [" " * kcol + f"shamir_threshold: {threshold}"])
        self._commit(before_text, expected, f"set shamir_threshold of {rule.describe()}")
        return True

    def _rule_template(self) -> tuple[int, int, int, bool, int, str | None]:
        """(dash col, key col, list offset, uses key_groups, key_groups offset, path_regex style) to copy."""
        rn = self.rules_node
        rules = self.rules
        if rn is None or rn.kind != "seq" or rn.flow or not rules:
            return 2, 4, 2, False, 2, None
        with_regex = [r for r in rules if r.path_regex] or rules
        tmpl = with_regex[-1]
        node = tmpl.node
        item = rn.items[tmpl.index]
        dash = self._dash_col(item)
        kcol = node.items[0][0].col
        off = self._seq_offset_for(node)
        kg_off = off
        kg = node.pair("key_groups")
        if kg and kg[1].kind == "seq" and kg[1].items and not kg[1].flow and kg[1].line > kg[0].line:
            kg_off = self._dash_col(kg[1].items[0]) - kg[0].col
            g = kg[1].items[0]
            age = g.pair("age") if g.kind == "map" else None
            if age and age[1].kind == "seq" and age[1].items and not age[1].flow:
                off = self._dash_col(age[1].items[0]) - age[0].col
        pr = node.get("path_regex")
        return dash, kcol, off, tmpl.uses_key_groups, kg_off, pr.style if pr is not None else None

    def _create_rule(self, path_regex: str, groups: list[list[str]], force_groups: bool, shamir: int | None) -> None:
        before_text = self.text
        expected = self.snapshot()
        dash, kcol, off, uses_kg, kg_off, pr_style = self._rule_template()
        use_kg = uses_kg or force_groups or len(groups) > 1
        pad = " " * kcol
        lines = [" " * dash + "- path_regex: " + self._render_scalar(path_regex, pr_style)]
        if shamir is not None:
            lines.append(pad + f"shamir_threshold: {shamir}")
        if use_kg:
            lines.append(pad + "key_groups:")
            gdash = kcol + kg_off
            for g in groups:
                lines.append(" " * gdash + "- age:")
                lines += [" " * (gdash + 2 + off) + "- *" + a for a in g]
        else:
            lines.append(pad + "age:")
            lines += [" " * (kcol + off) + "- *" + a for a in groups[0]]
        rn = self.rules_node
        rules = self.rules
        catch_all = next((r for r in rules if not r.path_regex), None)
        if rn is None:
            if self.root is not None and self.root.pair("creation_rules") is not None:
                raise SopsConfigError(f"{self.path}: creation_rules: is empty; write it as a list first")
            block = ["creation_rules:"] + lines
            self._insert_lines(len(self.lines), block)
            position = 0
        elif rn.kind != "seq" or rn.flow:
            raise SopsConfigError(f"{self._where(rn)}: creation_rules must be a block list to add a rule")
        elif catch_all is not None:
            item = rn.items[catch_all.index]
            at = self._comment_block_start(item.line)
            if at > 0 and not self._line_text(at - 1).strip():
                lines = lines + [""]
            self._insert_lines(at, lines)
            position = catch_all.index
        else:
            last = self._last_line(rn.items[-1])
            if len(rn.items) > 1 and not self._line_text(self._dash_line(rn.items[-1]) - 1).strip():
                lines = [""] + lines
            self._insert_lines(last + 1, lines)
            position = len(rules)
        rest: dict[str, Any] = {"path_regex": path_regex}
        if shamir is not None:
            rest["shamir_threshold"] = shamir
        if use_kg:
            rest["key_groups"] = [{} for _ in groups]
        expected["rules"].insert(position, {"rest": rest, "members": [["*" + a for a in g] for g in groups]})
        self._commit(before_text, expected, f"add creation rule {path_regex!r}")

    def _delete_rule(self, rule: CreationRule) -> None:
        before_text = self.text
        expected = self.snapshot()
        rn = self.rules_node
        assert rn is not None
        if rn.flow:
            raise SopsConfigError(f"{self._where(rn)}: creation_rules is a flow list; remove the rule by hand")
        item = rn.items[rule.index]
        self._delete_lines(self._dash_line(item), self._last_line(item))
        del expected["rules"][rule.index]
        self._commit(before_text, expected, f"remove {rule.describe()}")

    # ------------------------------------------------------------------ revoke
    def remove_anchor(self, name: str) -> bool:
        """Remove anchor ``name`` and every alias to it (a revoked host); refuse to empty a rule."""
        check_anchor_name(name)
        nodes = self._anchor_nodes()
        if name not in nodes:
            return False
        recipient = (nodes[name][0].value or "").strip()
        # Check every rule first so a refusal leaves the text untouched.
        for rule in self.rules:
            for gi, tokens in enumerate(rule.members):
                if "*" + name in tokens and all(t == "*" + name for t in tokens):
                    f = self._age_fields(rule.node)[gi]
                    if not self._group_has_other_keys(rule, f):
                        where = f"key group {gi + 1} of " if rule.uses_key_groups else ""
                        raise SopsConfigError(
                            f"{self._where(rule.node)}: removing anchor {name!r} would leave {where}"
                            f"{rule.describe()} with no recipient; remove or change that rule first"
                        )
        original = self.text
        try:
            for index in range(len(self.rules)):
                for gi in range(len(self.rules[index].members)):
                    # Only aliases: a literal copy of the same recipient is another entry the user wrote.
                    self._remove_member(index, gi, name, "\0")
            stray = [a for a in self.doc.aliases if a.value == name]
            if stray:
                raise SopsConfigError(
                    f"{self._where(stray[0])}: alias *{name} is used outside creation rules; remove it by hand"
                )
            before_text = self.text
            expected = self.snapshot()
            node, _group = self._anchor_nodes()[name]
            parent_seq = self._parent_seq(node)
            if parent_seq is None or parent_seq.flow:
                raise SopsConfigError(f"{self._where(node)}: anchor &{name} is not a list item; remove it by hand")
            if len(parent_seq.items) == 1:
                raise SopsConfigError(
                    f"{self._where(node)}: anchor &{name} is the only entry of its list; remove it by hand"
                )
            self._delete_lines(self._dash_line(node), self._last_line(node))
            del expected["anchors"][name]
            self._commit(before_text, expected, f"remove anchor {name!r}")
        except SopsConfigError:
            self.text = original
            self._parse()
            raise
        del recipient
        return True

    def _parent_seq(self, target: Node) -> Node | None:
        def walk(node: Node) -> Node | None:
            children = [v for _, v in node.items] if node.kind == "map" else node.items if node.kind == "seq" else []
            for c in children:
                if c is target:
                    return node if node.kind == "seq" else None
                found = walk(c)
                if found is not None:
                    return found
            return None

        return walk(self.root) if self.root is not None else None

    # ------------------------------------------------------------------ validate
    def validate(self, scan_files: bool = True) -> list[dict[str, Any]]:
        """Findings about the config: list of ``{kind, message, line?, anchor?, path?}``.

        Kinds: duplicate_anchor, unknown_alias, invalid_recipient, invalid_regex,
        bad_rule, rule_unused (matches no file, or only files earlier rules take),
        unmatched_sops_file (a sops file no rule matches).
        """
        findings: list[dict[str, Any]] = []
        seen: dict[str, Node] = {}
        for node in self.doc.anchor_defs:
            name = node.anchor or ""
            if name in seen:
                findings.append(
                    {
                        "kind": "duplicate_anchor",
                        "anchor": name,
                        "line": node.line + 1,
                        "message": f"{self._where(node)}: anchor &{name} is defined again "
                        f"(first on line {seen[name].line + 1}); later aliases use this one",
                    }
                )
            seen[name] = node
        for a in self.doc.aliases:
            if a.target is None:
                findings.append(
                    {
                        "kind": "unknown_alias",
                        "anchor": a.value,
                        "line": a.line + 1,
                        "message": f"{self._where(a)}: alias *{a.value} refers to an anchor that is not "
                        "defined before it",
                    }
                )
        for name, (node, _g) in self._anchor_nodes().items():
            value = (node.value or "").strip()
            if value.startswith("age") or value.startswith("ssh-"):
                try:
                    validate_recipient(value)
                except AgeKeyError as exc:
                    findings.append(
                        {
                            "kind": "invalid_recipient",
                            "anchor": name,
                            "line": node.line + 1,
                            "message": f"{self._where(node)}: anchor &{name}: {exc}",
                        }
                    )
        self._lenient = True
        try:
            rules = self.rules
        except SopsConfigError as exc:
            findings.append({"kind": "bad_rule", "message": str(exc)})
            return findings
        finally:
            self._lenient = False
        for rule in rules:
            if rule.path_regex:
                try:
                    compile_path_regex(rule.path_regex)
                except SopsConfigError as exc:
                    findings.append(
                        {"kind": "invalid_regex", "line": rule.line, "message": f"{self.path}, line {rule.line}: {exc}"}
                    )
            for gi, tokens in enumerate(rule.members):
                for t in tokens:
                    if not t.startswith("*") and not t.startswith("<"):
                        try:
                            validate_recipient(t)
                        except AgeKeyError as exc:
                            findings.append(
                                {
                                    "kind": "invalid_recipient",
                                    "line": rule.line,
                                    "message": f"{self.path}, line {rule.line}: {rule.describe()}: {exc}",
                                }
                            )
                if not tokens and not self._group_has_other_keys(rule, self._age_fields(rule.node)[gi]):
                    findings.append(
                        {
                            "kind": "bad_rule",
                            "line": rule.line,
                            "message": f"{self.path}, line {rule.line}: {rule.describe()} has no recipient",
                        }
                    )
        if scan_files:
            findings += self._file_findings(rules)
        return findings

    def iter_files(self) -> Iterator[str]:
        """Paths (relative to the config dir) of the files under it, as every fleet operation walks them."""
        config = os.path.basename(self.path)
        yield from (rel for rel in walk_files(self.config_dir) if rel != config)

    def _file_findings(self, rules: list[CreationRule]) -> list[dict[str, Any]]:
        findings: list[dict[str, Any]] = []
        good = []
        for r in rules:
            try:
                if r.path_regex:
                    compile_path_regex(r.path_regex)
                good.append(r)
            except SopsConfigError:
                pass
        first_match: dict[int, list[str]] = {r.index: [] for r in good}
        any_match: dict[int, list[str]] = {r.index: [] for r in good}
        for rel in self.iter_files():
            winner = None
            for r in good:
                if r.matches(rel):
                    any_match[r.index].append(rel)
                    if winner is None:
                        winner = r
            if winner is not None:
                first_match[winner.index].append(rel)
            elif is_sops_file(os.path.join(self.config_dir, rel)):
                findings.append(
                    {
                        "kind": "unmatched_sops_file",
                        "path": rel,
                        "message": f"{rel} is a sops file but no creation rule in {self.path} matches it",
                    }
                )
        for r in good:
            if not r.path_regex or first_match[r.index]:
                continue
            if any_match[r.index]:
                msg = f"every file it matches ({any_match[r.index][0]}, …) is taken by an earlier rule"
            else:
                msg = "it matches no existing file"
            findings.append(
                {"kind": "rule_unused", "line": r.line, "message": f"{self.path}, line {r.line}: {r.describe()}: {msg}"}
            )
        return findings


