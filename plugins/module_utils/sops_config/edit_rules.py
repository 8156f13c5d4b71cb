# Copyright: nixfleet.sops contributors
# MIT License
"""Edits of creation rules: members of a rule, new rules, removed rules, shamir_threshold.

An edit changes only the rule it names. Where a rule's ``age`` is not its
own text, editing it in place would change other rules too:

- ``age`` brought in by a YAML merge key (``<<: *all``): the rule gets its
  own ``age:`` list holding the merged members plus (or minus) the change, so
  the merged mapping and every other rule that merges it stay as they were
  (writing only ``age: [*new]`` beside the merge key would override the merged
  list: sops would encrypt to the new host alone);
- an anchored ``age`` value another rule aliases (``age: &shared a,b`` …
  ``age: *shared``): a member is added by turning this rule's value into a list
  whose first item is still the anchored value; removing from it is refused;
- a key group or list written as an alias: refused, with what to do by hand.

Every edit is verified against what sops reads afterwards (see editor.py).
"""

from __future__ import annotations

from typing import Any

from .common import SopsConfigError, check_anchor_name
from .edit_anchors import AnchorEdits
from .model import AgeField, CreationRule, split_recipients
from .parse import scalar_data
from .regex import compile_path_regex


def _check_threshold(path_regex: str, threshold: int | None, groups: int) -> None:
    if threshold is not None and not 1 <= threshold <= max(1, groups):
        raise SopsConfigError(f"creation rule {path_regex!r}: shamir_threshold {threshold} must be between 1 and "
                              f"its {groups} key group(s)")


def _has_member(rule: CreationRule, gi: int, name: str, recipient: str) -> bool:
    return any(t == "*" + name or t == recipient for t in rule.members[gi])


class RuleEdits(AnchorEdits):
    """Rule edits on top of the anchor edits; each public edit is one transaction per change."""

    def _require_rule(self, path_regex: str | None) -> CreationRule:
        rule = self.model.find_rule(path_regex)
        if rule is None:
            raise SopsConfigError(
                f"{self.path}: no creation rule with path_regex {path_regex!r}; "
                "create it first (nixfleet.sops.sops_creation_rule)"
            )
        return rule

    def ensure_rule_member(self, path_regex: str | None, name: str, state: str = "present", key_group: int = 0,
                           every_group: bool = False) -> bool:
        """Ensure anchor ``name`` is (present) or is not (absent) a recipient of the rule for ``path_regex``.

        Present adds an alias to key group ``key_group`` unless the anchor (or its recipient, literally) is
        already in any group; ``every_group`` adds it to each group that lacks it (a key that must open the
        file alone: break-glass). Absent removes it from every group, never leaving a group without a recipient.
        """
        check_anchor_name(name)
        rule = self._require_rule(path_regex)
        recipient = self._anchor_recipient(name)
        if state == "present" and every_group:
            # Adding to one group leaves the others' members as they were: the list holds.
            missing = [gi for gi in range(len(rule.members)) if not _has_member(rule, gi, name, recipient)]
            for gi in missing:
                self._add_member(rule.index, gi, name, recipient)
            return bool(missing)
        if state == "present":
            if any(_has_member(rule, gi, name, recipient) for gi in range(len(rule.members))):
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

    # ------------------------------------------------------------------ what another rule shares
    def _shared_reason(self, f: AgeField, rule: CreationRule, gi: int) -> str | None:
        """Why editing the age value of ``f`` in place would change other rules too (None when it would not)."""
        where = f"key group {gi + 1} of {rule.describe()}" if rule.uses_key_groups else rule.describe()
        if f.shared:
            return f"{where} is written as an alias, so every rule using that anchor reads it"
        if f.value is not None and f.value.kind == "seq" and self._aliased(f.value):
            return f"the age list of {where} is anchored (&{f.value.anchor}) and other rules use it"
        return None

    def _refuse_shared(self, f: AgeField, rule: CreationRule, gi: int, what: str) -> None:
        reason = self._shared_reason(f, rule, gi)
        if reason:
            raise SopsConfigError(
                f"{self._where(f.value or rule.node)}: refusing to {what}: {reason}; changing it here would "
                "change those rules too. Give this rule its own age: list by hand, then run again"
            )

    def _member_texts(self, f: AgeField) -> list[str]:
        """The members of a merged age value written as list items this rule can hold itself."""
        if (v := f.value) is None:
            raise AssertionError("internal error: v is not None does not hold")
        items = v.items if v.kind == "seq" else [v]
        out: list[str] = []
        for item in items:
            if item.kind == "alias":
                out.append("*" + (item.value or ""))
            elif item.kind == "scalar" and item.anchor:
                out.append("*" + item.anchor)  # defined before this rule, as the merged mapping is
            elif item.kind == "scalar" and scalar_data(item) is not None:
                text = self.text[item.start : item.end]
                if "\n" in text:
                    raise SopsConfigError(f"{self._where(item)}: a multi-line recipient value; edit it by hand")
                out.append(text)
        return out

    # ------------------------------------------------------------------ add / remove a member
    def _add_member(self, index: int, gi: int, name: str, recipient: str) -> None:
        rule = self.model.rules[index]
        f = self.model.age_fields(rule.node)[gi]
        what = f"add {name!r} to {rule.describe()}"
        with self.transaction(what) as expect:
            self._refuse_shared(f, rule, gi, what)
            v = f.value
            token = "*" + name
            if f.merged_from is not None:
                self._set_age_list(AgeField(f.owner, None, None), self._member_texts(f) + [token])
            elif v is None or (v.kind == "scalar" and scalar_data(v) is None) or (v.kind == "seq" and not v.items):
                self._set_age_list(f, [token])
            elif v.kind == "alias":
                self._set_age_list(f, [self.text[v.start : v.end], token])
            elif v.kind == "seq":
                self._append_item(v, token)
            elif v.kind == "scalar" and self._aliased(v):
                # Other rules alias this anchored string: keep it, unchanged, as the list's first item.
                self._set_age_list(f, [self.text[v.start : v.end], token])
            elif v.kind == "scalar":
                # A comma-separated string cannot hold an alias: keep its shape, add the recipient.
                token = recipient
                self._rewrite_csv(v, split_recipients(v.value or "") + [recipient])
            else:
                raise SopsConfigError(f"{self._where(v)}: age: of {rule.describe()} has an unexpected shape")
            n = len(rule.members[gi])
            pairs = expect.group(index, gi)
            expect.set_group(index, gi, pairs[:n] + [(token, tuple(split_recipients(recipient)))] + pairs[n:])

    def _set_age_list(self, f: AgeField, tokens: list[str]) -> None:
        """Write ``age:`` of ``f`` as a block list of ``tokens`` (replacing a missing, empty or single value)."""
        nl = self.newline
        if f.key is not None:
            kcol = f.key.col
            off = self._seq_offset_for(f.owner)
            key_line = self._line_text(f.key.line)
            value_last = self._last_line(f.value) if f.value is not None else f.key.line
            if value_last != f.key.line:
                raise SopsConfigError(f"{self._where(f.key)}: cannot rewrite a multi-line age: value here")
            comment = ""
            if f.value is not None:
                tail = self.text[f.value.end : self._line_starts[f.key.line] + len(key_line.rstrip("\r\n"))]
                comment = tail.rstrip()
            head = self.text[self._line_starts[f.key.line] : f.key.end] + ":" + comment
            start = self._line_starts[f.key.line]
            end = self._line_starts[f.key.line + 1] if f.key.line + 1 < len(self._line_starts) else len(self.text)
            new = [" " * (kcol + off) + "- " + t for t in tokens]
            self._replace_span(start, end, head + nl + "".join(ln + nl for ln in new))
            return
        owner = f.owner
        if owner.flow or not owner.items:
            raise SopsConfigError(f"{self._where(owner)}: cannot add age: to this mapping")
        kcol = owner.items[0][0].col
        off = self._seq_offset_for(owner)
        lines = [" " * kcol + "age:"] + [" " * (kcol + off) + "- " + t for t in tokens]
        self._insert_lines(self._last_line(owner) + 1, lines)

    def _remove_member(self, index: int, gi: int, name: str, recipient: str) -> bool:
        """Remove alias ``*name`` and literal ``recipient`` from key group ``gi`` of rule ``index``."""
        rule = self.model.rules[index]
        if not _has_member(rule, gi, name, recipient):
            return False
        f = self.model.age_fields(rule.node)[gi]
        victims = {"*" + name, recipient}
        remaining = [t for t in rule.members[gi] if t not in victims]
        if not remaining and not self._group_has_other_keys(f):
            where = f"key group {gi + 1} of " if rule.uses_key_groups else ""
            raise SopsConfigError(
                f"{self._where(rule.node)}: removing {name!r} would leave {where}{rule.describe()} "
                "with no recipient; add another recipient or remove the rule first"
            )
        what = f"remove {name if name != chr(0) else recipient!r} from {rule.describe()}"
        with self.transaction(what) as expect:
            self._refuse_shared(f, rule, gi, what)
            if f.merged_from is not None and remaining:
                kept = [t for t in self._member_texts(f) if t not in victims]
                self._set_age_list(AgeField(f.owner, None, None), kept)
            elif f.value is not None and f.value.kind == "scalar" and self._aliased(f.value):
                raise SopsConfigError(
                    f"{self._where(f.value)}: refusing to {what}: its age value is anchored "
                    f"(&{f.value.anchor}) and other rules use it; edit those rules by hand"
                )
            else:
                self._drop_all(index, gi, victims)
            n = len(rule.members[gi])
            pairs = expect.group(index, gi)
            expect.set_group(index, gi, [p for p in pairs[:n] if p[0] not in victims] + pairs[n:])
        return True

    def _drop_all(self, index: int, gi: int, victims: set[str]) -> None:
        """Within a transaction: delete every member in ``victims`` from key group ``gi`` of rule ``index``."""
        for _unused in range(10_000):
            rule = self.model.rules[index]
            if not any(t in victims for t in rule.members[gi]):
                return
            self._drop_tokens(self.model.age_fields(rule.node)[gi], rule.members[gi], victims, rule.describe())
        raise SopsConfigError(f"{self.path}: could not remove a member of creation rule {index + 1}")

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
            rule = self.model.find_rule(path_regex)
            if rule is None:
                return False
            self._delete_rule(rule)
            return True
        if state != "present":
            raise SopsConfigError(f"state must be present or absent, not {state!r}")
        if key_groups is not None and anchors:
            raise SopsConfigError("give either anchors or key_groups, not both")
        wanted = key_groups if key_groups is not None else [anchors]
        existing = self.model.find_rule(path_regex)
        if existing is not None and key_groups is None and not anchors and not exclusive:
            # Only shamir_threshold (or nothing) to ensure on an existing rule.
            return self._set_shamir(existing.index, shamir_threshold) if shamir_threshold is not None else False
        if not any(wanted) or any(not g for g in wanted):
            raise SopsConfigError(
                f"creation rule {path_regex!r}: every key group needs at least one anchor (a rule without "
                "recipients cannot encrypt anything)"
            )
        recipients = {a: self._anchor_recipient(a) for g in wanted for a in g}
        if existing is None:
            _check_threshold(path_regex, shamir_threshold, len(wanted))
            self._create_rule(path_regex, wanted, key_groups is not None, shamir_threshold)
            return True
        return self._update_rule(existing, wanted, key_groups is not None, exclusive, shamir_threshold, recipients)

    def _update_rule(
        self,
        rule: CreationRule,
        wanted: list[list[str]],
        per_group: bool,
        exclusive: bool,
        shamir: int | None,
        recipients: dict[str, str],
    ) -> bool:
        if per_group and len(wanted) != len(rule.members):
            raise SopsConfigError(
                f"{self._where(rule.node)}: {rule.describe()} has {len(rule.members)} key group(s), "
                f"{len(wanted)} given; changing the number of key groups is not supported, edit it by hand"
            )
        changed = False
        index = rule.index
        for gi, group in enumerate(wanted):
            for a in group:
                rule = self.model.rules[index]
                if per_group:
                    present = _has_member(rule, gi, a, recipients[a])
                else:
                    present = any(_has_member(rule, g, a, recipients[a]) for g in range(len(rule.members)))
                if not present:
                    self._add_member(index, gi, a, recipients[a])
                    changed = True
        if exclusive or per_group:
            changed |= self._prune_rule(index, wanted, per_group, recipients)
        if shamir is not None:
            changed |= self._set_shamir(index, shamir)
        return changed

    def _prune_rule(self, index: int, wanted: list[list[str]], per_group: bool, recipients: dict[str, str]) -> bool:
        changed = False
        while True:
            anchors = self.model.anchor_nodes()
            victim = None
            for gi, tokens in enumerate(self.model.rules[index].members):
                allowed = wanted[gi] if per_group else [a for g in wanted for a in g]
                allowed_r = {recipients[a] for a in allowed}
                for t in tokens:
                    if t.startswith("*"):
                        nm = t[1:]
                        have = (anchors[nm][0].value or "").strip() if nm in anchors else "\0"
                        if nm not in allowed and have not in allowed_r:
                            victim = (gi, nm, have)
                    elif t not in allowed_r:
                        victim = (gi, "\0", t)  # a name no alias can have: only the literal goes
                    if victim:
                        break
                if victim:
                    break
            if victim is None:
                return changed
            gi, nm, rec = victim
            if not self._remove_member(index, gi, nm, rec):
                rule = self.model.rules[index]
                raise SopsConfigError(f"{self._where(rule.node)}: could not remove a member of {rule.describe()}")
            changed = True

    def _set_shamir(self, index: int, threshold: int) -> bool:
        rule = self.model.rules[index]
        if not isinstance(threshold, int) or threshold < 1:
            raise SopsConfigError("shamir_threshold must be a positive integer")
        if threshold > max(1, len(rule.members)):
            raise SopsConfigError(
                f"{self._where(rule.node)}: shamir_threshold {threshold} is more than the "
                f"{len(rule.members)} key group(s) of {rule.describe()}"
            )
        if rule.shamir_threshold == threshold:
            return False
        with self.transaction(f"set shamir_threshold of {rule.describe()}") as expect:
            expect.set_rest(index, "shamir_threshold", threshold)
            pair = rule.node.pair("shamir_threshold")
            if pair is not None:
                self._replace_span(self._value_start(pair[1]), pair[1].end, str(threshold))
            else:
                kg = rule.node.pair("key_groups")
                kcol = rule.node.items[0][0].col
                at = kg[0].line if kg else self._last_line(rule.node) + 1
                self._insert_lines(at, [" " * kcol + f"shamir_threshold: {threshold}"])
        return True

    def _rule_template(self) -> tuple[int, int, int, bool, int, str | None]:
        """(dash col, key col, list offset, uses key_groups, key_groups offset, path_regex style) to copy."""
        rn = self.model.rules_node
        rules = self.model.rules
        if rn is None or rn.kind != "seq" or rn.flow or not rules:
            return 2, 4, 2, False, 2, None
        with_regex = [r for r in rules if r.path_regex] or rules
        tmpl = with_regex[-1]
        node = tmpl.node
        dash = self._dash_col(rn.items[tmpl.index])
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

    def _rule_lines(self, path_regex: str, groups: list[list[str]], use_kg: bool, shamir: int | None) -> list[str]:
        dash, kcol, off, _uses_kg, kg_off, pr_style = self._rule_template()
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
        return lines

    def _create_rule(self, path_regex: str, groups: list[list[str]], force_groups: bool, shamir: int | None) -> None:
        use_kg = self._rule_template()[3] or force_groups or len(groups) > 1
        lines = self._rule_lines(path_regex, groups, use_kg, shamir)
        with self.transaction(f"add creation rule {path_regex!r}") as expect:
            rn = self.model.rules_node
            rules = self.model.rules
            catch_all = next((r for r in rules if not r.path_regex), None)
            if rn is None:
                if self.root is not None and self.root.pair("creation_rules") is not None:
                    raise SopsConfigError(f"{self.path}: creation_rules: is empty; write it as a list first")
                self._insert_lines(len(self.lines), ["creation_rules:"] + lines)
                position = 0
            elif rn.kind != "seq" or rn.flow:
                raise SopsConfigError(f"{self._where(rn)}: creation_rules must be a block list to add a rule")
            elif catch_all is not None:
                at = self._comment_block_start(rn.items[catch_all.index].line)
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
                rest["key_groups"] = [{} for _unused in groups]
            anchors = self.model.anchor_nodes()
            pairs = [[("*" + a, tuple(split_recipients(anchors[a][0].value or ""))) for a in g] for g in groups]
            expect.insert_rule(position, rest, pairs)

    def _delete_rule(self, rule: CreationRule) -> None:
        with self.transaction(f"remove {rule.describe()}") as expect:
            if (rn := self.model.rules_node) is None:
                raise AssertionError("internal error: rn is not None does not hold")
            if rn.flow:
                raise SopsConfigError(f"{self._where(rn)}: creation_rules is a flow list; remove the rule by hand")
            item = rn.items[rule.index]
            if item.kind == "alias" or self._aliased(item):
                raise SopsConfigError(
                    f"{self._where(item)}: {rule.describe()} is shared through an alias; remove it by hand"
                )
            self._delete_lines(self._dash_line(item), self._last_line(item))
            expect.delete_rule(rule.index)
