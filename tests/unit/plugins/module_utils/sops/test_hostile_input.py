"""Hostile or ambiguous files: refused fast, with one line naming the file (and the line), nothing written."""

from __future__ import annotations

import base64
import contextlib
import re
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

    def boom(*_unused):
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
    docs, _unused = S.load(str(path)).store.load(path.read_bytes(), str(path))
    assert docs[0]["h2"] == {"user": "u", "port": 22}


# --------------------------------------------------------------------------- duplicate keys
def _encrypted(tmp_path, name, data):
    path = tmp_path / name
    S.encrypt_file(str(path), data, [[RECIPIENT]])
    return path


def _dup_line(text: str, needle: str, after: int = 0) -> str:
    """``text`` with the first line containing ``needle`` repeated right after line ``after`` (0-based)."""
    lines = text.split("\n")
    src = next(i for i, line in enumerate(lines) if needle in line)
    lines.insert(after + 1, lines[src])
    return "\n".join(lines)


def _refused(path, *fragments):
    before = path.read_bytes()
    for op in (lambda: S.load(str(path)).decrypt([IDENT]),
               lambda: S.set_value(str(path), ["zz"], "v", [IDENT])):
        with pytest.raises(S.SopsFormatError) as info:
            op()
        text = str(info.value)
        assert text.startswith(f"{path}: ") and "\n" not in text, text
        for f in fragments:
            assert f in text, text
    assert path.read_bytes() == before


def test_yaml_duplicate_key_in_values_is_refused_like_sops(tmp_path):
    path = _encrypted(tmp_path, "d.yaml", {"a": "1", "b": "2"})
    path.write_text(_dup_line(path.read_text(), "a: ENC", after=1))
    _refused(path, 'line 3: mapping key "a" already defined at line 1')


def test_yaml_duplicate_key_in_metadata_is_refused_like_sops(tmp_path):
    path = _encrypted(tmp_path, "m.yaml", {"a": "1"})
    text = path.read_text()
    lines = text.split("\n")
    v = next(i for i, line in enumerate(lines) if line.startswith("    version:"))
    lm = next(i for i, line in enumerate(lines) if line.startswith("    lastmodified:"))
    lines.insert(lm + 1, lines[v])
    path.write_text("\n".join(lines))
    with pytest.raises(S.SopsFormatError) as info:
        S.load(str(path))
    assert f'line {v + 2}: mapping key "version" already defined at line {lm + 2}' in str(info.value)
    assert str(path) in str(info.value)


def test_json_duplicate_key_is_refused_with_its_line(tmp_path):
    path = _encrypted(tmp_path, "d.json", {"a": "1", "n": {"x": "2", "y": "3"}})
    path.write_text(_dup_line(path.read_text(), '"x": "ENC', after=3))
    _refused(path, 'line 5: duplicate key "x" (first at line 4)')
    # and at the top level, where the metadata is found
    path = _encrypted(tmp_path, "t.json", {"a": "1", "b": "2"})
    path.write_text(_dup_line(path.read_text(), '"a": "ENC', after=2))
    with pytest.raises(S.SopsFormatError, match='line 4: duplicate key "a" \\(first at line 2\\)'):
        S.load(str(path))


def test_dotenv_duplicate_key_is_refused_with_its_line(tmp_path):
    path = _encrypted(tmp_path, "d.env", {"A": "1", "B": "2"})
    path.write_text(_dup_line(path.read_text(), "A=ENC", after=1))
    _refused(path, "line 3: duplicate key 'A' (first at line 1)")
    path = _encrypted(tmp_path, "m.env", {"A": "1"})
    path.write_text(_dup_line(path.read_text(), "sops_version=", after=1))
    with pytest.raises(S.SopsFormatError, match="duplicate key 'sops_version'"):
        S.load(str(path))


def test_ini_duplicate_section_is_refused_duplicate_keys_merge_like_sops(tmp_path):
    path = _encrypted(tmp_path, "d.ini", {"s": {"a": "1", "b": "2"}, "t": {"c": "3"}})
    text = path.read_text()
    path.write_text(text.replace("[t]", "[s]", 1))
    _refused(path, "line 5: section [s] appears again (first at line 1)")
    # A key twice in one section: sops (ini.v1) keeps the last value at the first place; so do we.
    path = _encrypted(tmp_path, "k.ini", {"s": {"a": "1", "b": "2"}})
    path.write_text(_dup_line(path.read_text(), "a = ENC", after=2))
    assert S.load(str(path)).decrypt([IDENT]) == {"s": {"a": "1", "b": "2"}}


# --------------------------------------------------------------------------- broken stanzas
def _stanza_enc(text: str, n: int) -> tuple[int, int]:
    """Span of the n-th armored age block in ``text``."""
    starts = [m.start() for m in re.finditer(r"-----BEGIN AGE ENCRYPTED FILE-----", text)]
    start = starts[n]
    end = text.index("-----END AGE ENCRYPTED FILE-----", start) + len("-----END AGE ENCRYPTED FILE-----")
    return start, end


def _flip_payload(armored: str) -> str:
    """Flip one bit of the age payload: the stanza still parses, but no identity opens it."""
    lines = armored.split("\n")
    body = [line.strip() for line in lines[1:-1]]
    raw = bytearray(base64.b64decode("".join(body)))
    raw[-5] ^= 0x01
    b64 = base64.b64encode(bytes(raw)).decode()
    return "\n".join([lines[0]] + [b64[i:i + 64] for i in range(0, len(b64), 64)] + [lines[-1]])


def _three(tmp_path):
    ids = [generate_identity() for _unused in range(3)]
    rs = [recipient_from_identity(i) for i in ids]
    path = tmp_path / "s.yaml"
    S.encrypt_file(str(path), {"k": "v"}, [rs[:2]])
    return path, ids, rs


def test_updatekeys_rewraps_every_stanza_so_a_corrupt_one_that_stays_is_repaired(tmp_path):
    path, ids, rs = _three(tmp_path)
    text = path.read_text()
    start, end = _stanza_enc(text, 1)
    # The armored block sits indented in YAML: flip it in its unindented form.
    block = "\n".join(line.strip() for line in text[start:end].split("\n"))
    indent = "\n" + " " * (len(text[:start]) - len(text[:start].rstrip(" ")))
    path.write_text(text[:start] + _flip_payload(block).replace("\n", indent) + text[end:])
    assert S.load(str(path)).metadata.stanza_problems() == []  # structurally fine, cryptographically not
    with pytest.raises(S.SopsDecryptError, match="truncated or corrupt"):
        S.load(str(path)).decrypt([ids[1]])
    changed, added, removed = S.updatekeys(str(path), [rs], [ids[0]])
    assert changed and added == {rs[2]} and not removed
    for ident in ids:
        assert S.load(str(path)).decrypt([ident]) == {"k": "v"}


@pytest.mark.parametrize("damage,problem", [
    (lambda enc: enc.replace("-----BEGIN AGE ENCRYPTED FILE-----", "garbage"), "not an ASCII-armored age file"),
    (lambda enc: "\n".join(enc.split("\n")[:2] + enc.split("\n")[3:]), "truncated"),
    (lambda enc: enc.replace(enc.split("\n")[1], "!" * 64), "base64"),
    (lambda enc: enc.replace("YWdlLWVu", "YWdmLWVu", 1), "age header"),  # "agf-encryption.org"
])
def test_stanza_problems_seen_without_any_identity(tmp_path, damage, problem):
    path, ids, rs = _three(tmp_path)
    sf = S.load(str(path))
    assert sf.metadata.stanza_problems() == []
    bad = damage(sf.metadata.key_groups[0][1].enc)
    sf.metadata.key_groups[0][1].enc = bad
    problems = sf.metadata.stanza_problems()
    assert len(problems) == 1, problems
    assert problems[0].group == 0 and problems[0].recipient == rs[1] and problem in problems[0].problem
    assert rs[1] in str(problems[0]) and "key group 1" in str(problems[0])


def test_stanza_problems_one_stanza_of_the_recipients_type(tmp_path):
    import pyrage

    path, ids, rs = _three(tmp_path)
    sf = S.load(str(path))
    two = pyrage.encrypt(b"k" * 32, [pyrage.x25519.Recipient.from_str(r) for r in rs[:2]], armored=True).decode()
    sf.metadata.key_groups[0][1].enc = two
    assert "2 stanzas" in sf.metadata.stanza_problems()[0].problem
    ssh = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBh4FJ8UUDtkNVmR6e1CDP5TgjNYt4jWzjIzJw2TVqzz"
    sf.metadata.key_groups[0][1] = S.AgeStanza(ssh, sf.metadata.key_groups[0][0].enc)
    assert "X25519 stanza" in sf.metadata.stanza_problems()[0].problem


def test_updatekeys_repairs_a_structurally_broken_stanza_even_when_recipients_stay(tmp_path):
    path, ids, rs = _three(tmp_path)
    text = path.read_text()
    lines = text.split("\n")
    second = [i for i, line in enumerate(lines) if "BEGIN AGE ENCRYPTED FILE" in line][1]
    del lines[second + 2]  # a lost line: truncated armor
    path.write_text("\n".join(lines))
    assert len(S.load(str(path)).metadata.stanza_problems()) == 1
    assert S.updatekeys(str(path), [rs[:2]], [ids[0]]) == (True, set(), set())
    assert S.load(str(path)).metadata.stanza_problems() == []
    assert S.load(str(path)).decrypt([ids[1]]) == {"k": "v"}
    assert S.updatekeys(str(path), [rs[:2]], [ids[0]]) == (False, set(), set())


def test_a_fleet_rekey_repairs_a_host_whose_stanza_is_broken(tmp_path, sops_bin):
    """Nothing changed in .sops.yaml, but alpha's stanza lost a line: rekey (check mode too) sees it and repairs."""
    from ansible_collections.nixfleet.sops.plugins.module_utils import fleet

    from tests.lib.secrets_repo import make_repo, sops_decrypt

    repo = make_repo(str(tmp_path), hosts=("alpha", "beta"), git=False)
    path = repo.file("sops/alpha.yaml")
    lines = open(path).read().split("\n")
    second = [i for i, line in enumerate(lines) if "BEGIN AGE ENCRYPTED FILE" in line][1]
    del lines[second + 2]
    open(path, "w").write("\n".join(lines))
    assert sops_decrypt(sops_bin, path, repo.keyfile("alpha")).returncode != 0
    assert fleet.rekey(repo.path, [repo.identities["admin"]], check_mode=True).changed_files == ["sops/alpha.yaml"]
    assert fleet.rekey(repo.path, [repo.identities["admin"]]).changed_files == ["sops/alpha.yaml"]
    out = sops_decrypt(sops_bin, path, repo.keyfile("alpha"))
    assert out.returncode == 0, out.stderr
    assert fleet.rekey(repo.path, [repo.identities["admin"]], check_mode=True).changed_files == []


def test_stanza_check_shortcut_reads_every_damaged_armor_as_the_exact_reader(tmp_path):
    """_dearmor's one-pass read of sops' layout against _dearmor_exact on seeded damage (CRLF, blanks,
    spaces, stray padding, re-wrapped or truncated lines, non-ASCII): the same bytes or the same problem."""
    import random

    from ansible_collections.nixfleet.sops.plugins.module_utils.sops import stanzas

    path, _ids, _rs = _three(tmp_path)
    encs = [s.enc for s in S.load(str(path)).metadata.key_groups[0]]
    rng = random.Random(11)
    pieces = ["\r\n", "\n", "\n\n", " ", "\t", "=", "==", "A", "+", "/", "-", "é", "\x0b", "\u2028", "\r"]
    fast_path = 0
    for _round in range(4000):
        text = rng.choice(encs)
        for _edit in range(rng.randint(0, 3)):
            at = rng.randrange(len(text) + 1)
            op = rng.randrange(4)
            if op == 0:
                text = text[:at] + rng.choice(pieces) + text[at:]
            elif op == 1:
                text = text[:at] + text[at + rng.randint(1, 70):]
            elif op == 2:
                text = text.replace("\n", "\r\n") if rng.random() < 0.5 else text.replace("\n", "\n ", 1)
            else:
                text = text[:at]
        exact = stanzas._dearmor_exact(text)
        assert stanzas._dearmor(text) == exact, repr(text)
        fast_path += isinstance(exact, bytes)
    assert 300 < fast_path < 3700, fast_path  # both sound and damaged armor were tried


@pytest.mark.parametrize("body", [
    "JKXy/yLqfeUTgUCoJj19Ywq8T/b0J5fW03l5wygX5Go", "", "QQ", "QUI", "Q", "QQ ", " QQ", "Q Q", "QQ\n", "QQ=",
    "Q!Q", "QQé", "QR", "QUJ", "////", "++++", "QQ\t", "-_-_",
])
def test_stanza_body_read_by_strict_base64_as_by_the_validating_reader(body):
    """_b64_raw's strict one-call read gives what base64.b64decode(validate=True) gives, or fails as it does."""
    from ansible_collections.nixfleet.sops.plugins.module_utils.sops import stanzas

    def outcome(fn):
        try:
            return fn()
        except (ValueError, UnicodeError) as exc:  # binascii.Error is a ValueError
            return type(exc).__name__

    want = "ValueError" if "=" in body else outcome(
        lambda: base64.b64decode(body + "=" * (-len(body) % 4), validate=True))
    assert outcome(lambda: stanzas._b64_raw(body)) == want


def test_sound_x25519_shortcut_finds_what_the_step_by_step_check_finds():
    """stanza_problem's one-match reading of a sound X25519 file against _problem on seeded damage to the
    dearmored bytes (lines, stanza types, grease, MAC, payload size): the same answer for every file."""
    import random

    import pyrage
    from ansible_collections.nixfleet.sops.plugins.module_utils.agefile import armor
    from ansible_collections.nixfleet.sops.plugins.module_utils.sops import stanzas

    rng = random.Random(20261202)
    ids = [pyrage.x25519.Identity.generate() for _unused in range(4)]
    files = [pyrage.encrypt(bytes([n]) * (32 + n % 2), [ids[n % 4].to_public()]) for n in range(8)]
    recipients = [str(ids[0].to_public()), "age1yubikey1qgz",
                  "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"]
    pieces = [b"\n", b"-> ", b"--- ", b" ", b"  ", b"-grease", b"X25519", b"x25519", b"=", b"A", b"+/", b"\x00", b"\r",
              b"-> X25519 ", b"-> a-grease\n", b"-> a-grease b\nAAAA\n", b"-> -grease\n\n", b"->  b-grease\n"]
    sound = damaged = 0
    for _round in range(6000):
        data = rng.choice(files)
        for _edit in range(rng.randint(0, 2)):
            at = rng.randrange(min(len(data), 200) + 1)  # mostly in the header
            op = rng.randrange(4)
            if op == 0:
                data = data[:at] + rng.choice(pieces) + data[at:]
            elif op == 1:
                data = data[:at] + data[at + rng.randint(1, 3):]
            elif op == 2:
                data = data[:at] + rng.choice(pieces) + data[at + rng.randint(1, 3):]
            else:
                data = data[:len(data) - rng.randint(1, 2)]
        for recipient in recipients:
            want = stanzas._problem(recipient, data)
            assert stanzas.stanza_problem(recipient, armor(data)) == want, (recipient, data)
            if recipient == recipients[0]:
                sound += want is None
                damaged += want is not None
    assert sound > 1000 and damaged > 1000, (sound, damaged)
