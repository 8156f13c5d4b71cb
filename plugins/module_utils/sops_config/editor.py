# Copyright: nixfleet.sops contributors
# MIT License
"""Surgical edits of ``.sops.yaml`` text, each one transaction.

Why surgical: people keep comments, blank lines, their own quoting and two
indentation styles in one file; any YAML dumper normalises at least one of
those. So every edit inserts, deletes or replaces exact lines or spans of the
text, found through the positioned parse.

Why transactions: an edit states what it means to change (``Expected``: a
member added to one key group, an anchor's recipient replaced, a rule
inserted …) against the snapshot of what sops reads before it (aliases and
merge keys resolved). After the text is changed it is parsed again and its
snapshot must equal the intended one, for every rule and anchor; otherwise the
text is restored and the edit refused. An edit that would change what sops
reads for another rule (an anchored value shared by several rules, a merged
mapping) is therefore caught even when the edit code got it wrong.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .common import SopsConfigError
from .model import ConfigModel
from .parse import Node, ParsedDoc, parse_text, scalar_data


class Expected:
    """The intended meaning after an edit, built from the snapshot before it without mutating that snapshot."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        """Start from ``snapshot`` (ConfigModel.snapshot(), treated as read-only)."""
        self.value = dict(snapshot)
        self._rules_copied = False
        self.unverified_top: set[str] = set()

    def _rules(self) -> list[dict[str, Any]]:
        if not self._rules_copied:
            self.value["rules"] = list(self.value["rules"])
            self._rules_copied = True
        return self.value["rules"]

    def set_group(self, index: int, gi: int, pairs: list[tuple[str, tuple[str, ...]]]) -> None:
        """Key group ``gi`` of rule ``index`` reads as ``pairs`` (member token, recipients)."""
        rules = self._rules()
        groups = list(rules[index]["groups"])
        groups[gi] = list(pairs)
        rules[index] = {**rules[index], "groups": groups}

    def group(self, index: int, gi: int) -> list[tuple[str, tuple[str, ...]]]:
        """The pairs of key group ``gi`` of rule ``index`` as intended so far."""
        return list(self.value["rules"][index]["groups"][gi])

    def set_rest(self, index: int, key: str, value: Any) -> None:
        """Setting ``key`` of rule ``index`` reads as ``value``."""
        rules = self._rules()
        rules[index] = {**rules[index], "rest": {**rules[index]["rest"], key: value}}

    def insert_rule(self, position: int, rest: dict[str, Any], groups: list[list[tuple[str, tuple]]]) -> None:
        """A new rule at ``position``."""
        self._rules().insert(position, {"rest": rest, "groups": groups})

    def delete_rule(self, index: int) -> None:
        """Rule ``index`` is gone."""
        del self._rules()[index]

    def set_anchor(self, name: str, group: str | None, recipient: str | None) -> None:
        """Anchor ``name`` holds ``recipient`` (None: removed); every alias to it reads the new value."""
        anchors = dict(self.value["anchors"])
        if recipient is None:
            anchors.pop(name, None)
        else:
            anchors[name] = (group, recipient)
        self.value["anchors"] = anchors
        if recipient is None:
            return
        token, new = "*" + name, tuple(r.strip() for r in recipient.split(",") if r.strip())
        for index, rule in enumerate(self.value["rules"]):
            for gi, pairs in enumerate(rule["groups"]):
                if any(t == token for t, _r in pairs):
                    self.set_group(index, gi, [(t, new if t == token else r) for t, r in pairs])


class EditableText:
    """A ``.sops.yaml`` text with its parse, its model, and the primitives and transaction of an edit."""

    def __init__(self, text: str, path: str = ".sops.yaml") -> None:
        """Parse ``text``; ``path`` locates the config dir for matching and names the file in errors."""
        self.path = path
        self.original = text
        self.text = text
        self.newline = "\r\n" if "\r\n" in text else "\n"
        self._parse()

    # ------------------------------------------------------------------ parse state
    def _parse(self) -> None:
        self._set_state(parse_text(self.text, self.path))

    def _set_state(self, doc: ParsedDoc, model: ConfigModel | None = None) -> None:
        self.doc = doc
        self._line_starts = doc.line_starts
        # Split on "\n" only, like the parse's line table (str.splitlines also breaks on \f, \v, …).
        lines = self.text.split("\n")
        self.lines = [ln + "\n" for ln in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
        self._model = model
        if model is None:
            self._model = ConfigModel(doc, self.path)  # checks the top level now, as the parse always did

    @property
    def model(self) -> ConfigModel:
        """The meaning of the current text (computed once per text version)."""
        if self._model is None:
            raise AssertionError("internal error: self._model is not None does not hold")
        return self._model

    @property
    def root(self) -> Node | None:
        """The top-level mapping, or None for an empty file."""
        return self.model.root

    def _where(self, node: Node | None) -> str:
        return self.model.where(node)

    def _aliased(self, node: Node | None) -> bool:
        """True when ``node`` is anchored and an alias elsewhere reads it (editing it edits those too)."""
        return node is not None and bool(node.anchor) and any(a.target is node for a in self.doc.aliases)

    # ------------------------------------------------------------------ transaction
    @contextmanager
    def transaction(self, what: str) -> Iterator[Expected]:
        """One edit: yield the intended meaning to adjust; after the body, verify it or restore and raise."""
        saved = (self.text, self.doc, self._model)
        expected = Expected(self.model.snapshot())
        try:
            yield expected
            if self.text != saved[0]:
                self._verify(expected, what)
        except BaseException:
            self.text = saved[0]
            self._set_state(saved[1], saved[2])
            raise

    def _verify(self, expect: Expected, what: str) -> None:
        expected = expect.value
        try:
            actual = self.model.snapshot()
        except SopsConfigError as exc:
            problem = str(exc)
        else:
            if expect.unverified_top:
                top = {k: v for k, v in expected["top"].items() if k not in expect.unverified_top}
                top.update({k: v for k, v in actual["top"].items() if k in expect.unverified_top})
                expected = {**expected, "top": top}
            problem = _difference(expected, actual)
        if problem:
            raise SopsConfigError(
                f"{self.path}: refusing to {what}: {problem}; the file is left unchanged "
                "(this layout may need a hand edit; please report it)"
            )

    # ------------------------------------------------------------------ text primitives
    def _set_text(self, text: str) -> None:
        try:
            doc = parse_text(text, self.path)
            model = ConfigModel(doc, self.path)
        except SopsConfigError as exc:
            raise SopsConfigError(
                f"{self.path}: refusing this edit, the result would not be valid ({exc}); the file is left unchanged"
            ) from None
        self.text = text
        self._set_state(doc, model)

    def _line_text(self, line: int) -> str:
        return self.lines[line] if 0 <= line < len(self.lines) else ""

    def _line_of(self, index: int) -> int:
        lo, hi = 0, len(self._line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._line_starts[mid] <= index:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _last_line(self, node: Node) -> int:
        """0-based line of the last character that belongs to ``node``."""
        if node.kind in ("map", "seq") and not node.flow and node.items:
            last = node.items[-1]
            return self._last_line(last[1] if isinstance(last, tuple) else last)
        idx = node.end
        while idx > node.start and self.text[idx - 1] in " \t\r\n":
            idx -= 1
        return self._line_of(max(idx - 1, node.start))

    def _dash_col(self, item: Node) -> int:
        """Column of the ``-`` that introduces a block sequence item."""
        text = self._line_text(item.line)
        col = item.col - 1
        while col >= 0 and text[col] in " \t":
            col -= 1
        if col < 0 or text[col] != "-":
            raise SopsConfigError(f"{self._where(item)}: cannot find the '-' of this list item")
        return col

    def _dash_line(self, item: Node) -> int:
        self._dash_col(item)  # raises when the item is not introduced by a dash on its own line
        return item.line

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

    def _value_start(self, node: Node) -> int:
        """Where the value of ``node`` starts, after its anchor and tag (which an edit keeps)."""
        i = node.start
        while i < node.end and self.text[i] in "&!":
            while i < node.end and self.text[i] not in " \t\r\n":
                i += 1
            while i < node.end and self.text[i] in " \t\r\n":
                i += 1
        return i

    # ------------------------------------------------------------------ the file's own style
    def _block_seq_offset(self) -> int:
        """How far this file indents a block list under its key (0 for ``key:\\n- x``, else 2)."""
        counts: dict[int, int] = {}
        stack = [self.root] if self.root is not None else []
        while stack:
            node = stack.pop()
            if node.kind == "map":
                for k, v in node.items:
                    if v.kind == "seq" and not v.flow and v.items and v.line > k.line:
                        off = self._dash_col(v.items[0]) - k.col
                        counts[off] = counts.get(off, 0) + 1
                    stack.append(v)
            elif node.kind == "seq":
                stack.extend(node.items)
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
        return v is not None and v.kind == "scalar" and v.value == value and isinstance(scalar_data(v), str)

    @classmethod
    def _render_scalar(cls, value: str, style: str | None = None) -> str:
        if style == '"':
            return json.dumps(value)
        if style is None and cls._plain_ok(value):
            return value
        return "'" + value.replace("'", "''") + "'"


def _difference(expected: dict[str, Any], actual: dict[str, Any]) -> str | None:
    """None when equal, else a short description of the first difference (for the refusal message)."""
    if expected == actual:
        return None
    if expected["anchors"] != actual["anchors"]:
        names = sorted(set(expected["anchors"]) ^ set(actual["anchors"])) or sorted(
            n for n in expected["anchors"] if expected["anchors"][n] != actual["anchors"].get(n)
        )
        return f"anchor {names[0]!r} would not read as intended" if names else "the anchors would change"
    if len(expected["rules"]) != len(actual["rules"]):
        return "the number of creation rules would not be as intended"
    for i, (e, a) in enumerate(zip(expected["rules"], actual["rules"], strict=True)):
        if e != a:
            regex = e["rest"].get("path_regex")
            name = f"rule {regex!r}" if regex else f"creation rule {i + 1}"
            return f"sops would read {name} differently than intended (its recipients or settings would change)"
    return "the result differs from the intended change"
