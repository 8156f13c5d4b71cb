# Copyright: nixfleet.sops contributors
# MIT License
"""YAML the way sops writes it: go.yaml.in/yaml/v3 with 4-space indentation.

sops turns its tree into yaml.v3 nodes (comments as head/foot comments) and
encodes them; this module reproduces that output for the node kinds sops
produces (block maps and sequences, empty flow collections, scalars, comment
lines), so files we write are laid out byte for byte as sops lays them out.
It also resolves plain scalars as yaml.v3 does when reading.
"""

from __future__ import annotations

import datetime
import functools
import math
import re
from typing import Any

from ..tree import Comment

INDENT = 4


class NilList(list):
    """A Go nil slice: ``[]`` in YAML, ``null`` in JSON."""


# --------------------------------------------------------------------------- resolving (reading)
_NULLS = {"", "~", "null", "Null", "NULL"}
_TRUE = {"true", "True", "TRUE"}
_FALSE = {"false", "False", "FALSE"}
_FLOAT_RE = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_DOT_FLOAT_RE = re.compile(r"^\.[0-9]+([eE][-+]?[0-9]+)?$")
_OLD_BOOL = {"y", "Y", "yes", "Yes", "YES", "on", "On", "ON", "n", "N", "no", "No", "NO", "off", "Off", "OFF"}
_BASE60_RE = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
_INT_RE = {
    "x": (re.compile(r"^[0-9a-fA-F]+$"), 16),
    "o": (re.compile(r"^[0-7]+$"), 8),
    "b": (re.compile(r"^[01]+$"), 2),
}
_TS_RE = re.compile(
    r"^(\d{4})-(\d{1,2})-(\d{1,2})"
    r"(?:([Tt]|[ ])(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})?)?$"
)


def _go_parse_int(text: str) -> int | None:
    """strconv.ParseInt(text, 0, 64) (with the uint64 fallback yaml.v3 does)."""
    sign = 1
    body = text
    if body[:1] in "+-":
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    if not body:
        return None
    if len(body) > 2 and body[0] == "0" and body[1] in "xXoObB":
        rx, base = _INT_RE[body[1].lower()]
        if not rx.match(body[2:]):
            return None
        value = int(body[2:], base)
    elif len(body) > 1 and body[0] == "0":
        if not _INT_RE["o"][0].match(body[1:]):
            return None
        value = int(body[1:], 8)
    elif body.isdigit() and body.isascii():
        value = int(body, 10)
    else:
        return None
    value *= sign
    if -(2**63) <= value < 2**64:
        return value
    return None


def _parse_timestamp(text: str) -> datetime.datetime | None:
    m = _TS_RE.match(text)
    if not m:
        return None
    year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    try:
        if m.group(4) is None:
            return datetime.datetime(year, month, day, tzinfo=datetime.UTC)
        if m.group(4) == " " and m.group(9):
            return None
        if m.group(4) in "Tt" and not m.group(9):
            return None
        frac = (m.group(8) or "").ljust(6, "0")[:6]
        tz: datetime.tzinfo = datetime.UTC
        if m.group(9) and m.group(9) != "Z":
            sign = 1 if m.group(9)[0] == "+" else -1
            tz = datetime.timezone(sign * datetime.timedelta(hours=int(m.group(9)[1:3]), minutes=int(m.group(9)[4:6])))
        return datetime.datetime(
            year, month, day, int(m.group(5)), int(m.group(6)), int(m.group(7)), int(frac or 0), tzinfo=tz
        )
    except ValueError:
        return None


def resolve_plain(text: str) -> Any:
    """The value yaml.v3 decodes a plain scalar into (for an interface{} target)."""
    if text in _NULLS:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if text in (".nan", ".NaN", ".NAN"):
        return math.nan
    if text in (".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"):
        return math.inf
    if text in ("-.inf", "-.Inf", "-.INF"):
        return -math.inf
    first = text[0]
    if first == ".":
        if _DOT_FLOAT_RE.match(text):
            return float(text)
        return text
    if first in "+-0123456789":
        ts = _parse_timestamp(text)
        if ts is not None:
            return ts
        plain = text.replace("_", "")
        value = _go_parse_int(plain) if plain else None
        if value is not None:
            return value
        if _FLOAT_RE.match(plain):
            return float(plain)
    return text


def _would_resolve_to_str(text: str) -> bool:
    if text in ("<<",):
        return False
    value = resolve_plain(text) if text else None
    return isinstance(value, str) and not (_OLD_BOOL.__contains__(text) or _is_base60(text))


def _is_base60(text: str) -> bool:
    if not text or not (text[0] in "+-" or text[0].isdigit()) or ":" not in text:
        return False
    return bool(_BASE60_RE.match(text))


# --------------------------------------------------------------------------- scalar analysis (writing)
def _printable(cp: int) -> bool:
    return (
        cp == 0x0A
        or 0x20 <= cp <= 0x7E
        or 0xA0 <= cp <= 0xD7FF
        or (0xE000 <= cp <= 0xFFFD and cp != 0xFEFF)
    )


_BREAKS = "\r\n\x85\u2028\u2029"


_SIMPLE_PLAIN = re.compile(r"[A-Za-z0-9_/+=][\x21-\x7e]*")
_SIMPLE_BLOCK = re.compile(r"[\x20-\x7e\n]*")


_WS = " \t\r\n\x85\u2028\u2029"


def _has_indicator(value: str) -> bool:
    """yaml.v3's block indicators: a document marker, an indicator first, ': ' or ' #' inside."""
    if value.startswith(("---", "...")):
        return True
    n = len(value)
    for i, ch in enumerate(value):
        followed_ws = i + 1 >= n or value[i + 1] in _WS
        if i == 0:
            if ch in "#,[]{}&*!|>'\"%@`" or (ch in "?:-" and followed_ws):
                return True
        elif (ch == ":" and followed_ws) or (ch == "#" and value[i - 1] in _WS):
            return True
    return False


def _analyze(value: str) -> dict[str, bool]:
    # Fast paths for what sops writes most (ENC[…] values, armored age blocks): no spaces, ASCII.
    if _SIMPLE_PLAIN.fullmatch(value) and not value.endswith(":"):
        return {"multiline": False, "block_plain": True, "single": True, "block": True}
    if (
        "\n" in value
        and _SIMPLE_BLOCK.fullmatch(value)
        and "\n " not in value
        and " \n" not in value
        and value[0] != " "
        and value[-1] != " "
    ):
        return {"multiline": True, "block_plain": False, "single": True, "block": True}
    if not value:
        return {"multiline": False, "block_plain": True, "single": True, "block": False}
    block_ind = _has_indicator(value)
    line_breaks = special = tabs = False
    leading_space = leading_break = trailing_space = trailing_break = False
    break_space = space_break = False
    prev_space = prev_break = False
    n = len(value)
    for i, ch in enumerate(value):
        cp = ord(ch)
        if ch == "\t":
            tabs = True
        elif not _printable(cp):
            special = True
        if ch == " ":
            if i == 0:
                leading_space = True
            if i == n - 1:
                trailing_space = True
            if prev_break:
                break_space = True
            prev_space, prev_break = True, False
        elif ch in _BREAKS:
            line_breaks = True
            if i == 0:
                leading_break = True
            if i == n - 1:
                trailing_break = True
            if prev_space:
                space_break = True
            prev_space, prev_break = False, True
        else:
            prev_space = prev_break = False
    block_plain = single = block = True
    if leading_space or leading_break or trailing_space or trailing_break:
        block_plain = False
    if trailing_space:
        block = False
    if break_space:
        block_plain = single = False
    if space_break or tabs or special:
        block_plain = single = False
    if space_break or special:
        block = False
    if line_breaks:
        block_plain = False
    if block_ind:
        block_plain = False
    return {"multiline": line_breaks, "block_plain": block_plain, "single": single, "block": block}


# An armored age file, as every `enc` of the sops metadata is: yaml.v3 always writes it as a
# literal block. Recognising it up front spares analysing kilobytes of base64 per recipient on
# every rekey (test_goyaml_fast_path checks the shortcut agrees with the full analysis).
_AGE_ARMOR_RE = re.compile(r"-----BEGIN AGE ENCRYPTED FILE-----\n[A-Za-z0-9+/=\n]*-----END AGE ENCRYPTED FILE-----\n")


def _style(value: str, is_key: bool) -> str:
    """The style yaml.v3 ends up with after sops' Node.Encode + final encode."""
    if not is_key and _AGE_ARMOR_RE.fullmatch(value):
        return "literal"
    return _style_cached(value, is_key)


@functools.lru_cache(maxsize=4096)
def _style_cached(value: str, is_key: bool) -> str:
    return _style_full(value, is_key)


def _style_full(value: str, is_key: bool) -> str:
    """The full yaml.v3 style analysis (see _style)."""
    a = _analyze(value)
    if "\n" in value:
        style = "literal" if a["block"] else "double"
    elif not _would_resolve_to_str(value):
        style = "double"
    elif a["block_plain"]:
        style = "plain"
    elif a["single"]:
        style = "single"
    else:
        style = "double"
    if is_key:
        if a["multiline"]:
            return "double"
        if style == "literal":
            return "double"
        if style == "plain" and not value:
            return "single" if a["single"] else "double"
    return style


_ESCAPES = {
    0x00: "0", 0x07: "a", 0x08: "b", 0x09: "t", 0x0A: "n", 0x0B: "v", 0x0C: "f", 0x0D: "r",
    0x1B: "e", 0x22: '"', 0x5C: "\\", 0x85: "N", 0xA0: "_", 0x2028: "L", 0x2029: "P",
}


def _double(value: str) -> str:
    out = ['"']
    for ch in value:
        cp = ord(ch)
        if not _printable(cp) or cp == 0xFEFF or ch in _BREAKS or ch in '"\\':
            if cp in _ESCAPES:
                out.append("\\" + _ESCAPES[cp])
            elif cp <= 0xFF:
                out.append(f"\\x{cp:02X}")
            elif cp <= 0xFFFF:
                out.append(f"\\u{cp:04X}")
            else:
                out.append(f"\\U{cp:08X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def shortest_digits(value: float) -> tuple[str, str, int]:
    """(sign, significant digits, decimal exponent of the first digit) of the shortest repr."""
    from decimal import Decimal

    sign, digits, exp = Decimal(repr(abs(value))).normalize().as_tuple()
    text = "".join(map(str, digits)) or "0"
    return ("-" if math.copysign(1, value) < 0 else ""), text, len(text) - 1 + int(exp)


def go_format_e(sign: str, digits: str, exp10: int) -> str:
    m = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{m}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"


def go_fixed(sign: str, digits: str, exp10: int) -> str:
    if exp10 < 0:
        return sign + "0." + "0" * (-exp10 - 1) + digits
    if len(digits) <= exp10 + 1:
        return sign + digits + "0" * (exp10 + 1 - len(digits))
    return sign + digits[: exp10 + 1] + "." + digits[exp10 + 1 :]


def go_format_g(value: float) -> str:
    """strconv.FormatFloat(value, 'g', -1, 64) with yaml.v3's names for inf and nan."""
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    sign, digits, exp10 = shortest_digits(value)
    # Go switches to %e from exponent 6 on when the shortest precision is asked for.
    if exp10 < -4 or exp10 >= 6:
        return go_format_e(sign, digits, exp10)
    return go_fixed(sign, digits, exp10)


def scalar_text(value: Any) -> str:
    """Text of a non-string scalar as yaml.v3 encodes it."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_format_g(value)
    if isinstance(value, (datetime.datetime, datetime.date)):
        from ..aes import go_time_text

        return go_time_text(value)
    raise TypeError(f"cannot write a {type(value).__name__} to YAML")


# --------------------------------------------------------------------------- emitter
class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def comment(self, indent: int, texts: list[str]) -> None:
        for t in texts:
            self.lines.append(" " * indent + "#" + t)


def _next_indent(indent: int) -> int:
    return INDENT * ((indent + INDENT) // INDENT)


def _split_comments(items: list[tuple[Any, Any]]) -> tuple[list[str], list[tuple[list[str], Any, Any]], list[str]]:
    """sops' appendTreeBranch: leading comments, (head comments, key, value) per entry, trailing."""
    head: list[str] = []
    entries: list[tuple[list[str], Any, Any]] = []
    pending: list[str] = []
    for key, value in items:
        if isinstance(key, Comment):
            pending.append(key.text)
            continue
        if not entries and pending and not head:
            head, pending = pending, []
        entries.append((pending, key, value))
        pending = []
    if not entries:
        return pending, entries, []
    return head, entries, pending


def _emit_scalar_value(out: _Out, prefix: str, value: Any, indent: int, in_seq: bool) -> None:
    """Write ``prefix`` + scalar; ``indent`` is the indent of the enclosing block."""
    if isinstance(value, str):
        style = _style(value, False)
        if style == "literal":
            content_indent = indent + 2 if in_seq else _next_indent(indent)
            hints = ""
            if value[0] in " \n\r\x85\u2028\u2029":
                # The indentation indicator counts from the enclosing block. yaml.v3 writes 4 for a
                # sequence item too, whose text sits 2 past the dash, and then cannot read its own
                # output (nor can sops): write the indicator that matches the text.
                hints += str(content_indent - indent)
            if value[-1] not in _BREAKS:
                hints += "-"
            elif len(value) == 1 or value[-2] in _BREAKS:
                hints += "+"
            out.lines.append(prefix + ("|" if prefix.endswith(" ") else " |") + hints)
            body = value[:-1] if value.endswith("\n") else value
            pad = " " * content_indent
            if body and "\n\n" not in body and not body.startswith("\n") and not body.endswith("\n"):
                out.lines.append(pad + body.replace("\n", "\n" + pad))  # no empty line: indent in one step
            else:
                out.lines.extend((pad + line) if line else "" for line in body.split("\n"))
            return
        text = {"plain": lambda v: v, "single": lambda v: "'" + v.replace("'", "''") + "'",
                "double": _double}[style](value)
    elif isinstance(value, NilList) or (isinstance(value, list) and not value):
        text = "[]"
    elif isinstance(value, dict) and not value:
        text = "{}"
    else:
        text = scalar_text(value)
    sep = "" if prefix.endswith(" ") or not prefix else " "
    out.lines.append(prefix + sep + text)


@functools.lru_cache(maxsize=4096)
def _key_text(key: str) -> str:
    style = _style(key, True)
    if style == "plain":
        return key
    if style == "single":
        return "'" + key.replace("'", "''") + "'"
    return _double(key)


@functools.lru_cache(maxsize=4096)
def _explicit_key(key: str) -> bool:
    """Whether yaml.v3 writes ``key`` in the explicit ``? key`` form (a line break, or over 128 bytes)."""
    return any(c in _BREAKS for c in key) or len(key.encode("utf-8", "surrogateescape")) > 128


def _is_block(value: Any) -> bool:
    return isinstance(value, (dict, list)) and not isinstance(value, NilList) and len(value) > 0


def _only_comments(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, Comment) for k in value)
    if isinstance(value, list):
        return all(isinstance(v, Comment) for v in value)
    return False


def _emit_mapping(out: _Out, mapping: dict, indent: int, first_prefix: str | None) -> None:
    """Block mapping whose keys sit at ``indent``; ``first_prefix`` is the pending '- ' line start."""
    head, entries, trailing = _split_comments(list(mapping.items()))
    if head:
        if first_prefix is not None:
            # The mapping's head comment goes before the '- ' of its sequence item.
            out.comment(len(first_prefix) - 2, head)
        else:
            out.comment(indent, head)
    for n, (comments, key, value) in enumerate(entries):
        out.comment(indent, comments)
        start = first_prefix if n == 0 and first_prefix is not None else " " * indent
        if _explicit_key(key):
            # yaml.v3 cannot write this as a simple key: it uses the explicit '? key' form.
            _emit_scalar_value(out, start + "?", key, indent, in_seq=False)
            colon = " " * indent + ":"
            child = _next_indent(indent)
            if isinstance(value, dict) and _is_block(value) and not _only_comments(value):
                _emit_mapping(out, value, child, colon.ljust(child))
            elif isinstance(value, list) and _is_block(value) and not _only_comments(value):
                _emit_sequence(out, value, child, colon.ljust(child))
            else:
                _emit_value(out, colon, value, indent, in_seq=False)
            continue
        _emit_value(out, start + _key_text(key) + ":", value, indent, in_seq=False)
    if trailing:
        out.comment(indent, trailing)


def _emit_value(out: _Out, prefix: str, value: Any, indent: int, in_seq: bool) -> None:
    if isinstance(value, dict) and _is_block(value) and not _only_comments(value):
        out.lines.append(prefix)
        _emit_mapping(out, value, _next_indent(indent) if not in_seq else indent + 2, None)
    elif isinstance(value, list) and _is_block(value) and not _only_comments(value):
        out.lines.append(prefix)
        _emit_sequence(out, value, _next_indent(indent) if not in_seq else indent + 2, None)
    else:
        if _only_comments(value) and _is_block(value):
            value = {} if isinstance(value, dict) else []
        _emit_scalar_value(out, prefix, value, indent, in_seq)


def _emit_sequence(out: _Out, items: list, indent: int, first_prefix: str | None) -> None:
    """Block sequence whose dashes sit at ``indent``."""
    pending: list[str] = []
    first = True
    for item in items:
        if isinstance(item, Comment):
            pending.append(item.text)
            continue
        if first and first_prefix is not None:
            # Leading comments of a nested sequence are its head comment: before the outer '- '.
            out.comment(len(first_prefix) - 2, pending)
            line_start = first_prefix + "- "
        else:
            out.comment(indent, pending)
            line_start = " " * indent + "- "
        pending = []
        first = False
        if isinstance(item, dict) and _is_block(item) and not _only_comments(item):
            if not _emit_age_entry(out, item, indent, line_start):
                _emit_mapping(out, item, indent + 2, line_start)
        elif isinstance(item, list) and _is_block(item) and not _only_comments(item):
            _emit_sequence(out, item, indent + 2, line_start)
        else:
            if _only_comments(item) and _is_block(item):
                item = {} if isinstance(item, dict) else []
            _emit_scalar_value(out, line_start, item, indent, in_seq=True)
    if pending:
        out.comment(indent, pending)


def _emit_age_entry(out: _Out, item: dict, indent: int, line_start: str) -> bool:
    """An age master key of the sops metadata (``recipient`` then ``enc``, two strings): what _emit_mapping
    writes for it, without its per-key analysis (a file's metadata is mostly these). False when the entry is
    anything else, for _emit_mapping to write."""
    if len(item) != 2 or list(item) != ["recipient", "enc"]:
        return False
    recipient, enc = item["recipient"], item["enc"]
    if not isinstance(recipient, str) or not isinstance(enc, str):
        return False
    if recipient and _style_cached(recipient, False) == "plain" and "\n\n" not in enc and _AGE_ARMOR_RE.fullmatch(enc):
        # What the two calls below write for a plain recipient and an armored block without an empty line
        # (every entry sops writes), in one step.
        pad = " " * _next_indent(indent + 2)
        out.lines += (line_start + "recipient: " + recipient, " " * (indent + 2) + "enc: |",
                      pad + enc[:-1].replace("\n", "\n" + pad))
        return True
    _emit_scalar_value(out, line_start + "recipient:", recipient, indent + 2, in_seq=False)
    _emit_scalar_value(out, " " * (indent + 2) + "enc:", enc, indent + 2, in_seq=False)
    return True


def emit_documents(docs: list[dict]) -> str:
    """Emit block-mapping documents separated by ``---`` (sops' EmitEncryptedFile)."""
    parts = []
    for doc in docs:
        out = _Out()
        if not doc or _only_comments(doc):
            head, _unused, _unused = _split_comments(list(doc.items()))
            out.comment(0, head)
            out.lines.append("{}")
        else:
            _emit_mapping(out, doc, 0, None)
        parts.append("\n".join(out.lines) + "\n")
    return "---\n".join(parts)


def emit_mapping_block(key: str, value: dict, indent: int = 0) -> str:
    """One ``key:`` entry with a block mapping value, as it appears in a document."""
    out = _Out()
    _emit_value(out, " " * indent + _key_text(key) + ":", value, indent, in_seq=False)
    return "\n".join(out.lines) + "\n"
