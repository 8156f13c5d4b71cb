# Copyright: nixfleet.sops contributors
# MIT License
"""JSON store: Go's encoding/json output re-indented with tabs, as sops writes it.

Numbers are float64 in sops' JSON tree, so ints are hashed and encrypted as
floats (``type:float``); integral floats read back as ints.
"""

from __future__ import annotations

import json as pyjson
import math
from json.decoder import scanstring
from typing import Any

from ..errors import SopsFormatError
from ..tree import Comment
from . import StructuredStore
from .goyaml import NilList, go_fixed, shortest_digits

_WS = " \t\r\n"


def go_string(text: str) -> str:
    """json.Marshal of a Go string (HTML-safe escaping, \\u2028/\\u2029 escaped)."""
    out = ['"']
    for ch in text:
        cp = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif cp < 0x20:
            out.append({8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t"}.get(cp, f"\\u{cp:04x}"))
        elif ch in "<>&":
            out.append(f"\\u{cp:04x}")
        elif cp in (0x2028, 0x2029):
            out.append(f"\\u{cp:04x}")
        elif 0xD800 <= cp <= 0xDFFF:
            out.append("\\ufffd")  # invalid UTF-8 (surrogate-escaped bytes) becomes U+FFFD in Go
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def go_float(value: float) -> str:
    """json.Marshal of a float64."""
    if math.isnan(value) or math.isinf(value):
        raise SopsFormatError("NaN and infinite numbers cannot be written to JSON")
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    sign, digits, exp10 = shortest_digits(value)
    a = abs(value)
    if a < 1e-6 or a >= 1e21:
        m = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        e = f"{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
        if e.startswith("-0"):
            e = "-" + e[2:]
        return f"{sign}{m}e{e}"
    return go_fixed(sign, digits, exp10)


def _encode(value: Any, level: int, out: list[str]) -> None:
    if isinstance(value, NilList) or value is None:
        out.append("null")
    elif isinstance(value, dict):
        items = [(k, v) for k, v in value.items() if not isinstance(k, Comment)]
        if not items:
            out.append("{}")
            return
        out.append("{")
        for n, (k, v) in enumerate(items):
            out.append(("," if n else "") + "\n" + "\t" * (level + 1) + go_string(k) + ": ")
            _encode(v, level + 1, out)
        out.append("\n" + "\t" * level + "}")
    elif isinstance(value, list):
        items = [v for v in value if not isinstance(v, Comment)]
        if not items:
            out.append("[]")
            return
        out.append("[")
        for n, v in enumerate(items):
            out.append(("," if n else "") + "\n" + "\t" * (level + 1))
            _encode(v, level + 1, out)
        out.append("\n" + "\t" * level + "]")
    elif isinstance(value, Comment):
        out.append("null")
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, int):
        out.append(go_float(float(value)) if abs(value) >= 2**53 else str(value))
    elif isinstance(value, float):
        out.append(go_float(value))
    elif isinstance(value, str):
        out.append(go_string(value))
    else:
        from ..aes import go_time_text

        out.append(go_string(go_time_text(value)))


def dumps(value: Any, level: int = 0) -> str:
    """Go json.Marshal + json.Indent(prefix '', indent '\\t') of ``value``."""
    out: list[str] = []
    _encode(value, level, out)
    return "".join(out)


class _DuplicateKey(Exception):
    """An object names a key twice; where is found by a slower scan (only then)."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKey
    return out


def _duplicate_error(text: str, path: str | None) -> SopsFormatError:
    """Where the first duplicate key of ``text`` (valid JSON) is, as an error naming both lines.

    sops keeps both entries, but JSON readers (sops-nix included) keep one of
    them, and a tree of mappings cannot hold both: refuse rather than pick one.
    """
    found: list[tuple[str, int, int]] = []

    def line(i: int) -> int:
        return text.count("\n", 0, i) + 1

    def value(i: int) -> int:
        i = _skip_ws(text, i)
        if text[i] not in "{[":
            return _DECODER_PLAIN.raw_decode(text, i)[1]
        close = "}" if text[i] == "{" else "]"
        seen: dict[str, int] = {}
        i = _skip_ws(text, i + 1)
        while text[i] != close:
            if close == "}":
                key, end = scanstring(text, i + 1)
                if key in seen and not found:
                    found.append((key, line(i), line(seen[key])))
                seen.setdefault(key, i)
                i = _skip_ws(text, end) + 1  # the ':'
            i = _skip_ws(text, value(i))
            if text[i] == ",":
                i = _skip_ws(text, i + 1)
        return i + 1

    value(0)
    key, at, first = found[0] if found else ("?", 0, 0)
    return SopsFormatError(
        f'line {at}: duplicate key "{key}" (first at line {first}); sops keeps both, but programs reading '
        "the file see only one: remove one of them (sops edit)", path)


def loads(text: str, path: str | None = None) -> Any:
    """Parse JSON keeping key order; SopsFormatError naming the line of a duplicate key."""
    try:
        return pyjson.loads(text, object_pairs_hook=_pairs)
    except _DuplicateKey:
        raise _duplicate_error(text, path) from None
    except ValueError as exc:
        raise SopsFormatError(f"invalid JSON: {exc}", path) from None


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


_DECODER = pyjson.JSONDecoder(object_pairs_hook=_pairs)
_DECODER_PLAIN = pyjson.JSONDecoder()


class JsonStore(StructuredStore):
    """sops' JSON store: one document; numbers are float64 in the tree."""

    name = "json"
    floats = True

    def load(self, data: bytes, path: str | None = None) -> tuple[list[dict], dict | None]:
        """Parse a sops JSON file into one document and its raw ``sops`` mapping."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SopsFormatError("not UTF-8 text, cannot be a sops JSON file", path) from None
        doc = loads(text, path)
        if not isinstance(doc, dict):
            raise SopsFormatError("a sops JSON file is an object at the top level", path)
        meta = doc.pop("sops", None)
        return [doc], meta

    def emit(self, docs: list[dict], metadata: dict[str, Any]) -> bytes:
        """The whole encrypted file (sops' EmitEncryptedFile)."""
        full = dict(docs[0] if docs else {})
        full["sops"] = metadata
        return (dumps(full) + "\n").encode("utf-8", "surrogateescape")

    def emit_plain(self, docs: list[dict]) -> bytes:
        """The plain JSON file (what ``sops decrypt`` prints)."""
        return (dumps(docs[0] if docs else {}) + "\n").encode("utf-8", "surrogateescape")

    def find_metadata(self, data: bytes, path: str | None = None) -> tuple[list[tuple[int, int]], dict | None]:
        """Span of the top-level ``"sops"`` value and its parsed content; the rest is only scanned."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SopsFormatError("not UTF-8 text, cannot be a sops JSON file", path) from None
        i = _skip_ws(text, 0)
        if i >= len(text) or text[i] != "{":
            return [], None
        i += 1
        found: tuple[int, int, Any] | None = None
        keys: set[str] = set()
        try:
            while True:
                i = _skip_ws(text, i)
                if text[i] == "}":
                    break
                if text[i] != '"':
                    return [], None
                key, i = scanstring(text, i + 1)
                if key in keys:
                    raise _DuplicateKey
                keys.add(key)
                i = _skip_ws(text, i)
                if text[i] != ":":
                    return [], None
                i = _skip_ws(text, i + 1)
                # Duplicates inside the values are the full load's business; here, the metadata's.
                value, end = (_DECODER if key == "sops" else _DECODER_PLAIN).raw_decode(text, i)
                if key == "sops":
                    found = (i, end, value)
                i = _skip_ws(text, end)
                if text[i] == ",":
                    i += 1
        except _DuplicateKey:
            raise _duplicate_error(text, path) from None
        except (ValueError, IndexError):
            raise SopsFormatError("invalid JSON", path) from None
        if found is None:
            return [], None
        start, end, value = found
        bstart = len(text[:start].encode("utf-8"))
        bend = bstart + len(text[start:end].encode("utf-8"))
        return [(bstart, bend)], value

    def emit_metadata(self, metadata: dict[str, Any]) -> bytes:
        """The ``"sops"`` value as sops writes it (one tab level deep)."""
        return dumps(metadata, level=1).encode("utf-8")
