# Copyright: nixfleet.sops contributors
# MIT License
"""INI store: sections of string values, laid out as gopkg.in/ini.v1 writes them for sops.

Keys are aligned on ``=`` within a section, sections are separated by a blank
line, comments are written as ``; text`` above their section or key. sops
writes the ``[sops]`` section in Go map order (random); we write it sorted.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import SopsFormatError
from ..metadata import flatten, unflatten
from ..tree import Comment
from . import StructuredStore
from .dotenv import value_text

DEFAULT = "DEFAULT"
_SECTION_RE = re.compile(r"^\s*\[([^\]]*)\]")


def _strip_comment_char(text: str) -> str:
    if text.startswith(";"):
        return text.lstrip("; ")
    if text.startswith("#"):
        return text.lstrip("# ")
    return text


def _unquote(value: str) -> str:
    if len(value) >= 6 and value.startswith('"""') and value.endswith('"""'):
        return value[3:-3]
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"`":
        return value[1:-1]
    return value


def _check_unique(name: str, number: int, first: int, path: str | None) -> None:
    # sops (ini.v1) keeps a repeated section as a second one, but INI readers merge or pick one,
    # and a tree of mappings cannot hold both. (A repeated key in one section, ini.v1 merges:
    # the last value at the first place; so does the dict a section becomes here.)
    if first != number:
        raise SopsFormatError(
            f"line {number}: section [{name}] appears again (first at line {first}); sops keeps both, but "
            "programs reading the file merge them: make them one section (sops edit)", path)


def _parse(text: str, path: str | None) -> list[tuple[str, list[str], list[tuple[str, str, list[str]]]]]:
    """[(section, section comments, [(key, value, key comments)])] in file order."""
    sections: list[tuple[str, list[str], list[tuple[str, str, list[str]]]]] = [(DEFAULT, [], [])]
    first_line: dict[str, int] = {}
    pending: list[str] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        if line[0] in "#;":
            pending.append(line)
            continue
        m = _SECTION_RE.match(line)
        if m:
            name = m.group(1).strip()
            _check_unique(name, number, first_line.setdefault(name, number), path)
            sections.append((name, pending, []))
            pending = []
            continue
        pos = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        if pos < 0:
            raise SopsFormatError(f"line {number}: key-value delimiter not found", path)
        key = line[:pos].strip()
        value = line[pos + 1 :].strip()
        comments = pending
        pending = []
        if value[:3] == '"""' or (value[:1] in "\"`" and value[-1:] == value[:1] and len(value) > 1):
            value = _unquote(value)
        else:
            cut = min((i for i in (value.find("#"), value.find(";")) if i >= 0), default=-1)
            if cut >= 0:
                comments = comments + [value[cut:]]
                value = value[:cut].strip()
        sections[-1][2].append((_unquote(key), value, comments))
    return sections


def _quote_key(key: str) -> str:
    if '"' in key or "=" in key or ":" in key:
        return "`" + key + "`"
    if "`" in key:
        return '"""' + key + '"""'
    return key


def _quote_value(value: str) -> str:
    if "\n" in value or "`" in value:
        return '"""' + value + '"""'
    if "#" in value or ";" in value:
        return "`" + value + "`"
    if value.strip() != value:
        return '"' + value + '"'
    return value


def _comment_lines(text: str) -> list[str]:
    out = []
    for line in text.split("\n"):
        if line[:1] in ("#", ";"):
            out.append(line[:1] + " " + line[1:].strip())
        else:
            out.append("; " + line)
    return out


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else value_text(value)


def _section(name: str, comment: str | None, keys: list[tuple[str, str, str | None]]) -> list[str]:
    lines = []
    if comment:
        lines += _comment_lines(comment)
    if name != DEFAULT:
        lines.append(f"[{name}]")
    qkeys = [_quote_key(k) for k, _unused, _unused in keys]
    width = max((len(k) for k in qkeys), default=0)
    for qk, (_unused, value, kcomment) in zip(qkeys, keys, strict=True):
        if kcomment:
            lines += _comment_lines(kcomment)
        lines.append(f"{qk.ljust(width)} = {_quote_value(value)}")
    return lines


def _sections(doc: dict) -> list[tuple[str, str | None, list[tuple[str, str, str | None]]]]:
    out = []
    for name, branch in doc.items():
        if isinstance(name, Comment):
            continue
        if not isinstance(branch, dict):
            raise SopsFormatError(f"INI section {name!r}: section values must be mappings of keys")
        items = list(branch.items())
        comment = None
        start = 0
        if items and isinstance(items[0][0], Comment):
            comment = items[0][0].text
            start = 1
        keys: list[tuple[str, str, str | None]] = []
        for key, value in items[start:]:
            if isinstance(key, Comment):
                if keys:
                    keys[-1] = (keys[-1][0], keys[-1][1], key.text)
                continue
            if isinstance(value, (dict, list)):
                raise SopsFormatError(f"INI section {name!r}, key {key!r}: nested values are not supported")
            keys.append((key, _value_text(value), None))
        # sops' tree holds a key's comment after the key; ini.v1 writes it above that key.
        out.append((name, comment, keys))
    return out


def _render(sections: list[tuple[str, str | None, list[tuple[str, str, str | None]]]]) -> str:
    blocks = []
    for name, comment, keys in sections:
        if name == DEFAULT and not keys and not comment:
            continue
        blocks.append("\n".join(_section(name, comment, keys)) + "\n")
    return "\n".join(blocks)


def _meta_keys(metadata: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    flat = flatten(metadata)
    return [(k, flat[k], None) for k in sorted(flat)]


class IniStore(StructuredStore):
    """sops' INI store: sections of string values."""

    name = "ini"

    def load(self, data: bytes, path: str | None = None) -> tuple[list[dict], dict | None]:
        """Parse an INI file into {section: {key: value}} (comments kept) and its metadata."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SopsFormatError("not UTF-8 text, cannot be an INI file", path) from None
        doc: dict = {}
        meta: dict | None = None
        for name, comments, keys in _parse(text, path):
            if name == DEFAULT and not keys and not comments:
                continue
            if name == "sops":
                meta = unflatten({k: v for k, v, _unused in keys})
                continue
            branch: dict = {}
            if comments:
                branch[Comment(_strip_comment_char("\n".join(comments)))] = None
            for key, value, kcomments in keys:
                branch[key] = value
                if kcomments:
                    branch[Comment(_strip_comment_char("\n".join(kcomments)))] = None
            doc[name] = branch
        return [doc], meta

    def emit_plain(self, docs: list[dict]) -> bytes:
        """The plain INI file (what ``sops decrypt`` prints)."""
        return _render(_sections(docs[0] if docs else {})).encode("utf-8", "surrogateescape")

    def emit_metadata(self, metadata: dict[str, Any]) -> bytes:
        """The ``[sops]`` section (keys sorted; sops writes them in Go map order)."""
        return ("\n".join(_section("sops", None, _meta_keys(metadata))) + "\n").encode("utf-8")

    def emit(self, docs: list[dict], metadata: dict[str, Any]) -> bytes:
        """The whole encrypted file: the sections, then ``[sops]``."""
        sections = _sections(docs[0] if docs else {}) + [("sops", None, _meta_keys(metadata))]
        return _render(sections).encode("utf-8", "surrogateescape")

    def find_metadata(self, data: bytes, path: str | None = None) -> tuple[list[tuple[int, int]], dict | None]:
        """Span of the ``[sops]`` section (header to next section or end) and its metadata."""
        headers = list(re.finditer(rb"^[ \t]*\[sops\][ \t]*\r?$", data, re.M))
        if not headers:
            return [], None
        m = headers[0]
        if len(headers) > 1:
            _check_unique("sops", data.count(b"\n", 0, headers[1].start()) + 1,
                          data.count(b"\n", 0, m.start()) + 1, path)
        nxt = re.compile(rb"^[ \t]*\[", re.M).search(data, m.end())
        end = nxt.start() if nxt else len(data)
        if nxt:
            # Keep the blank separator line before the next section outside the span.
            while end > m.end() and data[end - 2 : end] == b"\n\n":
                end -= 1
        block = data[m.start() : end].decode("utf-8", "replace")
        secs = _parse(block, path)
        keys = next((k for n, _unused, k in secs if n == "sops"), [])
        return [(m.start(), end)], unflatten({k: v for k, v, _unused in keys})
