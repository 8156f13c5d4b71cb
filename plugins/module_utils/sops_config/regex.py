# Copyright: nixfleet.sops contributors
# MIT License
"""sops ``path_regex`` (Go RE2 syntax) read with the same meaning as sops."""

from __future__ import annotations

import re

from .common import SopsConfigError

# ============================================================================ RE2 -> Python re
_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7f",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
# RE2's Perl classes are ASCII-only; Python's are Unicode-aware, so spell them out.
_PERL_IN_CLASS = {"d": "0-9", "w": "0-9A-Za-z_", "s": "\\t\\n\\f\\r "}
_WORD = "[0-9A-Za-z_]"
_BOUNDARY = f"(?:(?<={_WORD})(?!{_WORD})|(?<!{_WORD})(?={_WORD}))"
_NON_BOUNDARY = f"(?:(?<={_WORD})(?={_WORD})|(?<!{_WORD})(?!{_WORD}))"
_REPEAT_RE = re.compile(r"\{(\d+)(,(\d*))?\}")
_MAX_REPEAT = 1000


def _re2_error(pattern: str, pos: int, what: str) -> SopsConfigError:
    return SopsConfigError(
        f"path_regex {pattern!r}: {what} (at position {pos}); sops reads path_regex as Go RE2 syntax"
    )


def _escape_char(c: str) -> str:
    return re.escape(c) if not c.isalnum() else c


def _parse_class(pattern: str, i: int) -> tuple[str, int]:
    """Translate the character class starting at ``pattern[i] == '['``; return (python, next index)."""
    start = i
    i += 1
    out = ["["]
    if i < len(pattern) and pattern[i] == "^":
        out.append("^")
        i += 1
    first = True
    prev_literal: str | None = None
    while True:
        if i >= len(pattern):
            raise _re2_error(pattern, start, "missing closing ]")
        c = pattern[i]
        if c == "]" and not first:
            i += 1
            break
        first = False
        if c == "[" and pattern.startswith("[:", i):
            end = pattern.find(":]", i + 2)
            if end < 0:
                raise _re2_error(pattern, i, "unterminated [: class")
            name = pattern[i + 2 : end]
            negate = name.startswith("^")
            if negate:
                raise _re2_error(pattern, i, f"negated POSIX class [:{name}:] has no Python equivalent")
            if name not in _POSIX_CLASSES:
                raise _re2_error(pattern, i, f"unknown POSIX class [:{name}:]")
            out.append(_POSIX_CLASSES[name])
            i = end + 2
            prev_literal = None
            continue
        if c == "\\":
            if i + 1 >= len(pattern):
                raise _re2_error(pattern, i, "trailing backslash")
            d = pattern[i + 1]
            if d in _PERL_IN_CLASS:
                out.append(_PERL_IN_CLASS[d])
                i += 2
                prev_literal = None
                continue
            if d in "DWS":
                raise _re2_error(pattern, i, f"\\{d} inside a character class has no exact Python equivalent")
            literal, i = _escape_literal(pattern, i)
        elif c == "-" and prev_literal is not None and i + 1 < len(pattern) and pattern[i + 1] != "]":
            # A range: the next item must be a literal too.
            j = i + 1
            if pattern[j] == "\\":
                hi, j = _escape_literal(pattern, j)
            elif pattern[j] == "[" and pattern.startswith("[:", j):
                raise _re2_error(pattern, j, "bad character class range")
            else:
                hi, j = pattern[j], j + 1
            if ord(hi) < ord(prev_literal):
                raise _re2_error(pattern, i, f"invalid character class range {prev_literal}-{hi}")
            out.append("-" + _escape_char(hi))
            i = j
            prev_literal = None
            continue
        else:
            literal, i = c, i + 1
        out.append(_escape_char(literal))
        prev_literal = literal
    out.append("]")
    return "".join(out), i


def _escape_literal(pattern: str, i: int) -> tuple[str, int]:
    """Read a backslash escape that stands for one character; return it and the next index."""
    d = pattern[i + 1]
    simple = {"a": "\a", "f": "\f", "t": "\t", "n": "\n", "r": "\r", "v": "\v"}
    if d in simple:
        return simple[d], i + 2
    if d == "x":
        if pattern.startswith("{", i + 2):
            end = pattern.find("}", i + 3)
            digits = pattern[i + 3 : end] if end > 0 else ""
            if not digits or not all(ch in "0123456789abcdefABCDEF" for ch in digits) or int(digits, 16) > 0x10FFFF:
                raise _re2_error(pattern, i, "invalid \\x{…} escape")
            return chr(int(digits, 16)), end + 1
        digits = pattern[i + 2 : i + 4]
        if len(digits) != 2 or not all(ch in "0123456789abcdefABCDEF" for ch in digits):
            raise _re2_error(pattern, i, "invalid \\x escape")
        return chr(int(digits, 16)), i + 4
    if d.isdigit():
        raise _re2_error(
            pattern, i, f"\\{d} is a backreference or octal escape; RE2 has no backreferences, use \\x.. for bytes"
        )
    if d.isascii() and not d.isalnum():
        return d, i + 2
    if d == "Z":
        raise _re2_error(pattern, i, "\\Z is not RE2 syntax; use \\z or $ for the end of the path")
    if d in "pP":
        raise _re2_error(pattern, i, "Unicode classes \\p/\\P are not supported here")
    raise _re2_error(pattern, i, f"\\{d} is not an escape RE2 accepts (or it means something else in Python)")


def translate_re2(pattern: str) -> str:
    """Translate a Go RE2 ``pattern`` into Python ``re`` syntax with the same meaning.

    Raises SopsConfigError for what RE2 rejects (lookarounds, backreferences,
    possessive or nested repeats, ``\\Z``, atomic groups, …) and for the RE2
    features Python would read differently and that cannot be translated
    exactly. ASCII classes, ``$`` (end of text only, unless ``m``), ``\\z``,
    ``\\Q…\\E``, ``(?<name>…)`` and literal ``{`` are translated.
    """
    out: list[str] = []
    i = 0
    n = len(pattern)
    multiline = [False]
    can_repeat = False  # whether the previous item is something a quantifier can apply to
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise _re2_error(pattern, i, "trailing backslash")
            d = pattern[i + 1]
            if d in "dws":
                out.append("[" + _PERL_IN_CLASS[d] + "]")
                i += 2
            elif d in "DWS":
                out.append("[^" + _PERL_IN_CLASS[d.lower()] + "]")
                i += 2
            elif d == "b":
                out.append(_BOUNDARY)
                i += 2
            elif d == "B":
                out.append(_NON_BOUNDARY)
                i += 2
            elif d == "A":
                out.append("\\A")
                i += 2
            elif d == "z":
                out.append("\\Z")
                i += 2
            elif d == "Q":
                end = pattern.find("\\E", i + 2)
                literal = pattern[i + 2 :] if end < 0 else pattern[i + 2 : end]
                i = n if end < 0 else end + 2
                if literal:
                    out.append("(?:" + re.escape(literal) + ")")
            elif d == "C":
                raise _re2_error(pattern, i, "\\C (any byte) is not supported")
            else:
                literal, i = _escape_literal(pattern, i)
                out.append(_escape_char(literal))
            can_repeat = not (d in "bBAz" or (d == "Q"))
            continue
        if c == "[":
            cls, i = _parse_class(pattern, i)
            out.append(cls)
            can_repeat = True
            continue
        if c == "(":
            rest = pattern[i:]
            if rest.startswith("(?"):
                if rest.startswith("(?:"):
                    out.append("(?:")
                    i += 3
                    multiline.append(multiline[-1])
                elif rest.startswith("(?P<") or (rest.startswith("(?<") and not rest.startswith(("(?<=", "(?<!"))):
                    head = 4 if rest.startswith("(?P<") else 3
                    end = rest.find(">")
                    name = rest[head:end] if end > 0 else ""
                    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                        raise _re2_error(pattern, i, "invalid named group")
                    out.append(f"(?P<{name}>")
                    i += end + 1
                    multiline.append(multiline[-1])
                elif rest.startswith(("(?=", "(?!", "(?<=", "(?<!")):
                    raise _re2_error(pattern, i, "lookahead/lookbehind assertions are not supported by RE2")
                elif rest.startswith("(?P="):
                    raise _re2_error(pattern, i, "backreferences are not supported by RE2")
                elif rest.startswith("(?>"):
                    raise _re2_error(pattern, i, "atomic groups are not supported by RE2")
                elif rest.startswith("(?#"):
                    raise _re2_error(pattern, i, "comment groups are not supported by RE2")
                elif rest.startswith("(?("):
                    raise _re2_error(pattern, i, "conditional groups are not supported by RE2")
                else:
                    m = re.match(r"\(\?([A-Za-z]*)(?:-([A-Za-z]*))?([:)])", rest)
                    if not m or not (m.group(1) or m.group(2)):
                        raise _re2_error(pattern, i, "invalid or missing repetition/group syntax after (?")
                    on, off, kind = m.group(1), m.group(2) or "", m.group(3)
                    for flag in on + off:
                        if flag == "U":
                            raise _re2_error(pattern, i, "the U (ungreedy) flag has no Python equivalent")
                        if flag not in "ims":
                            raise _re2_error(pattern, i, f"unknown flag {flag!r}")
                    if m.group(2) is not None and not off:
                        raise _re2_error(pattern, i, "missing flags after '-'")
                    if kind == ")" and (out or i != 0):
                        raise _re2_error(
                            pattern, i, "inline flags are only supported at the start; use (?flags:…) for a part"
                        )
                    if kind == ")" and off:
                        raise _re2_error(pattern, i, "turning flags off at the start has no effect; remove it")
                    ml = multiline[-1]
                    if "m" in on:
                        ml = True
                    if "m" in off:
                        ml = False
                    flags = on + ("-" + off if off else "")
                    if kind == ")":
                        multiline[-1] = ml
                        out.append(f"(?{on})")
                    else:
                        multiline.append(ml)
                        out.append(f"(?{flags}:")
                    i += m.end()
                    can_repeat = False
                    continue
                can_repeat = False
                continue
            out.append("(")
            multiline.append(multiline[-1])
            i += 1
            can_repeat = False
            continue
        if c == ")":
            if len(multiline) == 1:
                raise _re2_error(pattern, i, "unexpected )")
            multiline.pop()
            out.append(")")
            i += 1
            can_repeat = True
            continue
        if c in "*+?{":
            if c == "{":
                m = _REPEAT_RE.match(pattern, i)
                if not m:
                    # RE2 reads a '{' that does not start a repeat as a literal; Python may not ({,n}).
                    out.append("\\{")
                    i += 1
                    can_repeat = True
                    continue
                lo = int(m.group(1))
                hi = m.group(3)
                if lo > _MAX_REPEAT or (hi and int(hi) > _MAX_REPEAT):
                    raise _re2_error(pattern, i, f"repeat count above {_MAX_REPEAT}")
                if hi and int(hi) < lo:
                    raise _re2_error(pattern, i, "invalid repeat count")
                token, i = m.group(0), m.end()
            else:
                token, i = c, i + 1
            if not can_repeat:
                raise _re2_error(pattern, i - len(token), "missing argument to repetition operator")
            if i < n and pattern[i] == "?":
                token += "?"
                i += 1
            if i < n and (pattern[i] in "*+?" or _REPEAT_RE.match(pattern, i)):
                raise _re2_error(pattern, i, "nested or possessive repetition operators are not supported by RE2")
            out.append(token)
            can_repeat = False
            continue
        if c == "$":
            out.append("$" if multiline[-1] else "\\Z")
            i += 1
            can_repeat = False
            continue
        if c in "^|.":
            out.append(c)
            i += 1
            can_repeat = c == "."
            continue
        out.append(_escape_char(c) if c in "#&~ \t\n" else c)
        i += 1
        can_repeat = True
    if len(multiline) != 1:
        raise _re2_error(pattern, n, "missing closing )")
    return "".join(out)


_REGEX_CACHE: dict[str, re.Pattern[str]] = {}


def compile_path_regex(pattern: str) -> re.Pattern[str]:
    """Compile a sops ``path_regex`` (RE2 syntax) to a Python pattern with the same meaning."""
    cached = _REGEX_CACHE.get(pattern)
    if cached is not None:
        return cached
    translated = translate_re2(pattern)
    try:
        compiled = re.compile(translated)
    except re.error as exc:
        raise SopsConfigError(f"path_regex {pattern!r} is not a valid regular expression: {exc}") from None
    _REGEX_CACHE[pattern] = compiled
    return compiled

