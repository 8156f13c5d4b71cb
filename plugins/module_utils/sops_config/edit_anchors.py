# Copyright: nixfleet.sops contributors
# MIT License
"""Edits of recipient anchors (``&name age1…`` under ``keys:``): add, update, remove everywhere."""

from __future__ import annotations

import re

from ..age import AgeKeyError, validate_recipient
from .common import OTHER_KEY_TYPES, SopsConfigError, check_anchor_name
from .editor import EditableText
from .model import AgeField, split_recipients
from .parse import Node, node_data


class AnchorEdits(EditableText):
    """Anchor edits on top of the text primitives; each public edit is one transaction."""

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
        existing = self.model.anchor_nodes().get(name)
        if existing is not None:
            node, have_group = existing
            if group is not None and have_group is not None and have_group != group:
                raise SopsConfigError(
                    f"{self._where(node)}: anchor {name!r} already exists in group {have_group!r}, not {group!r}; "
                    "remove it first to move it"
                )
            if (node.value or "").strip() == recipient:
                return False
            with self.transaction(f"update anchor {name!r}") as expect:
                self._replace_anchored_value(node, recipient)
                expect.set_anchor(name, have_group, recipient)
            return True
        with self.transaction(f"add anchor {name!r}") as expect:
            self._add_anchor(name, recipient, group)
            placed = self.model.anchor_nodes().get(name)
            actual_group = placed[1] if placed else group
            if actual_group != group and not (group is None or self.model.layout == "flat"):
                raise SopsConfigError(f"{self.path}: could not place anchor {name!r} in group {group!r}")
            expect.set_anchor(name, actual_group, recipient)
        return True

    def _replace_anchored_value(self, node: Node, recipient: str) -> None:
        span = self.text[node.start : node.end]
        if not re.match(r"&\S+\s+", span):
            raise SopsConfigError(f"{self._where(node)}: cannot locate the value of anchor &{node.anchor}")
        if node.style not in (None, '"', "'"):
            raise SopsConfigError(f"{self._where(node)}: anchor &{node.anchor} holds a block scalar; edit it by hand")
        self._replace_span(self._value_start(node), node.end, self._render_scalar(recipient, node.style))

    def _add_anchor(self, name: str, recipient: str, group: str | None) -> None:
        layout = self.model.layout
        groups = self.model.group_nodes()
        keys = self.model.keys_node
        if layout == "none":
            if keys is not None:
                raise SopsConfigError(f"{self._where(keys)}: keys: must be a mapping or a list to add anchors")
            lines = ["keys:", f"  {group or 'hosts'}:", f"    - &{name} {recipient}"]
            at = self.root.items[0][0].line if self.root is not None and self.root.items else len(self.lines)
            self._insert_lines(self._comment_block_start(at), lines)
            return
        if keys is None:
            raise AssertionError("internal error: keys is not None does not hold")
        if layout == "flat" or (group is None and layout != "mapping"):
            self._append_item(keys, f"&{name} {self._render_scalar(recipient, self._sibling_style(keys))}")
            return
        if group is None:
            raise SopsConfigError(f"{self.path}: keys: is grouped ({', '.join(groups)}); say which group")
        pair = keys.pair(group) if layout == "mapping" else None
        if pair is not None and group not in groups:
            raise SopsConfigError(
                f"{self._where(pair[0])}: group {group!r} is not a list; write it as "
                f"'{group}: []' or add the first entry by hand"
            )
        if group in groups:
            seq = groups[group]
            self._append_item(seq, f"&{name} {self._render_scalar(recipient, self._sibling_style(seq))}")
            return
        if layout == "mapping":
            kcol = keys.items[0][0].col
            off = self._block_seq_offset()
            lines = [" " * kcol + f"{group}:", " " * (kcol + off) + f"- &{name} {recipient}"]
        else:
            items = [i for i in keys.items if i.kind in ("seq", "map")]
            seqs = list(groups.values())
            dash = self._dash_col(items[-1])
            inner = self._dash_col(seqs[-1].items[0]) if seqs[-1].items else dash + 2
            colon = ":" if any(i.kind == "map" for i in items) else ""
            lines = [" " * dash + f"- &{group}{colon}", " " * inner + f"- &{name} {recipient}"]
        self._insert_lines(self._last_line(keys) + 1, lines)

    @staticmethod
    def _sibling_style(seq: Node) -> str | None:
        for item in seq.items:
            if item.kind == "scalar" and item.anchor:
                return item.style
        return None

    def _anchor_recipient(self, name: str) -> str:
        nodes = self.model.anchor_nodes()
        if name not in nodes:
            raise SopsConfigError(
                f"{self.path}: anchor {name!r} is not defined; add it first (nixfleet.sops.sops_recipient)"
            )
        return (nodes[name][0].value or "").strip()

    # ------------------------------------------------------------------ revoke
    def remove_anchor(self, name: str) -> bool:
        """Remove anchor ``name`` and every alias to it (a revoked host); refuse to empty a rule.

        Aliases are removed where they are written, so a list that several
        rules share (through an anchor or a merge key) loses the host for all
        of them, which is what revoking means.
        """
        check_anchor_name(name)
        nodes = self.model.anchor_nodes()
        if name not in nodes:
            return False
        token = "*" + name
        for rule in self.model.rules:
            for gi, tokens in enumerate(rule.members):
                if token in tokens and all(t == token for t in tokens):
                    f = self.model.age_fields(rule.node)[gi]
                    if not self._group_has_other_keys(f):
                        where = f"key group {gi + 1} of " if rule.uses_key_groups else ""
                        raise SopsConfigError(
                            f"{self._where(rule.node)}: removing anchor {name!r} would leave {where}"
                            f"{rule.describe()} with no recipient; remove or change that rule first"
                        )
        with self.transaction(f"remove anchor {name!r}") as expect:
            # Top-level entries that hold the alias (a mapping rules merge) lose it too: what that means
            # for sops is checked through the rules that read them.
            expect.unverified_top = {e.key for e in self.model._top_entries() if self._holds_alias(e.value, name)}
            for index, rule in enumerate(self.model.rules):
                for gi in range(len(rule.members)):
                    kept = [(t, r) for t, r in expect.group(index, gi) if t != token]
                    expect.set_group(index, gi, kept)
            while self._remove_one_alias(name):
                pass
            stray = [a for a in self.doc.aliases if a.value == name]
            if stray:
                raise SopsConfigError(
                    f"{self._where(stray[0])}: alias *{name} is used outside creation rules; remove it by hand"
                )
            node, _group = self.model.anchor_nodes()[name]
            parent_seq = self._parent_seq(node)
            if parent_seq is None or parent_seq.flow:
                raise SopsConfigError(f"{self._where(node)}: anchor &{name} is not a list item; remove it by hand")
            if len(parent_seq.items) == 1:
                raise SopsConfigError(
                    f"{self._where(node)}: anchor &{name} is the only entry of its list; remove it by hand"
                )
            self._delete_lines(self._dash_line(node), self._last_line(node))
            expect.set_anchor(name, None, None)
        return True

    def _remove_one_alias(self, name: str) -> bool:
        """Remove the first alias ``*name`` found in a rule's age list (where it is written); False when none."""
        for rule in self.model.rules:
            for gi, f in enumerate(self.model.age_fields(rule.node)):
                if "*" + name in rule.members[gi]:
                    self._drop_tokens(f, rule.members[gi], {"*" + name}, rule.describe())
                    return True
        return False

    def _drop_tokens(self, f: AgeField, tokens: list[str], victims: set[str], what: str) -> None:
        """Delete the members ``victims`` (tokens) from the age value of ``f`` in one text change."""
        v = f.value
        if v is None:
            raise AssertionError("internal error: v is not None does not hold")
        remaining = [t for t in tokens if t not in victims]
        if not remaining:
            self._delete_key(f)
        elif v.kind == "seq":
            victim = next(
                (
                    i
                    for i in v.items
                    if (i.kind == "alias" and "*" + (i.value or "") in victims)
                    or (i.kind == "scalar" and any(r in victims for r in split_recipients(i.value or "")))
                ),
                None,
            )
            if victim is None:
                raise SopsConfigError(f"{self._where(v)}: cannot find the member to remove from {what}")
            if self._aliased(victim):
                raise SopsConfigError(
                    f"{self._where(victim)}: refusing to remove a member of {what}: this value is anchored "
                    f"(&{victim.anchor}) and other rules use it; edit those rules by hand"
                )
            inside = split_recipients(victim.value or "") if victim.kind == "scalar" else []
            if len(inside) > 1:
                self._rewrite_csv(victim, [r for r in inside if r not in victims])
            elif v.flow:
                parts = [self.text[i.start : i.end] for i in v.items if i is not victim]
                self._replace_span(v.start, v.end, "[" + ", ".join(parts) + "]")
            else:
                self._delete_lines(self._dash_line(victim), self._last_line(victim))
        elif v.kind == "scalar":
            self._rewrite_csv(v, remaining)
        else:
            raise SopsConfigError(f"{self._where(v)}: cannot remove a member of {what} from this age: value")

    def _delete_key(self, f: AgeField) -> None:
        if not (f.key is not None and f.value is not None):
            raise AssertionError("internal error: f.key is not None and f.value is not None does not hold")
        text = self._line_text(f.key.line)
        if text[: f.key.col].strip():
            raise SopsConfigError(f"{self._where(f.key)}: age: shares its line with the list dash; remove it by hand")
        self._delete_lines(f.key.line, self._last_line(f.value))

    def _rewrite_csv(self, v: Node, recipients: list[str]) -> None:
        """Rewrite a comma-separated recipient string in place (its anchor and quoting kept)."""
        raw = v.value or ""
        sep = ", " if ", " in raw else ","
        if v.style in (None, '"', "'"):
            self._replace_span(self._value_start(v), v.end, self._render_scalar(sep.join(recipients), v.style))
            return
        # A folded/literal block: one recipient per line, as people write it.
        body_first = self._line_of(v.start) + 1
        indent_text = self._line_text(body_first)
        indent = len(indent_text) - len(indent_text.lstrip(" "))
        if indent == 0:
            raise SopsConfigError(f"{self._where(v)}: cannot rewrite this block scalar")
        lines = [" " * indent + r + ("," if i < len(recipients) - 1 else "") for i, r in enumerate(recipients)]
        start = self._line_starts[body_first]
        end = self._line_starts[min(self._last_line(v) + 1, len(self.lines))]
        self._replace_span(start, end, "".join(ln + self.newline for ln in lines))

    def _group_has_other_keys(self, f: AgeField) -> bool:
        """True when the key group holds master keys besides age (or a sops merge), so it keeps a recipient."""
        data = node_data(f.owner, path=self.path) or {}
        return any(data.get(k) for k in (*OTHER_KEY_TYPES, "merge"))

    def _holds_alias(self, node: Node, name: str) -> bool:
        return any(a.value == name and node.start <= a.start < node.end for a in self.doc.aliases)

    def _parent_seq(self, target: Node) -> Node | None:
        stack = [self.root] if self.root is not None else []
        while stack:
            node = stack.pop()
            children = [v for _k, v in node.items] if node.kind == "map" else node.items if node.kind == "seq" else []
            for c in children:
                if c is target:
                    return node if node.kind == "seq" else None
                stack.append(c)
        return None
