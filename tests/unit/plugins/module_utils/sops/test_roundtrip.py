"""Hypothesis round-trips of the engine on random documents, every structured format."""

from __future__ import annotations

import math

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as S
from ansible_collections.nixfleet.sops.plugins.module_utils.age import generate_identity, recipient_from_identity
from ansible_collections.nixfleet.sops.plugins.module_utils.sops import shamir
from ansible_collections.nixfleet.sops.plugins.module_utils.sops.stores import goyaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

IDS = [generate_identity() for _unused in range(3)]
RS = [recipient_from_identity(i) for i in IDS]

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x85\u2028\u2029"),
               max_size=20)
keys = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF, blacklist_characters=":"),
               min_size=1, max_size=10).filter(lambda k: k != "sops" and k.strip() == k)
scalars = st.one_of(
    text, st.integers(-(2**63), 2**63 - 1), st.booleans(), st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
)
yaml_docs = st.dictionaries(
    keys,
    st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(keys, c, max_size=4), max_leaves=12),
    max_size=6,
)
json_scalars = st.one_of(text, st.integers(-(2**53), 2**53), st.booleans(), st.none(),
                         st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f)))
json_docs = st.dictionaries(
    keys,
    st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(keys, c, max_size=4),
                 max_leaves=12),
    max_size=6,
)
flat_keys = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="=#;[]\"`:"),
                    min_size=1, max_size=10).filter(lambda k: not k.startswith("sops"))
flat_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF, blacklist_characters="\\#;\"`"),
                      max_size=20).map(str.strip)
env_docs = st.dictionaries(flat_keys, flat_values, max_size=6)
ini_docs = st.dictionaries(flat_keys.filter(lambda k: k != "DEFAULT"), env_docs, min_size=1, max_size=3)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _norm(value):
    """Compare floats by value (-0.0 == 0.0 in sops' text forms) and drop comment identity."""
    if isinstance(value, float) and value == int(value) and not math.isinf(value):
        return ("num", value)
    return S.comparable(value)


def roundtrip(tmp_path, name, doc):
    path = str(tmp_path / name)
    S.encrypt_file(path, doc, [RS[:2]])
    assert S.comparable(S.load(path).decrypt([IDS[1]])) == S.comparable(doc)
    before = open(path, "rb").read()
    changed, added, removed = S.updatekeys(path, [[RS[2], RS[0]]], [IDS[0]])
    assert changed and added == {RS[2]} and removed == {RS[1]}
    after = open(path, "rb").read()
    sf = S.load(path)
    assert sf.metadata.mac.encode() in before and sf.metadata.lastmodified.encode() in before
    assert S.comparable(sf.decrypt([IDS[2]])) == S.comparable(doc)
    ciphertexts = after.split(b"sops")[0]
    S.rotate(path, [IDS[2]])
    rotated = open(path, "rb").read()
    assert S.comparable(S.load(path).decrypt([IDS[0]])) == S.comparable(doc)
    if b"ENC[" in ciphertexts:
        assert rotated.split(b"sops")[0] != ciphertexts


@SETTINGS
@given(doc=yaml_docs)
def test_yaml_roundtrip(tmp_path, doc):
    roundtrip(tmp_path, "doc.yaml", doc)


@SETTINGS
@given(doc=json_docs)
def test_json_roundtrip(tmp_path, doc):
    roundtrip(tmp_path, "doc.json", doc)


@SETTINGS
@given(doc=env_docs)
def test_dotenv_roundtrip(tmp_path, doc):
    roundtrip(tmp_path, "doc.env", doc)


@SETTINGS
@given(doc=ini_docs)
def test_ini_roundtrip(tmp_path, doc):
    roundtrip(tmp_path, "doc.ini", doc)


@SETTINGS
@given(content=st.binary(max_size=200))
def test_binary_roundtrip(tmp_path, content):
    path = str(tmp_path / "blob.bin")
    S.encrypt_file(path, content, [RS[:1]])
    assert S.load(path).decrypt([IDS[0]]) == content
    S.rotate(path, [IDS[0]])
    assert S.load(path).decrypt([IDS[0]]) == content


@SETTINGS
@given(doc=yaml_docs, comments=st.lists(text.filter(lambda t: "\n" not in t), min_size=1, max_size=3))
def test_yaml_comments_roundtrip(tmp_path, doc, comments):
    doc = dict(doc)
    tree = {S.Comment(c): None for c in comments}
    tree.update(doc)
    path = str(tmp_path / "c.yaml")
    S.encrypt_file(path, tree, [RS[:1]])
    out = S.load(path).decrypt([IDS[0]])
    assert [k.text for k in out if isinstance(k, S.Comment)] == comments
    assert S.comparable(S.strip_comments(out)) == S.comparable(doc)


@SETTINGS
@given(doc=yaml_docs, value=scalars)
def test_set_value_idempotent(tmp_path, doc, value):
    path = str(tmp_path / "s.yaml")
    S.encrypt_file(path, doc, [RS[:1]])
    S.set_value(path, ["new", "leaf"], value, [IDS[0]])
    before = open(path, "rb").read()
    assert S.set_value(path, ["new", "leaf"], value, [IDS[0]]) is False
    assert open(path, "rb").read() == before
    assert S.comparable(S.load(path).decrypt([IDS[0]])["new"]["leaf"]) == S.comparable(value)


@given(secret=st.binary(min_size=1, max_size=40), parts=st.integers(2, 6), data=st.data())
def test_shamir_any_threshold_subset(secret, parts, data):
    threshold = data.draw(st.integers(2, parts))
    shares = shamir.split(secret, parts, threshold)
    subset = data.draw(st.permutations(shares)).copy()[:threshold]
    assert shamir.combine(subset) == secret
    # A missing share is recomputed from any threshold of the others (x = index + 1).
    assert shamir.interpolate(shares[:threshold], parts) == shares[parts - 1]


@pytest.mark.parametrize("value,expected", [(1.0, "1"), (1e6, "1e+06"), (123456.0, "123456"), (0.0001, "0.0001"),
                                            (0.00001, "1e-05"), (1.5, "1.5"), (-2.5e-10, "-2.5e-10")])
def test_go_float_formatting(value, expected):
    assert goyaml.go_format_g(value) == expected
