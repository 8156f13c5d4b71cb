"""The native age format and key types agree with age's spec, with pyrage, and refuse what they must."""

from __future__ import annotations

import os
import re

import pyrage
import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, agefile, agekeys
from pyrage import x25519

# From c2sp.org/age, "The MLKEM768-X25519 hybrid post-quantum recipient type".
SPEC_PQ_IDENTITY = "AGE-SECRET-KEY-PQ-1XX76JRALNLXDMEW0CRK45QMCCH4X06SE84UN3VPM33W6HWDX0H3SK3ZQFR"
SPEC_PQ_RECIPIENT_START = "age1pq1x34nzsvr0rxjsgdn8zgyhfe8j7ceq5r9rdelkjuh3y235jzxshfg87pzf5zrqtzdxz95paef6caq5aapdmw"


def test_pq_key_expansion_matches_the_spec_vector():
    recipient = age.recipient_from_identity(SPEC_PQ_IDENTITY)
    assert recipient.startswith(SPEC_PQ_RECIPIENT_START)
    assert age.recipient_kind(recipient) == "pq"
    assert len(age.bech32_decode(recipient)[1]) == 1216


@pytest.mark.parametrize("size", [0, 1, 47, 48, 49, 96, 200])
def test_stanza_bodies_end_with_a_short_line(size):
    st = agefile.Stanza("t", ("a", "b"), os.urandom(size))
    text = st.encode()
    lines = text.decode().split("\n")[1:-1]
    assert all(len(ln) == 64 for ln in lines[:-1]) and len(lines[-1]) < 64
    assert agefile.read_stanza(agefile.LineReader(text)) == st


def _x25519_file(payload: bytes):
    ident = x25519.Identity.generate()
    public = age.bech32_decode(str(ident.to_public()))[1]
    fk = agefile.new_file_key()
    return ident, agefile.encrypt(payload, fk, [agekeys.wrap_x25519(fk, public)])


def test_pyrage_opens_our_x25519_files_and_we_open_pyrages():
    payload = os.urandom(70000)  # two STREAM chunks
    ident, enc = _x25519_file(payload)
    assert pyrage.decrypt(enc, [ident]) == payload
    theirs = pyrage.encrypt(payload, [ident.to_public()], armored=True)
    f = agefile.parse(theirs)
    scalar = age._identity_bytes(str(ident))
    public = age.bech32_decode(str(ident.to_public()))[1]
    assert f.open(agekeys.unwrap_x25519(f.stanzas[0], scalar, public)) == payload


def test_tampered_header_or_payload_is_refused():
    ident, enc = _x25519_file(b"k" * 32)
    f = agefile.parse(enc)
    scalar = age._identity_bytes(str(ident))
    public = age.bech32_decode(str(ident.to_public()))[1]
    fk = agekeys.unwrap_x25519(f.stanzas[0], scalar, public)
    with pytest.raises(agefile.AgeFormatError, match="MAC"):
        agefile.AgeFile(f.stanzas, f.header + b"x", f.mac, f.payload).open(fk)
    with pytest.raises(agefile.AgeFormatError, match="payload"):
        agefile.AgeFile(f.stanzas, f.header, f.mac, f.payload[:-1] + bytes([f.payload[-1] ^ 1])).open(fk)
    # Another key does not open the stanza at all.
    other = x25519.Identity.generate()
    assert agekeys.unwrap_x25519(f.stanzas[0], age._identity_bytes(str(other)),
                                 age.bech32_decode(str(other.to_public()))[1]) is None


@pytest.mark.parametrize(
    ("mangle", "why"),
    [
        (lambda b: b"", "not an age file"),
        (lambda b: b.replace(b"\n---", b"\n--x"), "stanza"),
        (lambda b: b.split(b"\n---")[0] + b"\n", "MAC line"),
        (lambda b: b.replace(b"-> X25519 ", b"-> X25519  "), "stanza"),
    ],
)
def test_malformed_files_are_refused_without_quoting_them(mangle, why):
    _unused, enc = _x25519_file(b"s" * 32)
    binary = agefile.dearmor(enc)
    with pytest.raises(agefile.AgeFormatError, match=why) as err:
        agefile.parse(mangle(binary))
    assert "X25519" not in str(err.value) or why == "stanza"


def test_pq_wrap_unwrap_and_wrong_key():
    ident = age.generate_identity("pq")
    recipient = age.recipient_from_identity(ident)
    fk = agefile.new_file_key()
    st = agekeys.wrap_pq(fk, age.bech32_decode(recipient)[1])
    assert st.type == "mlkem768x25519" and len(agefile.b64decode(st.args[0])) == 1120 and len(st.body) == 32
    assert agekeys.unwrap_pq(st, agekeys.PQKey(age._identity(ident)[1])) == fk
    other = agekeys.PQKey(age._identity(age.generate_identity("pq"))[1])
    assert agekeys.unwrap_pq(st, other) is None
    assert "<secret>" in repr(other)


def test_scrypt_wrap_unwrap_and_work_factor_limit():
    fk = agefile.new_file_key()
    st = agekeys.wrap_scrypt(fk, b"correct horse", log_n=10)
    assert agekeys.unwrap_scrypt(st, b"correct horse") == fk
    assert agekeys.unwrap_scrypt(st, b"wrong") is None
    greedy = agefile.Stanza("scrypt", (st.args[0], "30"), st.body)
    with pytest.raises(age.AgeKeyError, match="work factor 30"):
        agekeys.unwrap_scrypt(greedy, b"correct horse")


def test_pyrage_passphrase_files_open_natively():
    enc = pyrage.passphrase.encrypt(b"AGE-SECRET-KEY-1...\n", "pw")
    f = agefile.parse(enc)
    assert [s.type for s in f.stanzas] == ["scrypt"]
    assert f.open(agekeys.unwrap_scrypt(f.stanzas[0], b"pw")) == b"AGE-SECRET-KEY-1...\n"


def test_armor_round_trip_and_line_lengths():
    data = os.urandom(500)
    text = agefile.armor(data)
    assert all(len(ln) <= 64 for ln in text.splitlines())
    assert re.match(r"-----BEGIN AGE ENCRYPTED FILE-----\n", text)
    assert agefile.dearmor(text.replace("\n", "\r\n").encode()) == data
