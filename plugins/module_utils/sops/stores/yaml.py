# Copyright: nixfleet.sops contributors
# MIT License
"""YAML store: sops' layout (yaml.v3, 4-space indent, comments as their own lines)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ...module_support import note_missing_lib
from ..errors import SopsFormatError
from ..tree import Comment
from . import StructuredStore
from .goyaml import emit_documents, emit_mapping_block, resolve_plain

# Guarded: without the library, modules fail with missing_required_lib (module_support.require_libs).
try:
    import yaml as pyyaml
except ImportError:
    HAS_PYYAML = False
    note_missing_lib("PyYAML")
else:
    HAS_PYYAML = True

_Loader = getattr(pyyaml, "CSafeLoader", pyyaml.SafeLoader) if HAS_PYYAML else None
_SOPS_LINE = re.compile(r"sops:[ \t]*(#.*)?$", re.M)
# The line after a block: one that starts in column 0 (key, comment, '---'). Matched from the newline before
# it: a pattern that starts with a literal is found by a scan for that character, not tried at every offset.
_BLOCK_END = re.compile(r"\n[^ \t\r\n]")


def _sops_lines(text: str) -> Iterator[re.Match[str]]:
    """Each top-level ``sops:`` line (the key in column 0, nothing after it but a comment)."""
    pos = text.find("sops:")
    while pos != -1:
        if pos == 0 or text[pos - 1] == "\n":
            m = _SOPS_LINE.match(text, pos)
            if m:
                yield m
        pos = text.find("sops:", pos + 1)


class _Container:
    __slots__ = ("column", "entries", "is_map")

    def __init__(self, column: int, is_map: bool) -> None:
        self.column = column
        self.is_map = is_map
        self.entries: list[tuple[int, Any, Any]] = []  # (line, key or None, value)


def _scalar(node: pyyaml.ScalarNode) -> Any:
    # Only plain scalars are resolved (quoted and block scalars are strings), as in yaml.v3.
    if not node.style:
        return resolve_plain(node.value)
    return node.value


# An alias makes the builder walk its anchor's subtree again. A few are normal; a "billion
# laughs" document nests them so that a few hundred bytes expand to billions of values. Allow
# the expansion to outgrow the document's own size only by this factor (plus a fixed margin).
ALIAS_FACTOR = 10
ALIAS_MARGIN = 10_000


class _Builder:
    def __init__(self, path: str | None, line_offset: int = 0) -> None:
        self.path = path
        self.line_offset = line_offset  # where the parsed text starts in the file (metadata block)
        self.anchors: list[tuple[int, int, _Container]] = []
        self.covered: set[int] = set()
        self.parents: dict[int, _Container] = {}
        self._distinct: set[int] = set()
        self._visits = 0

    def _count(self, node: pyyaml.Node) -> None:
        self._visits += 1
        if id(node) in self._distinct:
            if self._visits > ALIAS_FACTOR * len(self._distinct) + ALIAS_MARGIN:
                raise SopsFormatError(
                    f"YAML aliases (line {node.start_mark.line + 1 + self.line_offset} and others) expand to more "
                    f"than {self._visits} values, {ALIAS_FACTOR} times the document's own size: refusing to load "
                    "it (an alias bomb?); write the values out instead of nesting aliases", self.path)
        else:
            self._distinct.add(id(node))

    def node(self, node: pyyaml.Node, depth: int = 0) -> Any:
        if depth > 500:
            raise SopsFormatError("YAML nesting too deep", self.path)
        self._count(node)
        if isinstance(node, pyyaml.ScalarNode):
            if node.end_mark.line > node.start_mark.line:
                end = node.end_mark.line if node.end_mark.column > 0 else node.end_mark.line - 1
                self.covered.update(range(node.start_mark.line + 1, end + 1))
            return _scalar(node)
        if isinstance(node, pyyaml.SequenceNode):
            c = _Container(node.start_mark.column, False)
            for item in node.value:
                if not node.flow_style:
                    self.anchors.append((item.start_mark.line, node.start_mark.column, c))
                c.entries.append((item.start_mark.line, None, self.node(item, depth + 1)))
            return c
        if isinstance(node, pyyaml.MappingNode):
            col = node.value[0][0].start_mark.column if node.value else node.start_mark.column
            c = _Container(col, True)
            first_line: dict[str, int] = {}
            for k, v in node.value:
                if not isinstance(k, pyyaml.ScalarNode):
                    raise SopsFormatError("complex mapping keys are not supported", self.path)
                key = _scalar(k)
                if not isinstance(key, str):
                    raise SopsFormatError(
                        f"line {k.start_mark.line + 1 + self.line_offset}: only string keys are supported "
                        f"(found {k.value!r}); quote the key", self.path)
                line = k.start_mark.line + 1 + self.line_offset
                if key in first_line:
                    # yaml.v3 (so sops) refuses a mapping that names a key twice; so do we, in its words.
                    raise SopsFormatError(
                        f'line {line}: mapping key "{key}" already defined at line {first_line[key]}; '
                        "remove one of them", self.path)
                first_line[key] = line
                if not node.flow_style:
                    self.anchors.append((k.start_mark.line, col, c))
                c.entries.append((k.start_mark.line, key, self.node(v, depth + 1)))
            return c
        raise SopsFormatError(f"unsupported YAML node {type(node).__name__}", self.path)


def _finish(value: Any) -> Any:
    if isinstance(value, _Container):
        entries = sorted(value.entries, key=lambda e: e[0])
        if value.is_map:
            out: dict = {}
            for _unused, key, v in entries:
                if isinstance(key, Comment):
                    out[key] = None
                elif key is None and isinstance(v, Comment):
                    out[v] = None
                else:
                    out[key] = _finish(v)
            return out
        return [_finish(v) for _unused, _unused, v in entries]
    return value


def _place_comments(lines: list[str], b: _Builder, root: _Container, first: int, last: int) -> None:
    anchors = sorted(b.anchors, key=lambda a: a[0])
    anchor_lines = [a[0] for a in anchors]
    import bisect

    for ln in range(first, last):
        if ln in b.covered:
            continue
        text = lines[ln]
        stripped = text.lstrip(" ")
        if not stripped.startswith("#"):
            continue
        col = len(text) - len(stripped)
        comment = Comment(stripped[1:].rstrip("\r"))
        i = bisect.bisect_left(anchor_lines, ln)
        prev = anchors[i - 1] if i > 0 else None
        nxt = anchors[i] if i < len(anchors) else None
        target = None
        if prev is not None:
            # Walk up from the previous item's container: a comment at its column belongs there.
            chain = _ancestors(prev[2], b)
            for c in chain:
                if c.column == col:
                    target = c
                    break
        if target is None and nxt is not None and nxt[1] == col:
            target = nxt[2]
        if target is None:
            target = nxt[2] if nxt is not None and prev is None else (prev[2] if prev else root)
        if target.is_map:
            target.entries.append((ln, comment, None))
        else:
            target.entries.append((ln, None, comment))


def _ancestors(c: _Container, b: _Builder) -> list[_Container]:
    chain = [c]
    parent = b.parents.get(id(c))
    while parent is not None:
        chain.append(parent)
        parent = b.parents.get(id(parent))
    return chain


def _index_parents(value: Any, b: _Builder, parent: _Container | None = None) -> None:
    if isinstance(value, _Container):
        if parent is not None:
            b.parents[id(value)] = parent
        for _unused, _unused, v in value.entries:
            _index_parents(v, b, value)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not isinstance(k, Comment)}
    if isinstance(value, list):
        return [_plain(v) for v in value if not isinstance(v, Comment)]
    return value


# --------------------------------------------------------------------------- metadata-only access
class _Bail(Exception):
    """The block is not in sops' own layout; the full YAML parser takes over."""


_KEY_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*):(?: (.*))?$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _fast_scalar(text: str) -> Any:
    if text in ("[]", "{}"):
        return [] if text == "[]" else {}
    if text.startswith('"'):
        if "\\" in text or not text.endswith('"') or len(text) < 2 or '"' in text[1:-1]:
            raise _Bail
        return text[1:-1]
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2 or "'" in text[1:-1].replace("''", ""):
            raise _Bail
        return text[1:-1].replace("''", "'")
    if " #" in text or ": " in text or text.endswith(":") or text[:1] in "&*!|>%@`{[?-#,":
        raise _Bail
    return resolve_plain(text)


def _fast_literal(lines: list[str], i: int, indent: int) -> tuple[list[str], int]:
    """The lines of a literal block scalar starting at ``lines[i]`` under a key at ``indent``, and the
    index after it; trailing empty lines dropped (the caller adds the final newline ``|`` keeps)."""
    body: list[str] = []
    n = len(lines)
    # The first line with text sets the content indent; an empty line before it is content too. A line of
    # spaces (sops never writes one) may hold content or be an error: the full parser decides.
    while i < n and not lines[i]:
        body.append("")
        i += 1
    if i == n:
        return [], i
    content_indent = _indent(lines[i])
    if content_indent <= indent:
        return [], i
    pad = " " * content_indent
    while i < n:
        cur = lines[i]
        if cur.startswith(pad) and len(cur) > content_indent and (cur[content_indent] != " " or cur.strip(" ")):
            body.append(cur[content_indent:])  # the common case: one more line of text
        elif not cur:
            body.append("")
        elif not cur.strip(" "):
            raise _Bail
        elif _indent(cur) <= indent:
            break
        else:
            raise _Bail  # text indented less than the block's first line
        i += 1
    while body and body[-1] == "":
        body.pop()
    return body, i


def _fast_map(lines: list[str], i: int, indent: int, first: str | None = None) -> tuple[dict, int]:
    out: dict = {}
    while i < len(lines):
        line = first if first is not None else lines[i]
        first = None
        if not line.strip(" "):
            i += 1
            continue
        if _indent(line) != indent:
            if _indent(line) > indent:
                raise _Bail
            break
        m = _KEY_LINE.match(line, indent)
        if not m:
            raise _Bail
        key, rest = m.group(1), (m.group(2) or "").rstrip()
        if key in out:
            raise _Bail
        i += 1
        if rest in ("|", "|-"):
            body, i = _fast_literal(lines, i, indent)
            out[key] = "\n".join(body) + ("\n" if rest == "|" and body else "")
        elif rest:
            out[key] = _fast_scalar(rest)
        else:
            if i < len(lines) and not lines[i].strip(" "):
                raise _Bail  # a blank line before a key's value: sops writes none
            if i >= len(lines) or _indent(lines[i]) <= indent and not lines[i].startswith(" " * indent + "- "):
                out[key] = None
                continue
            child = _indent(lines[i])
            if lines[i][child:].startswith("- "):
                out[key], i = _fast_seq(lines, i, child)
            else:
                out[key], i = _fast_map(lines, i, child)
    return out, i


def _fast_seq(lines: list[str], i: int, indent: int) -> tuple[list, int]:
    out: list = []
    while i < len(lines):
        line = lines[i]
        if not line.strip(" "):
            i += 1
            continue
        if _indent(line) != indent or not line[indent:].startswith("- "):
            if _indent(line) > indent:
                raise _Bail
            break
        # The item's keys line up with its first key: 2 past the dash (yaml.v3, sops 3.8+) or 4 ('-   ',
        # yaml.v2, older sops).
        item_indent = indent + 1 + _indent(line[indent + 1:])
        if item_indent >= len(line):
            raise _Bail  # an empty item
        entry = _fast_age_entry(lines, i, item_indent)
        if entry is None:
            entry = _fast_map(lines, i, item_indent, first=" " * item_indent + line[item_indent:])
        item, i = entry
        out.append(item)
    return out, i


def _fast_age_entry(lines: list[str], i: int, indent: int) -> tuple[dict, int] | None:
    """An age master key as sops writes it (``- recipient: …`` then ``enc: |`` and the armored block) read
    in one step: what _fast_map reads for it. None for any other item, for _fast_map to read."""
    rest = lines[i][indent:]
    if not rest.startswith("recipient: ") or i + 1 >= len(lines) or lines[i + 1] != " " * indent + "enc: |":
        return None
    recipient = _fast_scalar(rest[11:].rstrip())
    body, j = _fast_literal(lines, i + 2, indent)
    while j < len(lines) and not lines[j].strip(" "):
        j += 1
    if j < len(lines) and _indent(lines[j]) >= indent:
        return None  # more keys in this item (or a line _fast_map refuses): the general path decides
    return {"recipient": recipient, "enc": "\n".join(body) + ("\n" if body else "")}, j


def _fast_block(block: str) -> dict:
    """Parse a ``sops:`` block written in sops' layout without the general YAML parser."""
    if "\r" in block or "\t" in block or not block.endswith("\n"):
        raise _Bail  # a line break of YAML's, a tab, a last line without its newline: sops writes none
    lines = block.split("\n")
    parsed, i = _fast_map(lines, 0, 0)
    if any(line.strip(" ") for line in lines[i:]):
        raise _Bail
    return parsed


def _load_block(block: str, path: str | None, line_offset: int) -> Any:
    """A metadata block that is not in sops' own layout, through the full parser (same limits as values)."""
    try:
        root = pyyaml.compose(block, Loader=_Loader)
    except pyyaml.YAMLError:
        return None
    if not isinstance(root, pyyaml.MappingNode):
        return None
    return _plain(_finish(_Builder(path, line_offset).node(root)))


class YamlStore(StructuredStore):
    """sops' YAML store: several documents, each carrying the metadata as its last key."""

    name = "yaml"
    multi_document = True

    def load(self, data: bytes, path: str | None = None) -> tuple[list[dict], dict | None]:
        """Parse a (sops) YAML file into documents (comments kept) and its raw ``sops`` mapping."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SopsFormatError("not UTF-8 text, cannot be a sops YAML file", path) from None
        try:
            roots = list(pyyaml.compose_all(text, Loader=_Loader))
        except pyyaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise SopsFormatError(f"invalid YAML{where}: {getattr(exc, 'problem', exc)}", path) from None
        lines = text.split("\n")
        docs: list[dict] = []
        meta: dict | None = None
        starts = [r.start_mark.line if r is not None else 0 for r in roots]
        for n, root in enumerate(roots):
            if root is None:
                docs.append({})
                continue
            if isinstance(root, pyyaml.SequenceNode):
                raise SopsFormatError("YAML documents that are sequences are not supported", path)
            if isinstance(root, pyyaml.ScalarNode):
                if root.value in ("", "~", "null", "Null", "NULL") and root.style is None:
                    docs.append({})
                    continue
                raise SopsFormatError("YAML documents that are values are not supported", path)
            b = _Builder(path)
            built = b.node(root)
            _index_parents(built, b)
            first = 0 if n == 0 else max(roots[n - 1].end_mark.line if roots[n - 1] else 0, starts[n - 1])
            last = starts[n + 1] if n + 1 < len(roots) else len(lines)
            if n + 1 < len(roots):
                last = roots[n].end_mark.line + 1
            _place_comments(lines, b, built, first, min(last, len(lines)))
            doc = _finish(built)
            if "sops" in doc:
                raw = _plain(doc.pop("sops"))
                if meta is None:
                    meta = raw
            docs.append(doc)
        return docs, meta

    def emit(self, docs: list[dict], metadata: dict[str, Any]) -> bytes:
        """The whole encrypted file: every document gets the metadata as its last key."""
        out = []
        for doc in docs or [{}]:
            full = dict(doc)
            full["sops"] = metadata
            out.append(full)
        return emit_documents(out).encode("utf-8")

    def emit_plain(self, docs: list[dict]) -> bytes:
        """Plain YAML in sops' layout (what ``sops decrypt`` prints)."""
        return emit_documents(docs).encode("utf-8")

    def find_metadata(self, data: bytes, path: str | None = None) -> tuple[list[tuple[int, int]], dict | None]:
        """Byte spans of each top-level ``sops:`` block and the parsed metadata, without parsing the rest."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SopsFormatError("not UTF-8 text, cannot be a sops YAML file", path) from None
        spans: list[tuple[int, int]] = []
        for m in _sops_lines(text):
            start = m.start()
            end_m = _BLOCK_END.search(text, m.end())
            end = end_m.start() + 1 if end_m else len(text)
            spans.append((start, end))
        if not spans:
            return [], None
        start, end = spans[0]
        block = text[start:end]
        try:
            parsed = _fast_block(block)
        except _Bail:
            parsed = _load_block(block, path, text.count("\n", 0, start))
        if not isinstance(parsed, dict) or "sops" not in parsed:
            return [], None
        # Byte offsets, since the caller splices bytes.
        if data.isascii():
            bspans = spans
        else:
            bspans = [(len(text[:s].encode("utf-8")), len(text[:e].encode("utf-8"))) for s, e in spans]
        return bspans, parsed["sops"]

    def emit_metadata(self, metadata: dict[str, Any]) -> bytes:
        """The ``sops:`` block text exactly as sops writes it at the end of a document."""
        return emit_mapping_block("sops", metadata).encode("utf-8")
