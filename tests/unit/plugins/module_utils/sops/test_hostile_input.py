"""Hostile or ambiguous files: refused fast, with one line naming the file (and the line), nothing written."""

from __future__ import annotations

import contextlib
import signal
import time

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as S
from ansible_collections.nixfleet.sops.plugins.module_utils.age import generate_identity, recipient_from_identity

IDENT = generate_identity()
RECIPIENT = recipient_from_identity(IDENT)


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging the suite (the bug being tested is a hang)."""

    def boom(*_):
        raise TimeoutError(f"took more than {seconds}s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def laughs(indent: str = "", levels: int = 9) -> str:
    lines = [f'{indent}l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for n in range(1, levels + 1):
        lines.append(f"{indent}l{n}: &l{n} [" + ", ".join([f"*l{n - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def sops_block(tmp_path) -> str:
    path = tmp_path / "real.yaml"
    S.encrypt_file(str(path), {}, [[RECIPIENT]])
    text = path.read_text()
    return text[text.index("sops:\n"):]


def _one_line_error(exc: BaseException, path) -> None:
    text = str(exc)
    assert str(path) in text and "\n" not in text
    assert "alias" in text


def test_billion_laughs_in_the_values_fails_fast(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(laughs() + sops_block(tmp_path))
    before = path.read_bytes()
    for op in (lambda: S.load(str(path)).decrypt([IDENT]),
               lambda: S.set_value(str(path), ["x"], "y", [IDENT]),
               lambda: S.load(str(path)).store.load(before, str(path))):
        start = time.monotonic()
        with deadline(20), pytest.raises(S.SopsFormatError) as info:
            op()
        assert time.monotonic() - start < 1
        _one_line_error(info.value, path)
    assert path.read_bytes() == before


def test_billion_laughs_in_the_metadata_fails_fast(tmp_path):
    path = tmp_path / "meta-laughs.yaml"
    block = sops_block(tmp_path)
    path.write_text("a: b\n" + block.replace("sops:\n", "sops:\n" + laughs("    ") + "    pgp: [*l9]\n", 1))
    before = path.read_bytes()
    for op in (lambda: S.load(str(path)),
               lambda: S.updatekeys(str(path), [[recipient_from_identity(generate_identity())]], [IDENT])):
        start = time.monotonic()
        with deadline(20), pytest.raises(S.SopsFormatError) as info:
            op()
        assert time.monotonic() - start < 1
        _one_line_error(info.value, path)
    assert path.read_bytes() == before


def test_a_few_aliases_are_fine(tmp_path):
    """Anchors a person writes (a shared block used a few times) still load."""
    path = tmp_path / "anchors.yaml"
    S.encrypt_file(str(path), {"x": "1"}, [[RECIPIENT]], rule_options={"unencrypted_regex": "."})
    text = path.read_text()
    path.write_text("base: &b {user: u, port: 22}\nh1: *b\nh2: *b\n" + text)
    docs, _ = S.load(str(path)).store.load(path.read_bytes(), str(path))
    assert docs[0]["h2"] == {"user": "u", "port": 22}
