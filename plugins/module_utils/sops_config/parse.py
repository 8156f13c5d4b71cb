# Copyright: nixfleet.sops contributors
# MIT License
"""The positioned YAML parse of ``.sops.yaml``: a node tree with lines, columns, anchors and aliases.

ruamel.yaml is used only for its event parser (libyaml through
ruamel.yaml.clib when installed, ten times faster than the pure-Python one).
Positions come from the marks' character index; lines and columns are worked
out from that index against the text split on ``\\n`` only, so they agree with
the line table the editor cuts the text with (libyaml also breaks lines on
``\\r``, NEL, LS and PS).

Aliases are never expanded here, but every node records how many nodes it
stands for with its aliases expanded; a document whose aliases would expand
to more than ``MAX_ALIAS_EXPANSION`` nodes (a "billion laughs" file) is
refused while it is parsed, before anything reads it. ``Budget`` guards the
functions that do resolve aliases as a second line of defence.
"""

from __future__ import annotations

import gc
import io
import re
from bisect import bisect_right
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..module_support import note_missing_lib
from .common import SopsConfigError

# Guarded: without the library, modules fail with missing_required_lib (module_support.require_libs).
try:
    from ruamel.yaml import YAML
    from ruamel.yaml import events as ev
    from ruamel.yaml.error import MarkedYAMLError
    from ruamel.yaml.main import CParser  # libyaml's parser from ruamel.yaml.clib; None when it is not installed
except ImportError:
    note_missing_lib("ruamel.yaml")

# Far above what any real .sops.yaml reaches through aliases (a 2,000-host file: ~10,000),
# far below what takes noticeable time or memory to walk.
MAX_ALIAS_EXPANSION = 1_000_000
MERGE_TAG = "tag:yaml.org,2002:merge"
STR_TAG = "tag:yaml.org,2002:str"
_NO_ITEMS: tuple[Any, ...] = ()


def libyaml_in_use() -> bool:
    """True when the parse runs on libyaml (ruamel.yaml.clib), False on the pure-Python fallback."""
    return CParser is not None


class Node:
    """One YAML node with its position in the text (0-based line and column, character indices)."""

    __slots__ = (
        "kind",
        "start",
        "end",
        "line",
        "col",
        "anchor",
        "value",
        "style",
        "flow",
        "items",
        "target",
        "tag",
        "size",
    )

    def __init__(
        self,
        kind: str,
        start: int,
        end: int,
        line: int,
        col: int,
        anchor: str | None = None,
        value: str | None = None,
        style: str | None = None,
        flow: bool = False,
        tag: str | None = None,
    ) -> None:
        """``kind`` is "map", "seq", "scalar" or "alias"; ``value`` is a scalar's text or an alias's name."""
        self.kind = kind
        self.start = start
        self.end = end
        self.line = line
        self.col = col
        self.anchor = anchor
        self.value = value
        self.style = style
        self.flow = flow
        self.tag = tag
        self.items: Any = _NO_ITEMS  # seq: [Node]; map: [(Node, Node)]
        self.target: Node | None = None  # for an alias: the node it refers to
        self.size: int | None = 1  # nodes it stands for, aliases expanded (None while still open)

    def __repr__(self) -> str:
        return f"Node({self.kind}, line {self.line + 1}, {self.anchor or ''}{self.value or ''})"

    def get(self, key: str) -> Node | None:
        """Value node of ``key`` written in this mapping (None when missing or not a mapping; merges not read)."""
        pair = self.pair(key)
        return pair[1] if pair else None

    def pair(self, key: str) -> tuple[Node, Node] | None:
        """(key node, value node) of ``key`` written in this mapping."""
        if self.kind != "map":
            return None
        for k, v in self.items:
            if k.kind == "scalar" and k.value == key:
                return k, v
        return None

    def resolved(self) -> Node:
        """The node an alias stands for (itself for anything else; aliases never point at aliases)."""
        return self.target if self.kind == "alias" and self.target is not None else self

    @property
    def is_merge_key(self) -> bool:
        """True for the YAML merge key ``<<`` (plain, or tagged ``!!merge``), as yaml.v3 reads it."""
        return (
            self.kind == "scalar"
            and self.value == "<<"
            and ((self.style is None and self.tag is None) or self.tag == MERGE_TAG)
        )


@dataclass
class ParsedDoc:
    """The parse of one text: the root node, every anchored node and every alias, in document order."""

    root: Node | None
    anchor_defs: list[Node]
    aliases: list[Node]
    line_starts: list[int]
    node_count: int
    text: str


def line_starts_of(text: str) -> list[int]:
    """Character index where each ``\\n``-separated line starts (plus one past the end)."""
    starts = [0]
    starts.extend(m.end() for m in re.finditer("\n", text))
    if starts[-1] != len(text):
        starts.append(len(text))
    return starts


def _yaml_error(path: str, exc: MarkedYAMLError) -> SopsConfigError:
    mark = exc.problem_mark or exc.context_mark
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else path
    problem = exc.problem or exc.context or "invalid YAML"
    return SopsConfigError(f"{where}: YAML syntax error: {problem}")


def expansion_error(path: str, line: int | None = None) -> SopsConfigError:
    """The one-line error for a document whose aliases expand past the limit."""
    where = f"{path}, line {line + 1}" if line is not None else path
    return SopsConfigError(
        f"{where}: aliases expand to more than {MAX_ALIAS_EXPANSION:,} nodes (aliases nested in anchored "
        "lists, a 'billion laughs' document); refusing to read it: write the lists out instead of nesting aliases"
    )


class _Builder:
    """Turns parser events into ``Node`` objects; one per parse."""

    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.line_starts = line_starts_of(text)
        self.stack: list[tuple[Node, list[Node]]] = []
        self.root: Node | None = None
        self.table: dict[str, Node] = {}
        self.anchor_defs: list[Node] = []
        self.aliases: list[Node] = []
        self.count = 0
        self.expansion = 0
        self.limit = MAX_ALIAS_EXPANSION

    def new(
        self, kind: str, e: Any, anchor: str | None, value: str | None, style: str | None, flow: bool, tag: str | None
    ) -> Node:
        start = e.start_mark.index
        starts = self.line_starts
        line = bisect_right(starts, start) - 1
        node = Node(kind, start, e.end_mark.index, line, start - starts[line], anchor, value, style, flow, tag)
        self.count += 1
        if anchor:
            self.table[anchor] = node
            self.anchor_defs.append(node)
        if self.stack:
            self.stack[-1][1].append(node)
        elif self.root is None:
            self.root = node
        return node

    def scalar(self, e: Any) -> None:
        # libyaml reports a plain scalar's style as '', the pure parser as None.
        self.new("scalar", e, e.anchor, e.value, e.style or None, False, e.tag)

    def open(self, kind: str, e: Any) -> None:
        node = self.new(kind, e, e.anchor, None, None, bool(e.flow_style), e.tag)
        node.size = None
        self.stack.append((node, []))

    def open_map(self, e: Any) -> None:
        self.open("map", e)

    def open_seq(self, e: Any) -> None:
        self.open("seq", e)

    def close(self, e: Any) -> None:
        node, children = self.stack.pop()
        node.end = e.end_mark.index
        node.size = 1 + sum(c.size or 1 for c in children)
        if node.kind == "seq":
            node.items = children
            return
        node.items = list(zip(children[::2], children[1::2], strict=True))
        seen_keys: set[str] = set()
        for k, _v in node.items:
            if k.kind == "scalar" and k.value is not None:
                if k.value in seen_keys:
                    # sops' YAML library refuses a mapping with a key twice.
                    raise SopsConfigError(
                        f"{self.path}, line {k.line + 1}: key {k.value!r} is defined twice in the same mapping"
                    )
                seen_keys.add(k.value)

    def alias(self, e: Any) -> None:
        node = self.new("alias", e, None, e.anchor, None, False, None)
        target = self.table.get(e.anchor)
        node.target = target
        self.aliases.append(node)
        if target is None:
            return
        if target.size is None:
            raise SopsConfigError(
                f"{self.path}, line {node.line + 1}: alias *{e.anchor} is used inside the node it names "
                "(a recursive alias); sops cannot read it"
            )
        node.size = target.size
        self.expansion += target.size - 1
        if self.expansion > self.limit:
            raise expansion_error(self.path, node.line)


def _events(text: str) -> Iterator[Any]:
    if CParser is None:
        yield from YAML(typ="safe", pure=True).parse(io.StringIO(text))
        return
    parser = CParser(text)
    try:
        while parser.check_event():
            yield parser.get_event()
    finally:
        parser.dispose()


def parse_text(text: str, path: str = ".sops.yaml") -> ParsedDoc:
    """Parse ``text`` into a positioned node tree; YAML errors name the file and line."""
    b = _Builder(text, path)
    with paused_gc():
        return _parse(b, text, path)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Hold the cyclic garbage collector while building a tree of many small acyclic objects.

    Such trees hold no reference cycles, yet every few hundred allocations the
    collector would walk all of them again: pausing it makes the parse and
    the model about a third faster.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _parse(b: _Builder, text: str, path: str) -> ParsedDoc:
    docs = 0
    handlers = {
        ev.ScalarEvent: b.scalar,
        ev.AliasEvent: b.alias,
        ev.MappingStartEvent: b.open_map,
        ev.SequenceStartEvent: b.open_seq,
        ev.MappingEndEvent: b.close,
        ev.SequenceEndEvent: b.close,
    }
    try:
        for e in _events(text):
            handler = handlers.get(type(e))
            if handler is not None:
                handler(e)
            elif isinstance(e, ev.DocumentStartEvent):
                docs += 1
                if docs > 1:
                    raise SopsConfigError(f"{path}: holds more than one YAML document; sops reads only one")
    except MarkedYAMLError as exc:
        raise _yaml_error(path, exc) from None
    return ParsedDoc(b.root, b.anchor_defs, b.aliases, b.line_starts, b.count, text)


# ============================================================================ resolution (what yaml.v3 reads)
class Budget:
    """Counts the nodes a resolution visits through aliases; past ``limit`` it raises one clear line."""

    __slots__ = ("left", "path")

    def __init__(self, path: str = ".sops.yaml", limit: int | None = None) -> None:
        """``path`` names the file in the error; ``limit`` defaults to MAX_ALIAS_EXPANSION."""
        self.left = MAX_ALIAS_EXPANSION if limit is None else limit
        self.path = path

    def spend(self, node: Node) -> None:
        """Account for visiting ``node`` (its whole expansion when it is an alias)."""
        self.left -= node.size or 1
        if self.left < 0:
            raise expansion_error(self.path, node.line)


_INT_RE = re.compile(r"^[-+]?(0|[1-9][0-9]*|0x[0-9a-fA-F]+|0o[0-7]+)$")
_FLOAT_RE = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")


def scalar_data(node: Node) -> Any:
    """The value of a scalar node as yaml.v3 resolves it (plain scalars: null, bool, int, float, str)."""
    value = node.value or ""
    if node.style is not None or node.tag == STR_TAG:
        return value
    if value in ("", "~", "null", "Null", "NULL"):
        return None
    if value in ("true", "True", "TRUE"):
        return True
    if value in ("false", "False", "FALSE"):
        return False
    if _INT_RE.match(value):
        return int(value, 0)
    if _FLOAT_RE.match(value) and any(ch.isdigit() for ch in value):
        return float(value)
    return value


_scalar_data = scalar_data  # the name the package used before


@dataclass(frozen=True)
class Entry:
    """One key of a mapping as yaml.v3 reads it: written there, or brought in by a merge key ``<<``."""

    key: str
    key_node: Node
    value: Node
    merged_from: Node | None  # the ``<<`` value node it came through (None when written in the mapping)


def _merge_sources(value: Node, path: str) -> list[Node]:
    node = value.resolved()
    if node.kind == "map":
        return [node]
    if node.kind == "seq":
        out = [item.resolved() for item in node.items]
        if all(n.kind == "map" for n in out):
            return out
    raise SopsConfigError(
        f"{path}, line {value.line + 1}: the merge key << needs a mapping or a list of mappings (as yaml.v3 reads it)"
    )


def entries(node: Node, budget: Budget | None = None, path: str = ".sops.yaml") -> list[Entry]:
    """The keys of mapping ``node`` with merge keys folded in, as yaml.v3 (sops' YAML library) reads them.

    Keys written in the mapping win over merged ones, wherever the ``<<``
    stands; of several merged mappings (``<<: [*a, *b]``) the first that has a
    key wins; a merged mapping's own merges are folded in the same way.
    """
    node = node.resolved()
    if node.kind != "map":
        return []
    budget = budget or Budget(path)
    out: list[Entry] = []
    merges: list[tuple[Node, Node]] = []
    for k, v in node.items:
        if k.is_merge_key:
            merges.append((k, v))
        elif k.kind == "scalar":
            out.append(Entry(str(scalar_data(k)), k, v, None))
    if not merges:
        return out
    seen = {e.key for e in out}
    for _k, v in merges:
        budget.spend(v)
        for source in _merge_sources(v, path):
            for e in entries(source, budget, path):
                if e.key not in seen:
                    seen.add(e.key)
                    out.append(Entry(e.key, e.key_node, e.value, e.merged_from or v))
    return out


def lookup(node: Node, key: str, budget: Budget | None = None, path: str = ".sops.yaml") -> Entry | None:
    """The entry of ``key`` in mapping ``node`` as yaml.v3 reads it (merges folded), or None."""
    node = node.resolved()
    if node.kind != "map":
        return None
    for k, v in node.items:
        if k.kind == "scalar" and k.value == key and not k.is_merge_key:
            return Entry(key, k, v, None)
    if not any(k.is_merge_key for k, _v in node.items):
        return None
    return next((e for e in entries(node, budget, path) if e.key == key), None)


def node_data(node: Node | None, budget: Budget | None = None, path: str = ".sops.yaml") -> Any:
    """Plain Python data of ``node`` as yaml.v3 reads it: aliases resolved, merge keys folded.

    An alias to an undefined anchor reads as None (``validate`` reports it).
    """
    if node is None:
        return None
    budget = budget or Budget(path)
    if node.kind == "alias":
        if node.target is None:
            return None
        budget.spend(node)
        node = node.target
    if node.kind == "scalar":
        return scalar_data(node)
    if node.kind == "seq":
        return [node_data(i, budget, path) for i in node.items]
    return {e.key: node_data(e.value, budget, path) for e in entries(node, budget, path)}
