"""Bad input: every failure is a clear error and leaves the file byte-identical."""

from __future__ import annotations

import base64
import re

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as S
from ansible_collections.nixfleet.sops.plugins.module_utils.age import generate_identity, recipient_from_identity

DATA = {"user": "alice", "password": "hunter2", "nested": {"list": [1, 2.5, True, "x"]}}


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """A clean environment: no key files anywhere sops would look."""
    for var in ("SOPS_AGE_KEY", "SOPS_AGE_KEY_FILE", "SOPS_AGE_KEY_CMD", "SOPS_AGE_SSH_PRIVATE_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return tmp_path


@pytest.fixture()
def enc_file(env):
    ident = generate_identity()
    path = env / "secrets.yaml"
    S.encrypt_file(str(path), DATA, [[recipient_from_identity(ident)]])
    return path, ident


def _all_ops(path, ident):
    """Every operation, each expected to fail on the file."""
    return [
        lambda: S.load(str(path)).decrypt([ident]),
        lambda: S.set_value(str(path), ["user"], "bob", [ident]),
        lambda: S.unset_value(str(path), ["user"], [ident]),
        lambda: S.rotate(str(path), [ident]),
    ]


def _assert_no_secret(exc: BaseException, *secrets: str) -> None:
    text = str(exc)
    assert "AGE-SECRET-KEY-" not in text.upper()
    for s in secrets:
        assert s not in text


def test_no_identity_lists_recipients_and_places(enc_file, env):
    path, ident = enc_file
    before = path.read_bytes()
    other = generate_identity()
    (env / "xdg" / "sops" / "age").mkdir(parents=True)
    (env / "xdg" / "sops" / "age" / "keys.txt").write_text(other + "\n")
    with pytest.raises(S.SopsNoIdentityError) as info:
        S.load(str(path)).decrypt()
    err = info.value
    assert err.path == str(path)
    assert recipient_from_identity(ident) in str(err)
    assert err.recipients == [[recipient_from_identity(ident)]]
    assert any("keys.txt (1 identity)" in s for s in err.searched)
    assert any("SOPS_AGE_KEY (not set)" in s for s in err.searched)
    assert "keys.txt" in str(err) and "SOPS_AGE_KEY_FILE" in str(err)
    _assert_no_secret(err, ident, other)
    with pytest.raises(S.SopsNoIdentityError):
        S.updatekeys(str(path), [[recipient_from_identity(other)]])
    assert path.read_bytes() == before


def _flip(text: str, pattern: str) -> str:
    m = re.search(pattern, text)
    assert m, pattern
    raw = bytearray(base64.b64decode(m.group(1)))
    raw[0] ^= 0x01
    return text[: m.start(1)] + base64.b64encode(bytes(raw)).decode() + text[m.end(1) :]


def test_flipped_byte_in_value(enc_file):
    path, ident = enc_file
    path.write_text(_flip(path.read_text(), r"password: ENC\[AES256_GCM,data:([^,]+),"))
    before = path.read_bytes()
    for op in _all_ops(path, ident):
        with pytest.raises(S.SopsMacError) as info:
            op()
        assert str(path) in str(info.value) and "password" in str(info.value)
        _assert_no_secret(info.value, ident, "hunter2")
    assert path.read_bytes() == before


def test_flipped_byte_in_mac(enc_file):
    path, ident = enc_file
    path.write_text(_flip(path.read_text(), r"mac: ENC\[AES256_GCM,data:([^,]+),"))
    before = path.read_bytes()
    for op in _all_ops(path, ident):
        with pytest.raises(S.SopsMacError) as info:
            op()
        assert str(path) in str(info.value) and "MAC" in str(info.value)
        _assert_no_secret(info.value, ident)
    assert path.read_bytes() == before


def test_swapped_values_fail_mac_or_decrypt(enc_file):
    """Moving a ciphertext to another key breaks the additional data: never silently accepted."""
    path, ident = enc_file
    text = path.read_text()
    user = re.search(r"user: (ENC\[[^\]]+\])", text).group(1)
    pw = re.search(r"password: (ENC\[[^\]]+\])", text).group(1)
    path.write_text(text.replace(user, "X").replace(pw, user).replace("user: X", "user: " + pw))
    with pytest.raises(S.SopsMacError):
        S.load(str(path)).decrypt([ident])


def test_tampered_lastmodified(enc_file):
    path, ident = enc_file
    path.write_text(re.sub(r'lastmodified: "(\d{4})', lambda m: f'lastmodified: "{int(m.group(1)) - 1}',
                           path.read_text()))
    with pytest.raises(S.SopsMacError):
        S.load(str(path)).decrypt([ident])


def test_truncated_enc_block(enc_file):
    path, ident = enc_file
    lines = path.read_text().splitlines(keepends=True)
    begin = next(i for i, line in enumerate(lines) if "BEGIN AGE ENCRYPTED FILE" in line)
    del lines[begin + 2 : begin + 4]
    path.write_text("".join(lines))
    before = path.read_bytes()
    groups = [[recipient_from_identity(ident)]]
    for op in _all_ops(path, ident) + [lambda: S.updatekeys(str(path), groups, [ident], shamir_threshold=None)]:
        try:
            op()
        except S.SopsDecryptError as exc:
            assert "truncated or corrupt" in str(exc)
            assert recipient_from_identity(ident) in str(exc)
            _assert_no_secret(exc, ident)
        else:
            # updatekeys with an unchanged recipient set has nothing to do and touches nothing.
            pass
    with pytest.raises(S.SopsDecryptError):
        S.updatekeys(str(path), [[recipient_from_identity(generate_identity())]], [ident])
    assert path.read_bytes() == before


def test_not_a_sops_file(env):
    for name, content in [("plain.yaml", b"a: 1\n"), ("plain.json", b'{"a": 1}'), ("plain.env", b"A=1\n"),
                          ("plain.ini", b"[s]\na = 1\n"), ("plain.bin", b"\x00\x01"),
                          ("broken.yaml", b"a: [1\n"), ("broken.json", b"{")]:
        path = env / name
        path.write_bytes(content)
        with pytest.raises(S.SopsFormatError) as info:
            S.load(str(path)).decrypt([generate_identity()])
        assert str(path) in str(info.value)
        with pytest.raises(S.SopsError):
            S.updatekeys(str(path), [[recipient_from_identity(generate_identity())]], [generate_identity()])
        assert path.read_bytes() == content


def test_unsupported_extension_and_format(env):
    ident = generate_identity()
    with pytest.raises(ValueError, match="unknown sops format"):
        S.load(str(env / "x.yaml"), fmt="toml")
    # Anything else is binary (as sops decides): structured data is refused with a clear error.
    with pytest.raises(S.SopsError, match="binary files take bytes"):
        S.encrypt_file(str(env / "x.toml"), {"a": 1}, [[recipient_from_identity(ident)]])
    assert not (env / "x.toml").exists()
    with pytest.raises(S.SopsError, match="complex value"):
        S.encrypt_file(str(env / "x.env"), {"a": {"b": 1}}, [[recipient_from_identity(ident)]])
    assert not (env / "x.env").exists()


def test_bad_recipient_and_missing_file(env):
    with pytest.raises(S.SopsError, match="age1"):
        S.encrypt_file(str(env / "x.yaml"), {"a": 1}, [["ssh-ed25519 AAAA"]])
    with pytest.raises(S.SopsError, match="not found"):
        S.load(str(env / "missing.yaml"))
    with pytest.raises(S.SopsError, match="create_for"):
        S.set_value(str(env / "missing.yaml"), ["a"], 1, [generate_identity()])


def test_invalid_explicit_identity_does_not_echo_it(env):
    with pytest.raises(S.SopsError) as info:
        S.find_identities(env={}, explicit=["AGE-SECRET-KEY-1NOTAVALIDKEYATALLQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"])
    assert "NOTAVALIDKEY" not in str(info.value)


def test_failed_write_leaves_file(enc_file, monkeypatch):
    path, ident = enc_file
    before = path.read_bytes()
    from ansible_collections.nixfleet.sops.plugins.module_utils.sops import sinks

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sinks, "atomic_write", boom)
    with pytest.raises(S.SopsError, match="No space left"):
        S.set_value(str(path), ["user"], "bob", [ident])
    with pytest.raises(S.SopsError):
        S.updatekeys(str(path), [[recipient_from_identity(generate_identity())]], [ident])
    assert path.read_bytes() == before
