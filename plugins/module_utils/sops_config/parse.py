# Copyright: nixfleet.sops contributors
# MIT License
"""The positioned YAML parse of ``.sops.yaml``: a node tree with lines, columns, anchors and aliases."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml import events as ev
from ruamel.yaml.error import MarkedYAMLError

from .common import SopsConfigError


# ============================================================================ parsed tree
@dataclass
class Node:
    """One YAML node with its position in the text (0-based lines/columns, char indices)."""

    kind: str  # "map" | "seq" | "scalar" | "alias"
    start: int
    end: int
    line: int
    col: int
    end_line: int
    anchor: str | None = None
    value: str | None = None  # scalar text, or the name an alias refers to
    style: str | None = None
    flow: bool = False
    items: list[Any] = field(default_factory=list)  # seq: [Node]; map: [(Node, Node)]
    target: Node | None = None  # for an alias: the node it refers to

    def get(self, key: str) -> Node | None:
        """Value node of ``key`` in a mapping (None when missing or not a mapping)."""
        pair = self.pair(key)
        return pair[1] if pair else None

    def pair(self, key: str) -> tuple[Node, Node] | None:
        """(key node, value node) of ``key`` in a mapping."""
        if self.kind != "map":
            return None
        for k, v in self.items:
            if k.kind == "scalar" and k.value == key:
                return k, v
        return None

    def resolved(self) -> Node:
        """The node an alias stands for (itself for anything else)."""
        node: Node = self
        seen = 0
        while node.kind == "alias" and node.target is not None and seen < 100:
            node = node.target
            seen += 1
        return node


@dataclass
class ParsedDoc:
    root: Node | None
    anchor_defs: list[Node]  # every anchored node, in document order
    aliases: list[Node]  # every alias node, in document order


def _yaml_error(path: str, exc: MarkedYAMLError) -> SopsConfigError:
    mark = exc.problem_mark or exc.context_mark
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else path
    problem = exc.problem or exc.context or "invalid YAML"
    return SopsConfigError(f"{where}: YAML syntax error: {problem}")


def parse_text(text: str, path: str = ".sops.yaml") -> ParsedDoc:
    """Parse ``text`` into a positioned node tree; YAML errors name the file and line."""
    parser = YAML(typ="safe", pure=True)
    stack: list[tuple[Node, list[Node]]] = []
    root: Node | None = None
    table: dict[str, Node] = {}
    anchor_defs: list[Node] = []
    aliases: list[Node] = []
    docs = 0

    def attach(node: Node) -> None:
        nonlocal root
        if stack:
            stack[-1][1].append(node)
        elif root is None:
            root = node

    try:
        for e in parser.parse(io.StringIO(text)):
            if isinstance(e, ev.DocumentStartEvent):
                docs += 1
                if docs > 1:
                    raise SopsConfigError(f"{path}: holds more than one YAML document; sops reads only one")
                continue
            sm, em = e.start_mark, e.end_mark
            if isinstance(e, (ev.MappingStartEvent, ev.SequenceStartEvent)):
                kind = "map" if isinstance(e, ev.MappingStartEvent) else "seq"
                node = Node(
                    kind, sm.index, em.index, sm.line, sm.column, em.line, anchor=e.anchor, flow=bool(e.flow_style)
                )
                if e.anchor:
                    table[e.anchor] = node
                    anchor_defs.append(node)
                attach(node)
                stack.append((node, []))
            elif isinstance(e, (ev.MappingEndEvent, ev.SequenceEndEvent)):
                node, children = stack.pop()
                node.end = em.index
                node.end_line = em.line
                if node.kind == "map":
                    node.items = list(zip(children[::2], children[1::2], strict=True))
                    seen_keys: set[str] = set()
                    for k, _v in node.items:
                        if k.kind == "scalar" and k.value in seen_keys:
                            # sops' YAML library refuses a mapping with a key twice.
                            raise SopsConfigError(
                                f"{path}, line {k.line + 1}: key {k.value!r} is defined twice in the same mapping"
                            )
                        if k.kind == "scalar" and k.value is not None:
                            seen_keys.add(k.value)
                else:
                    node.items = children
            elif isinstance(e, ev.ScalarEvent):
                node = Node(
                    "scalar",
                    sm.index,
                    em.index,
                    sm.line,
                    sm.column,
                    em.line,
                    anchor=e.anchor,
                    value=e.value,
                    style=e.style,
                )
                if e.anchor:
                    table[e.anchor] = node
                    anchor_defs.append(node)
                attach(node)
            elif isinstance(e, ev.AliasEvent):
                node = Node("alias", sm.index, em.index, sm.line, sm.column, em.line, value=e.anchor)
                node.target = table.get(e.anchor)
                aliases.append(node)
                attach(node)
    except MarkedYAMLError as exc:
        raise _yaml_error(path, exc) from None
    return ParsedDoc(root, anchor_defs, aliases)


_INT_RE = re.compile(r"^[-+]?(0|[1-9][0-9]*|0x[0-9a-fA-F]+|0o[0-7]+)$")
_FLOAT_RE = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")


def _scalar_data(node: Node) -> Any:
    value = node.value or ""
    if node.style is not None:
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


def node_data(node: Node | None, depth: int = 0) -> Any:
    """Plain Python data of ``node`` (aliases resolved; a missing anchor reads as None)."""
    if node is None or depth > 50:
        return None
    if node.kind == "alias":
        return node_data(node.target, depth + 1) if node.target else None
    if node.kind == "scalar":
        return _scalar_data(node)
    if node.kind == "seq":
        return [node_data(i, depth + 1) for i in node.items]
    return {str(node_data(k, depth + 1)): node_data(v, depth + 1) for k, v in node.items}


