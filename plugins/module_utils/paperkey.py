# Copyright: nixfleet.sops contributors
# MIT License
"""A break-glass identity on paper: text a person can type back, and SLIP-39 shares.

The identity (``AGE-SECRET-KEY-1`` + 58 bech32 characters) is printed as
its data part in groups of four characters, five groups a line, and every
line carries a checksum: the first four hex digits of SHA-256 over
``"<line number> <groups separated by one space>"`` (upper case). That is
what ``printf '%s' '2 QPZR 9X8G GF2T VDW0 S3JN' | sha256sum | cut -c1-4``
prints, so a person can check a line on any machine without trusting this
code, and the parser names the line that holds a typo. Hex in lower case has
no I/l/1 or O/0 to confuse; bech32 has no 1, b, i or o.

A split key is a set of SLIP-39 shares (``shamir-mnemonic``, the reference
implementation): one group, ``threshold`` of ``count`` members, no
passphrase. The X25519 identity is 32 bytes, inside SLIP-39's 16–32.
Each share is 33 words, printed three a line with the same line checksum
over ``"<line number> <words>"`` (lower case).

Errors name the line, share or word position and never quote what was
typed: a mistyped word is still most of a secret.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from . import age
from .errors import NixfleetError

IDENTITY_PREFIX = "AGE-SECRET-KEY-1"
GROUP_CHARS = 4
GROUPS_PER_LINE = 5
WORDS_PER_LINE = 3
CHECKSUM_CHARS = 4
MAX_SHARES = 16
_LINE_SPLIT = re.compile(r"[\r\n/|]+")
_HEX = re.compile(r"^[0-9a-f]{4}$")


class PaperKeyError(NixfleetError, ValueError):
    """Typed-back text or shares that do not give the key; the message says which line, share or word."""


@dataclass(frozen=True)
class PaperLine:
    """One printed line: its number, its groups (or words) and its checksum."""

    number: int
    groups: tuple[str, ...]
    checksum: str

    @property
    def text(self) -> str:
        """The line as hashed (and as a person types it into ``sha256sum``)."""
        return f"{self.number} {' '.join(self.groups)}"


def line_checksum(number: int, groups: Sequence[str]) -> str:
    """First four hex digits of SHA-256 over ``"<number> <groups joined by a space>"``."""
    return hashlib.sha256(f"{number} {' '.join(groups)}".encode()).hexdigest()[:CHECKSUM_CHARS]


def _lines(chunks: Sequence[str], per_line: int) -> list[PaperLine]:
    out = []
    for i in range(0, len(chunks), per_line):
        groups = tuple(chunks[i : i + per_line])
        number = i // per_line + 1
        out.append(PaperLine(number, groups, line_checksum(number, groups)))
    return out


def identity_lines(identity: str) -> list[PaperLine]:
    """The data part of an X25519 identity as numbered, checksummed lines of four-character groups."""
    ident = age.validate_identity(identity)
    data = ident[len(IDENTITY_PREFIX):]
    return _lines([data[i : i + GROUP_CHARS] for i in range(0, len(data), GROUP_CHARS)], GROUPS_PER_LINE)


def _identity_layout() -> list[int]:
    """Characters of key per printed line (58 data characters of an X25519 identity: 20, 20, 18)."""
    total = len(age.identity_from_scalar(bytes(32))) - len(IDENTITY_PREFIX)
    per = GROUP_CHARS * GROUPS_PER_LINE
    return [min(per, total - i) for i in range(0, total, per)]


def parse_identity(text: str) -> str:
    """The identity from what a person typed or a scanner read.

    Accepts the whole ``AGE-SECRET-KEY-1…`` string (the QR code), or the
    printed lines (newlines, ``/`` or ``|`` between them), each optionally led
    by its number and followed by its checksum. A line whose checksum does not
    match is named; without checksums, the identity's own bech32 checksum still
    catches a typo but cannot say where.
    """
    if not isinstance(text, str) or not text.strip():
        raise PaperKeyError("no break-glass key given: type the lines of the page, or scan its QR code")
    compact = "".join(text.split())
    if compact.upper().startswith(IDENTITY_PREFIX):
        return _checked_identity(compact)
    layout = _identity_layout()
    rows = [r.split() for r in _LINE_SPLIT.split(text) if r.strip()]
    if len(rows) != len(layout):
        raise PaperKeyError(
            f"the key is printed on {len(layout)} lines, {len(rows)} were given: type every line "
            "(one per line, or separated by '/')"
        )
    data = []
    for number, (tokens, want) in enumerate(zip(rows, layout, strict=True), start=1):
        data.append(_identity_row(number, tokens, want))
    return _checked_identity(IDENTITY_PREFIX + "".join(data))


def _identity_row(number: int, tokens: list[str], want: int) -> str:
    """The key characters of printed line ``number`` (checksum verified when typed)."""
    if tokens and tokens[0].rstrip(".:").isdigit() and len(tokens[0].rstrip(".:")) <= 2:
        if int(tokens[0].rstrip(".:")) != number:
            raise PaperKeyError(f"line {number} is numbered {tokens[0].rstrip('.:')}: type the lines in order")
        tokens = tokens[1:]
    checksum = None
    joined = "".join(tokens)
    groups_here = -(-want // GROUP_CHARS)
    # Typed with spaces, one token more than the groups is the checksum; typed run together, the length says.
    if (len(tokens) == groups_here + 1 and len(tokens[-1]) == CHECKSUM_CHARS) or (
            len(joined) == want + CHECKSUM_CHARS and tokens and len(tokens[-1]) == CHECKSUM_CHARS):
        checksum, tokens = tokens[-1].lower(), tokens[:-1]
        joined = "".join(tokens)
    if len(joined) != want:
        raise PaperKeyError(
            f"line {number} has {len(joined)} characters of key, {want} expected "
            "(plus the 4-character checksum): a character is missing or extra in line "
            f"{number}"
        )
    groups = [joined.upper()[i : i + GROUP_CHARS] for i in range(0, want, GROUP_CHARS)]
    if checksum is not None and line_checksum(number, groups) != checksum:
        raise PaperKeyError(
            f"line {number} does not match its checksum: a character in line {number} (or its "
            "checksum) is mistyped; compare it with the page"
        )
    return "".join(groups)


def _checked_identity(candidate: str) -> str:
    try:
        return age.validate_identity(candidate)
    except age.AgeKeyError:
        raise PaperKeyError(
            "the key's own checksum does not match: a character is wrong or missing (type the "
            "line checksums too, and the line with the typo is named)"
        ) from None


# --------------------------------------------------------------------------- SLIP-39 shares
def _slip39() -> object:
    try:
        import shamir_mnemonic
    except ImportError:
        raise PaperKeyError(
            "shares need the Python package shamir-mnemonic on the controller: pip install shamir-mnemonic"
        ) from None
    return shamir_mnemonic


def check_split(count: int, threshold: int) -> None:
    """Refuse a k-of-n split SLIP-39 cannot make, or one that is no split at all."""
    if not isinstance(count, int) or not isinstance(threshold, int):
        raise PaperKeyError("shares and threshold must be whole numbers")
    if not 2 <= threshold <= count <= MAX_SHARES:
        raise PaperKeyError(
            f"a split needs 2 <= threshold <= shares <= {MAX_SHARES}; got threshold {threshold} of "
            f"{count} shares (leave both unset for one page with the whole key)"
        )


def split_identity(identity: str, count: int, threshold: int) -> list[str]:
    """SLIP-39 mnemonics (one group, ``threshold`` of ``count``, no passphrase) of an X25519 identity."""
    check_split(count, threshold)
    slip = _slip39()
    secret = age._identity_bytes(age.validate_identity(identity))
    groups = slip.generate_mnemonics(1, [(threshold, count)], secret, passphrase=b"")  # type: ignore[attr-defined]
    return list(groups[0])


def share_lines(mnemonic: str) -> list[PaperLine]:
    """A share's words as numbered, checksummed lines of three words."""
    return _lines(mnemonic.split(), WORDS_PER_LINE)


@functools.lru_cache(maxsize=1)
def _words() -> tuple[list[str], dict[str, str]]:
    """The SLIP-39 word list and its unique four-letter prefixes (every word is unique by them)."""
    from shamir_mnemonic.wordlist import WORDLIST

    return WORDLIST, {w[:4]: w for w in WORDLIST}


def parse_share(text: str, position: int) -> str:
    """One share as typed: its words (a word's first four letters are enough), optionally as
    the printed lines with their numbers and checksums. ``position`` (1-based) names it in errors."""
    if not isinstance(text, str) or not text.strip():
        raise PaperKeyError(f"share {position} is empty")
    out: list[str] = []
    for row_no, row in enumerate((r for r in _LINE_SPLIT.split(text) if r.strip()), start=1):
        out.extend(_share_row(position, row_no, row.split(), len(out)))
    return " ".join(out)


def _share_row(position: int, number: int, tokens: list[str], before: int) -> list[str]:
    """The words of one typed row of share ``position`` (its checksum verified when typed)."""
    words, prefixes = _words()
    body = []
    for tok in tokens:
        t = tok.lower().rstrip(".:")
        if t.isdigit() and len(t) <= 2:
            number = int(t)  # the line number from the page (a checksum has four characters)
        else:
            body.append(t)
    line_words: list[str] = []
    checksums: list[str] = []
    for i, t in enumerate(body):
        word = prefixes.get(t[:4]) if len(t) >= 4 else None
        if word is not None and not word.startswith(t):
            word = None
        # A checksum is four hex digits; one that is also a word's prefix counts as the checksum
        # only at the end of a page line (three words and it).
        if _HEX.match(t) and (word is None or (i == len(body) - 1 and len(body) == WORDS_PER_LINE + 1)):
            checksums.append(t)
        elif word is None:
            raise PaperKeyError(
                f"share {position}, word {before + len(line_words) + 1} is not a SLIP-39 word: check it "
                "against the page (the first four letters are enough)"
            )
        else:
            line_words.append(word)
    # One checksum on a line is that line's; several mean the lines were run together, and
    # then only the share's own checksum can tell (it cannot say where).
    if len(checksums) == 1 and line_checksum(number, line_words) != checksums[0]:
        raise PaperKeyError(
            f"share {position}, line {number} does not match its checksum: a word in that line (or the "
            "checksum) is mistyped; compare it with the page"
        )
    return line_words


def combine_shares(texts: Iterable[str]) -> str:
    """The identity from typed SLIP-39 shares, or a clear error: which share is wrong, or how many
    were given and how many are needed. Never quotes a word."""
    slip = _slip39()
    mnemonics = [parse_share(t, i) for i, t in enumerate(texts, start=1)]
    if not mnemonics:
        raise PaperKeyError("no shares given")
    shares = []
    for i, m in enumerate(mnemonics, start=1):
        try:
            shares.append(slip.Share.from_mnemonic(m))  # type: ignore[attr-defined]
        except slip.MnemonicError:  # type: ignore[attr-defined]
            # The library's messages quote the first words; ours say where instead.
            raise PaperKeyError(
                f"share {i} does not check out (SLIP-39 checksum or length): a word is wrong, missing or "
                "extra; type it again from its page"
            ) from None
    first = shares[0]
    for i, s in enumerate(shares[1:], start=2):
        if s.common_parameters() != first.common_parameters() or s.group_index != first.group_index:
            raise PaperKeyError(f"share {i} is from another set of shares than share 1 (another key or split)")
    distinct = {s.index for s in shares}
    need = first.member_threshold
    if len(distinct) < need:
        twice = f" ({len(shares) - len(distinct)} given twice)" if len(distinct) < len(shares) else ""
        raise PaperKeyError(
            f"{len(distinct)} distinct share(s) given{twice}, {need} needed: any {need} different shares of "
            "this set open the key (each page says how many); nothing was tried"
        )
    # SLIP-39 wants exactly the threshold: the first ``need`` different shares, in the order typed.
    chosen: dict[int, str] = {}
    for s, m in zip(shares, mnemonics, strict=True):
        if s.index not in chosen and len(chosen) < need:
            chosen[s.index] = m
    try:
        secret = slip.combine_mnemonics(list(chosen.values()))  # type: ignore[attr-defined]
    except (slip.MnemonicError, ValueError):  # type: ignore[attr-defined]
        raise PaperKeyError(
            "the shares do not combine to a key (their digest does not match): one share is mistyped in a "
            "way its checksum missed, or they come from different splits"
        ) from None
    return age.identity_from_scalar(secret)


def share_info(mnemonic: str) -> dict[str, int]:
    """Public facts of a share (its number, the threshold) for the page; the words stay secret."""
    slip = _slip39()
    s = slip.Share.from_mnemonic(mnemonic)  # type: ignore[attr-defined]
    return {"index": s.index + 1, "threshold": s.member_threshold}
