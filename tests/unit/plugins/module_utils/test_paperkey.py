"""paperkey.py: the identity as checked lines a person types back, and SLIP-39 shares."""

from __future__ import annotations

import itertools
import shutil
import subprocess

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, paperkey


@pytest.fixture(scope="module")
def identity() -> str:
    return age.generate_identity()


@pytest.fixture(scope="module")
def shares(identity) -> list[str]:
    return paperkey.split_identity(identity, 5, 3)


def typed(lines, with_numbers=True, with_checksums=True) -> str:
    out = []
    for ln in lines:
        parts = ([str(ln.number)] if with_numbers else []) + list(ln.groups) + ([ln.checksum] if with_checksums else [])
        out.append(" ".join(parts))
    return "\n".join(out)


def quotes_words(message: str, mnemonic: str) -> bool:
    """True when ``message`` holds two consecutive words of ``mnemonic`` (single words may be common English)."""
    words = mnemonic.split()
    return any(f"{a} {b}" in message for a, b in zip(words, words[1:], strict=False))


def mistype(text: str, line: int, char: str = "Q") -> str:
    """Change one key character on printed line ``line`` (1-based), as a person might."""
    rows = text.split("\n")
    parts = rows[line - 1].split(" ")
    g = parts[2]
    parts[2] = (char if g[0] != char else "P") + g[1:]
    rows[line - 1] = " ".join(parts)
    return "\n".join(rows)


def test_layout_groups_of_four_five_a_line(identity):
    lines = paperkey.identity_lines(identity)
    assert [len(ln.groups) for ln in lines] == [5, 5, 5]
    assert all(len(g) == 4 for ln in lines for g in ln.groups[:-1])
    assert paperkey.IDENTITY_PREFIX + "".join(g for ln in lines for g in ln.groups) == identity
    assert all(len(ln.checksum) == 4 and set(ln.checksum) <= set("0123456789abcdef") for ln in lines)


def test_checksum_is_what_sha256sum_prints(identity):
    """The page tells a person to check a line with printf | sha256sum | cut -c1-4: that must agree."""
    if shutil.which("sha256sum") is None:
        pytest.fail("sha256sum (coreutils) is missing")
    for ln in paperkey.identity_lines(identity):
        out = subprocess.run(f"printf '%s' '{ln.text}' | sha256sum | cut -c1-4", shell=True, capture_output=True,
                             text=True, check=True).stdout.strip()
        assert out == ln.checksum


@pytest.mark.parametrize("numbers,checksums", [(True, True), (False, True), (True, False), (False, False)])
def test_lines_round_trip(identity, numbers, checksums):
    text = typed(paperkey.identity_lines(identity), numbers, checksums)
    assert paperkey.parse_identity(text) == identity
    assert paperkey.parse_identity(text.lower()) == identity
    assert paperkey.parse_identity(text.replace("\n", " / ")) == identity


def test_qr_text_and_whole_key(identity):
    assert paperkey.parse_identity(identity) == identity
    assert paperkey.parse_identity("  " + identity.lower() + "\n") == identity


@pytest.mark.parametrize("line", [1, 2, 3])
def test_typo_is_caught_with_its_line_number(identity, line):
    text = mistype(typed(paperkey.identity_lines(identity)), line)
    with pytest.raises(paperkey.PaperKeyError, match=rf"^line {line} does not match its checksum") as exc:
        paperkey.parse_identity(text)
    assert identity not in str(exc.value) and identity[16:30] not in str(exc.value)


def test_typo_without_checksums_still_caught_by_bech32(identity):
    text = mistype(typed(paperkey.identity_lines(identity), True, False), 2)
    with pytest.raises(paperkey.PaperKeyError, match="own checksum does not match"):
        paperkey.parse_identity(text)


def test_missing_character_and_missing_line(identity):
    text = typed(paperkey.identity_lines(identity))
    rows = text.split("\n")
    rows[1] = rows[1].replace(rows[1].split(" ")[3], rows[1].split(" ")[3][:3], 1)
    with pytest.raises(paperkey.PaperKeyError, match="line 2 has 19 characters of key, 20 expected"):
        paperkey.parse_identity("\n".join(rows))
    with pytest.raises(paperkey.PaperKeyError, match="printed on 3 lines, 2 were given"):
        paperkey.parse_identity("\n".join(text.split("\n")[:2]))
    with pytest.raises(paperkey.PaperKeyError, match="numbered 3: type the lines in order"):
        lines = text.split("\n")
        paperkey.parse_identity("\n".join([lines[i] for i in (0, 2, 1)]))
    with pytest.raises(paperkey.PaperKeyError, match="no break-glass key given"):
        paperkey.parse_identity("  ")


# --------------------------------------------------------------------------- shares
def test_any_three_of_five_shares_give_the_key(identity, shares):
    assert len(shares) == 5 and all(len(s.split()) == 33 for s in shares)
    for combo in itertools.combinations(shares, 3):
        assert paperkey.combine_shares(list(combo)) == identity
    assert paperkey.combine_shares(list(reversed(shares))) == identity  # more than needed is fine


@pytest.mark.parametrize("pair", list(itertools.combinations(range(5), 2)))
def test_two_shares_are_refused_with_counts(shares, pair):
    with pytest.raises(paperkey.PaperKeyError, match=r"^2 distinct share\(s\) given, 3 needed") as exc:
        paperkey.combine_shares([shares[i] for i in pair])
    assert not any(quotes_words(str(exc.value), s) for s in shares)


def test_same_share_twice_counts_once(shares):
    with pytest.raises(paperkey.PaperKeyError, match=r"2 distinct share\(s\) given \(1 given twice\), 3 needed"):
        paperkey.combine_shares([shares[0], shares[1], shares[0]])


def test_shares_of_another_split_are_refused(identity, shares):
    other = paperkey.split_identity(identity, 5, 3)
    with pytest.raises(paperkey.PaperKeyError, match="share 3 is from another set"):
        paperkey.combine_shares([shares[0], shares[1], other[2]])


def test_share_typed_with_prefixes_and_as_page_lines(shares):
    words = shares[2].split()
    assert paperkey.parse_share(" ".join(w[:4] for w in words), 1) == shares[2]
    page = "\n".join(f"{ln.number} {' '.join(ln.groups)} {ln.checksum}" for ln in paperkey.share_lines(shares[2]))
    assert paperkey.parse_share(page, 1) == shares[2]
    assert paperkey.parse_share(page.upper(), 1) == shares[2]


def test_share_typos_are_located(shares):
    page_lines = paperkey.share_lines(shares[1])
    rows = [f"{ln.number} {' '.join(ln.groups)} {ln.checksum}" for ln in page_lines]
    # A valid word in place of another: only the line checksum can say where.
    swapped = next(w for w in ("academic", "acid") if w not in page_lines[3].groups)
    bad = rows[:]
    bad[3] = bad[3].replace(page_lines[3].groups[1], swapped, 1)
    with pytest.raises(paperkey.PaperKeyError, match="share 2, line 4 does not match its checksum"):
        paperkey.parse_share("\n".join(bad), 2)
    bad = rows[:]
    bad[5] = bad[5].replace(page_lines[5].groups[0], "zzzzzz", 1)
    with pytest.raises(paperkey.PaperKeyError, match="share 2, word 16 is not a SLIP-39 word") as exc:
        paperkey.parse_share("\n".join(bad), 2)
    assert "zzzzzz" not in str(exc.value)
    # Without line checksums, SLIP-39's own checksum catches a valid-but-wrong word.
    words = shares[1].split()
    words[10] = next(w for w in ("academic", "acid") if w != words[10])
    with pytest.raises(paperkey.PaperKeyError, match="share 1 does not check out") as exc:
        paperkey.combine_shares([" ".join(words), shares[2], shares[3]])
    assert not quotes_words(str(exc.value), " ".join(words))


def test_split_limits(identity):
    for n, k in ((5, 1), (3, 4), (17, 3), (1, 1)):
        with pytest.raises(paperkey.PaperKeyError, match="2 <= threshold <= shares <= 16"):
            paperkey.split_identity(identity, n, k)
    assert len(paperkey.split_identity(identity, 2, 2)) == 2
