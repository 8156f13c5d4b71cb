# Copyright: nixfleet.sops contributors
# MIT License
"""sops ``path_regex`` matching with the real RE2 (google-re2), read as Go's regexp reads it.

sops compiles ``path_regex`` with Go's ``regexp.Compile``: RE2 syntax, Perl
classes, ``$`` only at the end of the text (unless ``(?m)``), UTF-8, and an
unanchored search. C++ RE2's default (non-POSIX) options are exactly that.
Where C++ RE2 accepts more than Go (``\\C``, capture names that are not ASCII
word characters, a capture name used twice), the pattern is refused here too,
so a rule never works for us and fails for sops.

``PathMatcher`` compiles every rule's pattern once into one ``re2.Set`` and
answers "which rule does sops pick for this path" with one scan of the path.
"""

from __future__ import annotations

import re

from ..module_support import note_missing_lib
from .common import SopsConfigError

# Guarded: without the library, modules fail with missing_required_lib (module_support.require_libs).
try:
    import re2
except ImportError:
    note_missing_lib("google-re2")

# Big enough for thousands of path_regex in one Set (and for one large pattern Go accepts).
_SET_MAX_MEM = 256 << 20
_ONE_MAX_MEM = 64 << 20
_CAPTURE_NAME_RE = re.compile(r"\(\?P?<([^>]*)>")
_GO_CAPTURE_NAME_RE = re.compile(r"[A-Za-z0-9_]+")
_CACHE_LIMIT = 20_000


def _options(max_mem: int) -> re2.Options:
    opts = re2.Options()
    opts.max_mem = max_mem
    opts.log_errors = False
    return opts


def regex_error(pattern: str, what: str) -> SopsConfigError:
    """The one-line error for a ``path_regex`` sops would refuse."""
    return SopsConfigError(f"path_regex {pattern!r} is not valid Go RE2 syntax (what sops reads): {what}")


def _outside_quotes(pattern: str) -> list[tuple[int, str]]:
    """(position, escaped char) of each backslash escape that is not inside ``\\Q…\\E``."""
    out: list[tuple[int, str]] = []
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] != "\\" or i + 1 >= n:
            i += 1
            continue
        d = pattern[i + 1]
        if d == "Q":
            end = pattern.find("\\E", i + 2)
            i = n if end < 0 else end + 2
            continue
        out.append((i, d))
        i += 2
    return out


def _go_only_checks(pattern: str) -> None:
    """Refuse what C++ RE2 accepts but Go's regexp (sops) does not."""
    escapes = _outside_quotes(pattern)
    if any(d == "C" for _i, d in escapes):
        raise regex_error(pattern, "\\C (any byte) is not supported by Go's regexp")
    escaped = {i + 1 for i, _d in escapes}  # "\(" is a literal parenthesis, not a group
    names: set[str] = set()
    for m in _CAPTURE_NAME_RE.finditer(pattern):
        if m.start() in escaped:
            continue
        name = m.group(1)
        if not _GO_CAPTURE_NAME_RE.fullmatch(name):
            raise regex_error(pattern, f"invalid named capture <{name}> (Go allows letters, digits and _ only)")
        if name in names:
            raise regex_error(pattern, f"duplicate capture group name <{name}>")
        names.add(name)


# What people bring from Perl/Python regexes, named in the error so they know what to change.
_HINTS = (
    (("(?=", "(?!", "(?<=", "(?<!"), "lookahead/lookbehind assertions are not supported by RE2"),
    (("(?P=", "\\1", "\\2", "\\3", "\\4", "\\5", "\\6", "\\7", "\\8", "\\9"),
     "backreferences are not supported by RE2"),
    (("(?>",), "atomic groups are not supported by RE2"),
    (("\\Z",), "use \\z or $ for the end of the path"),
)


def _hint(reason: str) -> str:
    for needles, hint in _HINTS:
        if any(reason.endswith(n) or f"{n} " in reason or reason.endswith(n + ")") for n in needles):
            return f" ({hint})"
    return ""


_CACHE: dict[str, re2._Regexp] = {}


def compile_path_regex(pattern: str) -> re2._Regexp:
    """Compile a sops ``path_regex`` with RE2, refusing what Go's regexp refuses; errors name the pattern."""
    cached = _CACHE.get(pattern)
    if cached is not None:
        return cached
    if not isinstance(pattern, str):
        raise regex_error(str(pattern), "not a string")
    try:
        encoded = pattern.encode("utf-8")
    except UnicodeEncodeError:
        raise regex_error(pattern, "invalid UTF-8") from None
    _go_only_checks(pattern)
    try:
        compiled = re2.compile(encoded, _options(_ONE_MAX_MEM))
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise regex_error(pattern, reason + _hint(reason)) from None
    if len(_CACHE) >= _CACHE_LIMIT:
        _CACHE.clear()
    _CACHE[pattern] = compiled
    return compiled


def encode_path(path: str) -> bytes:
    """``path`` as the bytes Go matches (undecodable file-name bytes kept as they are)."""
    return path.encode("utf-8", "surrogateescape")


def path_regex_matches(pattern: str, path: str) -> bool:
    """True when sops' unanchored search of ``pattern`` finds a match in ``path``."""
    return compile_path_regex(pattern).search(encode_path(path)) is not None


class PathMatcher:
    """Which of an ordered list of rules sops picks for a path: the first whose pattern matches.

    ``patterns[i]`` is rule i's path_regex, or None for a rule without one
    (it matches every path). All patterns are compiled once into one
    unanchored ``re2.Set``; answers are cached per path. A pattern sops cannot
    compile is reported only when sops would reach it (no earlier rule
    matched), as sops does. Without a usable Set (too big for its memory
    budget), each pattern is searched in turn.
    """

    def __init__(self, patterns: list[str | None]) -> None:
        """Compile ``patterns`` (rule order)."""
        self.patterns = patterns
        self.catch_all = next((i for i, p in enumerate(patterns) if not p), None)
        self.errors: dict[int, SopsConfigError] = {}
        self.slots: list[int] = []  # Set slot -> rule index
        for i, p in enumerate(patterns[: self.catch_all]):
            try:
                compile_path_regex(p or "")
            except SopsConfigError as exc:
                self.errors[i] = exc
            else:
                self.slots.append(i)
        self.first_error = min(self.errors, default=None)
        self.set = self._build_set()
        self.cache: dict[str, int | None] = {}

    def _build_set(self) -> re2.Set | None:
        if not self.slots:
            return None
        try:
            s = re2.Set.SearchSet(_options(_SET_MAX_MEM))
            for i in self.slots:
                s.Add(self.patterns[i].encode("utf-8"))  # type: ignore[union-attr]
            s.Compile()
        except re2.error:
            return None
        return s

    def _scan(self, data: bytes, below: int) -> int | None:
        """First rule index below ``below`` whose pattern matches, searching pattern by pattern."""
        for i in self.slots:
            if i >= below:
                break
            if compile_path_regex(self.patterns[i] or "").search(data) is not None:
                return i
        return None

    def first(self, path: str) -> int | None:
        """Index of the rule sops picks for ``path`` (already relative to the config), None when none matches.

        Raises the pattern's SopsConfigError when sops would reach an invalid pattern first.
        """
        if path in self.cache:
            found = self.cache[path]
        else:
            found = self._first(path)
            self.cache[path] = found
        if self.first_error is not None and (found is None or found > self.first_error):
            raise self.errors[self.first_error]
        return found

    def _first(self, path: str) -> int | None:
        data = encode_path(path)
        limit = self.catch_all if self.catch_all is not None else len(self.patterns)
        if self.set is not None:
            matched = self.set.Match(data)
            hit = self.slots[min(matched)] if matched else None
        else:
            hit = self._scan(data, limit)
        return hit if hit is not None else self.catch_all
