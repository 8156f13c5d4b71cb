"""The native sops engine against the real sops binary, both directions, every format."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as S
from ansible_collections.nixfleet.sops.plugins.module_utils.age import generate_identity, recipient_from_identity
from ansible_collections.nixfleet.sops.plugins.module_utils.sops.stores import store_for

pytestmark = pytest.mark.interop

YAML_DOC = """\
# top comment
key: value
num: 12
neg: -7
flt: 1.5
t: true
f: false
empty: ""
multi: |
    line1
    line2
uni: "héllo ✓ 日本"
nested:
    # inner comment
    a: 1
    b:
        - x
        - "y": z
          w: 2.25
        - [1, 2]
        - - deep
    emptymap: {}
    emptylist: []
lst:
    - a
    - b
nul: null
key_unencrypted: plain
"yes": quoted
# closing comment
"""
JSON_DOC = (
    '{"a": "x<y>&", "n": 1, "f": 1.5, "b": false, "nul": null, "u": "héllo ✓", "e": "",'
    ' "m": "two\\nlines", "l": [1, "s", {"q": [], "r": {"s": true}}], "o": {}}'
)
ENV_DOC = "# a comment\nA=1\nB=multi\\nline\nC=\nD=x=y\nU=héllo ✓\n"
INI_DOC = "; section comment\n[sec]\na = 1\n# key comment\nb = hello world\nu = héllo ✓\n[other]\nc = x\n"
BIN_DOC = "binary\x00data ✓\n\xff".encode("utf-8", "surrogateescape")

FORMATS = {
    "yaml": ("doc.yaml", YAML_DOC.encode()),
    "json": ("doc.json", JSON_DOC.encode()),
    "dotenv": ("doc.env", ENV_DOC.encode()),
    "ini": ("doc.ini", INI_DOC.encode()),
    "binary": ("doc.bin", BIN_DOC),
}
_ARMOR = re.compile(r"-----BEGIN AGE ENCRYPTED FILE-----.*?-----END AGE ENCRYPTED FILE-----", re.S)


@pytest.fixture()
def keys(tmp_path):
    """Three identities, each in its own key file, plus one file with all of them."""
    ids = [generate_identity() for _unused in range(3)]
    out = {"ids": ids, "recipients": [recipient_from_identity(i) for i in ids], "files": []}
    for n, ident in enumerate(ids):
        path = tmp_path / f"key{n}.txt"
        path.write_text(ident + "\n")
        out["files"].append(str(path))
    allp = tmp_path / "all.txt"
    allp.write_text("\n".join(ids) + "\n")
    out["all"] = str(allp)
    return out


def run_sops(sops_bin, args, key_file, cwd, check=True):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(cwd),
        "SOPS_DISABLE_VERSION_CHECK": "1",
        "SOPS_AGE_KEY_FILE": key_file,
    }
    proc = subprocess.run([sops_bin, *args], capture_output=True, env=env, cwd=cwd, timeout=60, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"sops {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
    return proc


def sops_encrypt(sops_bin, tmp_path, fmt, recipients, key_file, name=None, extra=()):
    fname, content = FORMATS[fmt]
    src = tmp_path / ("plain-" + (name or fname))
    src.write_bytes(content)
    proc = run_sops(sops_bin, ["encrypt", "--age", ",".join(recipients), "--input-type", fmt,
                               "--output-type", fmt, *extra, str(src)], key_file, tmp_path)
    dst = tmp_path / (name or fname)
    dst.write_bytes(proc.stdout)
    return str(dst)


def sops_decrypt(sops_bin, path, fmt, key_file, cwd):
    return run_sops(sops_bin, ["decrypt", "--input-type", fmt, "--output-type", fmt, path], key_file, cwd).stdout


def parse_plain(fmt, data):
    store = store_for(fmt)
    if fmt == "binary":
        return data
    docs, _unused = store.load(data)
    return docs[0]


def same(fmt, ours, theirs):
    if fmt == "binary":
        return ours == theirs
    return S.comparable(ours) == S.comparable(theirs)


def normalise(text: bytes) -> str:
    return _ARMOR.sub("<AGE>", text.decode("utf-8", "replace").replace("\\n", "\n"))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_sops_written_files_decrypt_with_engine(sops_bin, tmp_path, keys, fmt):
    path = sops_encrypt(sops_bin, tmp_path, fmt, keys["recipients"][:2], keys["files"][0])
    sf = S.load(path, fmt)
    assert sf.recipients == [keys["recipients"][:2]]
    ours = sf.decrypt([keys["ids"][1]])
    theirs = parse_plain(fmt, sops_decrypt(sops_bin, path, fmt, keys["files"][0], tmp_path))
    assert same(fmt, ours, theirs)
    if fmt == "yaml":
        assert [k.text for k in ours if isinstance(k, S.Comment)] == [" top comment", " closing comment"]
        assert ours["multi"] == "line1\nline2\n" and ours["uni"] == "héllo ✓ 日本"
        assert ours["nested"]["b"][1] == {"y": "z", "w": 2.25}
    if fmt == "binary":
        assert ours == BIN_DOC


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_engine_written_files_decrypt_with_sops(sops_bin, tmp_path, keys, fmt):
    fname, content = FORMATS[fmt]
    data = content if fmt == "binary" else parse_plain(fmt, content)
    path = str(tmp_path / fname)
    S.encrypt_file(path, data, [keys["recipients"][:2]], fmt=fmt)
    theirs = parse_plain(fmt, sops_decrypt(sops_bin, path, fmt, keys["files"][1], tmp_path))
    assert same(fmt, data, theirs)
    if fmt in ("yaml", "json"):
        # Re-encrypting the same plaintext with sops gives the same layout (ciphertexts aside).
        ref = sops_encrypt(sops_bin, tmp_path, fmt, keys["recipients"][:2], keys["files"][0], name="ref-" + fname)
        strip = re.compile(r"ENC\[AES256_GCM,[^\]]*\]|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
        assert strip.sub("X", normalise(open(path, "rb").read())) == strip.sub("X", normalise(open(ref, "rb").read()))


@pytest.mark.parametrize("fmt", ["yaml", "json", "dotenv", "ini"])
def test_set_unset_rotate_updatekeys_pass_sops(sops_bin, tmp_path, keys, fmt):
    path = sops_encrypt(sops_bin, tmp_path, fmt, keys["recipients"][:1], keys["files"][0])
    ids = [keys["ids"][0]]
    if fmt == "ini":
        kp, value = ["sec", "new"], "fresh ✓"
    elif fmt == "dotenv":
        kp, value = ["NEW"], "fresh ✓"
    elif fmt == "json":
        kp, value = ["new"], "fresh ✓"
    else:
        kp, value = ["nested", "added"], "fresh ✓"
    before = open(path, "rb").read()
    assert S.set_value(path, kp, value, ids) is True
    after = open(path, "rb").read()
    assert S.set_value(path, kp, value, ids) is False
    assert open(path, "rb").read() == after
    plain = parse_plain(fmt, sops_decrypt(sops_bin, path, fmt, keys["files"][0], tmp_path))
    node = plain
    for part in kp:
        node = node[part]
    assert node == value
    assert S.unset_value(path, kp, ids) is True
    plain = parse_plain(fmt, sops_decrypt(sops_bin, path, fmt, keys["files"][0], tmp_path))
    assert S.comparable(plain) == S.comparable(parse_plain(fmt, FORMATS[fmt][1])) or fmt == "yaml"
    changed, added, removed = S.updatekeys(path, [keys["recipients"][1:]], ids)
    assert changed and added == set(keys["recipients"][1:]) and removed == {keys["recipients"][0]}
    sops_decrypt(sops_bin, path, fmt, keys["files"][2], tmp_path)
    assert run_sops(sops_bin, ["decrypt", "--input-type", fmt, path], keys["files"][0], tmp_path,
                    check=False).returncode != 0
    S.rotate(path, [keys["ids"][1]])
    sops_decrypt(sops_bin, path, fmt, keys["files"][1], tmp_path)
    assert before != open(path, "rb").read()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_updatekeys_matches_sops(sops_bin, tmp_path, keys, fmt):
    fname = FORMATS[fmt][0]
    r = keys["recipients"]
    path = sops_encrypt(sops_bin, tmp_path, fmt, r[:2], keys["files"][0])
    work = tmp_path / "work"
    work.mkdir()
    (work / ".sops.yaml").write_text(f"creation_rules:\n  - age: {r[2]},{r[0]}\n")
    theirs_path = work / fname
    shutil.copy(path, theirs_path)
    original = open(path, "rb").read()
    run_sops(sops_bin, ["updatekeys", "-y", "--input-type", fmt, str(theirs_path)], keys["files"][0], work)
    changed, added, removed = S.updatekeys(path, [[r[2], r[0]]], [keys["ids"][0]])
    assert (changed, added, removed) == (True, {r[2]}, {r[1]})
    ours, theirs = open(path, "rb").read(), theirs_path.read_bytes()
    if fmt == "ini":
        # sops writes the [sops] section in Go map order (random); compare it as a set of lines.
        o = _ARMOR.sub("<AGE>", ours.decode()).split("[sops]")
        t = _ARMOR.sub("<AGE>", theirs.decode()).split("[sops]")
        assert o[0] == t[0]
        assert sorted(o[1].strip().splitlines()) == sorted(t[1].strip().splitlines())
    else:
        assert normalise(ours) == normalise(theirs)
    # Only the metadata block changed, values/mac/lastmodified kept.
    sf_new = S.load(path, fmt)
    assert sf_new.metadata.mac in original.decode("utf-8", "replace").replace("\\n", "\n")
    for ident in (keys["ids"][0], keys["ids"][2]):
        assert same(fmt, S.load(path, fmt).decrypt([ident]), S.load(str(theirs_path), fmt).decrypt([ident]))
    sops_decrypt(sops_bin, path, fmt, keys["files"][2], tmp_path)
    assert S.updatekeys(path, [[r[2], r[0]]], [keys["ids"][0]]) == (False, set(), set())


def test_updatekeys_keeps_bytes_outside_metadata(tmp_path, keys, sops_bin):
    path = sops_encrypt(sops_bin, tmp_path, "yaml", keys["recipients"][:1], keys["files"][0])
    before = open(path, "rb").read()
    S.updatekeys(path, [keys["recipients"]], [keys["ids"][0]])
    after = open(path, "rb").read()
    cut = before.index(b"\nsops:\n")
    assert after[:cut] == before[:cut]


@pytest.mark.parametrize("fmt", ["yaml", "json", "dotenv"])
def test_shamir_engine_to_sops(sops_bin, tmp_path, keys, fmt):
    fname, content = FORMATS[fmt]
    r = keys["recipients"]
    data = parse_plain(fmt, content)
    path = str(tmp_path / fname)
    S.encrypt_file(path, data, [[r[0]], [r[1], r[2]]], shamir_threshold=2, fmt=fmt)
    assert S.load(path).metadata.shamir_threshold == 2
    both = tmp_path / "k02.txt"
    both.write_text(keys["ids"][0] + "\n" + keys["ids"][2] + "\n")
    theirs = parse_plain(fmt, sops_decrypt(sops_bin, path, fmt, str(both), tmp_path))
    assert same(fmt, data, theirs)
    # One group alone is not enough.
    assert run_sops(sops_bin, ["decrypt", path], keys["files"][0], tmp_path, check=False).returncode != 0
    # updatekeys inside a group keeps the shares: sops still decrypts with the new member.
    S.updatekeys(path, [[r[0]], [r[1]]], [keys["ids"][0], keys["ids"][2]])
    k01 = tmp_path / "k01.txt"
    k01.write_text(keys["ids"][0] + "\n" + keys["ids"][1] + "\n")
    sops_decrypt(sops_bin, path, fmt, str(k01), tmp_path)


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_shamir_sops_to_engine(sops_bin, tmp_path, keys, fmt):
    r = keys["recipients"]
    work = tmp_path / "w"
    work.mkdir()
    (work / ".sops.yaml").write_text(
        f"creation_rules:\n  - shamir_threshold: 2\n    key_groups:\n      - age: [{r[0]}]\n"
        f"      - age: [{r[1]}, {r[2]}]\n"
    )
    fname, content = FORMATS[fmt]
    src = work / fname
    src.write_bytes(content)
    enc = run_sops(sops_bin, ["encrypt", str(src)], keys["files"][0], work).stdout
    src.write_bytes(enc)
    sf = S.load(str(src))
    assert sf.recipients == [[r[0]], [r[1], r[2]]]
    assert same(fmt, sf.decrypt([keys["ids"][0], keys["ids"][2]]), parse_plain(fmt, content))
    with pytest.raises(S.SopsNoIdentityError):
        sf.decrypt([keys["ids"][1]])
    # Our updatekeys on a sops shamir file equals sops' own (enc aside).
    theirs = work / ("t-" + fname)
    theirs.write_bytes(enc)
    (work / ".sops.yaml").write_text(
        f"creation_rules:\n  - shamir_threshold: 2\n    key_groups:\n      - age: [{r[0]}, {r[1]}]\n"
        f"      - age: [{r[2]}]\n"
    )
    run_sops(sops_bin, ["updatekeys", "-y", str(theirs)], keys["all"], work)
    S.updatekeys(str(src), [[r[0], r[1]], [r[2]]], [keys["ids"][0], keys["ids"][2]])
    assert normalise(src.read_bytes()) == normalise(theirs.read_bytes())
    for ident_pair in ((0, 2), (1, 2)):
        ids = [keys["ids"][i] for i in ident_pair]
        assert same(fmt, S.load(str(src)).decrypt(ids), parse_plain(fmt, content))
    sops_decrypt(sops_bin, str(src), fmt, keys["all"], work)


def test_rule_options_interop(sops_bin, tmp_path, keys):
    r = keys["recipients"]
    cases = [
        {"encrypted_regex": "^(secret|nested)$"},
        {"unencrypted_regex": "^pub"},
        {"encrypted_suffix": "_secret"},
        {"encrypted_regex": "^secret$", "mac_only_encrypted": True},
    ]
    data = {"secret": "s1", "pub": "visible", "pub_n": 3, "x_secret": "s2",
            "nested": {"deep": [1, "two"]}, "plain": True}
    for n, opts in enumerate(cases):
        path = str(tmp_path / f"r{n}.yaml")
        S.encrypt_file(path, data, [r[:1]], rule_options=opts)
        theirs = parse_plain("yaml", sops_decrypt(sops_bin, path, "yaml", keys["files"][0], tmp_path))
        assert same("yaml", data, theirs)
        # And the other way: sops writes with the same rule (from .sops.yaml), we read.
        work = tmp_path / f"w{n}"
        work.mkdir()
        rule = "".join(f"    {k}: {str(v).lower() if v is True else repr(v)}\n" for k, v in opts.items())
        (work / ".sops.yaml").write_text(f"creation_rules:\n  - age: {r[0]}\n{rule}")
        src = work / "p.yaml"
        src.write_bytes(S.load(path).store.emit_plain([data]))
        enc = run_sops(sops_bin, ["encrypt", str(src)], keys["files"][0], work).stdout
        src.write_bytes(enc)
        assert S.load(str(src)).metadata.rules.mac_only_encrypted == bool(opts.get("mac_only_encrypted"))
        assert same("yaml", S.load(str(src)).decrypt([keys["ids"][0]]), data)


# --------------------------------------------------------------------------- stanzas: checked and repaired
def test_stanza_check_accepts_what_sops_writes_and_updatekeys_repairs_a_corrupt_one(sops_bin, tmp_path, keys):
    from ansible_collections.nixfleet.sops.plugins.module_utils import sshkeys

    r = keys["recipients"]
    ssh = sshkeys.generate("root@h").public_line
    path = sops_encrypt(sops_bin, tmp_path, "yaml", [r[2], " ".join(ssh.split()[:2])], keys["files"][0],
                        name="ssh.yaml")
    assert S.load(path).metadata.stanza_problems() == []  # sops' own stanzas (Go age, SSH) are sound
    path = sops_encrypt(sops_bin, tmp_path, "yaml", r[:2], keys["files"][0])
    work = tmp_path / "g"
    work.mkdir()
    (work / ".sops.yaml").write_text(
        f"creation_rules:\n  - shamir_threshold: 2\n    key_groups:\n      - age: [{r[0]}]\n      - age: [{r[1]}]\n")
    (work / "s.yaml").write_text("a: b\n")
    (work / "s.yaml").write_bytes(run_sops(sops_bin, ["encrypt", str(work / "s.yaml")], keys["files"][0],
                                           work).stdout)
    assert S.load(str(work / "s.yaml")).metadata.stanza_problems() == []  # 33-byte shares too
    # r[1]'s stanza loses its payload's last bytes: sops cannot open it with r[1] alone any more.
    text = open(path).read()
    start = [m.start() for m in re.finditer("BEGIN AGE ENCRYPTED FILE", text)][1]
    end = text.index("-----END", start)
    block = text[start:end]
    last = block.rstrip().split("\n")[-1]
    open(path, "w").write(text[:start] + block.replace(last, last.strip()[:-8].rjust(len(last)), 1) + text[end:])
    problems = S.load(path).metadata.stanza_problems()
    assert [(p.group, p.recipient) for p in problems] == [(0, r[1])]
    assert run_sops(sops_bin, ["decrypt", path], keys["files"][1], tmp_path, check=False).returncode != 0
    # Same recipients: the broken stanza alone makes updatekeys rewrite, and sops opens it again.
    assert S.updatekeys(path, S.load(path).recipients, [keys["ids"][0]]) == (True, set(), set())
    sops_decrypt(sops_bin, path, "yaml", keys["files"][1], tmp_path)
    assert S.load(path).metadata.stanza_problems() == []


# --------------------------------------------------------------------------- duplicate keys, as sops treats them
def test_duplicate_keys_refused_where_sops_refuses_and_named_where_sops_keeps_them(sops_bin, tmp_path, keys):
    r, key_file = keys["recipients"][0], keys["files"][0]
    # YAML: sops (yaml.v3) refuses a repeated key, in a plain file and in an encrypted one; so do we.
    plain = tmp_path / "dup.yaml"
    plain.write_text("a: 1\nb: 2\na: 3\n")
    proc = run_sops(sops_bin, ["encrypt", "--age", r, str(plain)], key_file, tmp_path, check=False)
    assert proc.returncode != 0 and b'line 3: mapping key "a" already defined at line 1' in proc.stderr
    plain.write_text("a: 1\nb: 2\n")
    enc = run_sops(sops_bin, ["encrypt", "--age", r, str(plain)], key_file, tmp_path).stdout.decode()
    first = enc.split("\n")[0]
    dup = tmp_path / "enc-dup.yaml"
    dup.write_text(enc.replace("\nsops:", "\n" + first + "\nsops:", 1))
    proc = run_sops(sops_bin, ["decrypt", str(dup)], key_file, tmp_path, check=False)
    assert proc.returncode != 0 and b'line 3: mapping key "a" already defined at line 1' in proc.stderr
    with pytest.raises(S.SopsFormatError, match='line 3: mapping key "a" already defined at line 1'):
        S.load(str(dup)).decrypt([keys["ids"][0]])
    # JSON and dotenv: sops keeps both entries (and programs reading the result see one); we refuse,
    # naming the line, rather than a misleading MAC error.
    for fmt, text, where in (("json", '{"a": "1",\n "b": "2",\n "a": "3"}\n', 'line 4: duplicate key "a"'),
                             ("dotenv", "A=1\nB=2\nA=3\n", "line 3: duplicate key 'A'")):
        src = tmp_path / f"dup-src.{'env' if fmt == 'dotenv' else fmt}"
        src.write_text(text)
        enc = run_sops(sops_bin, ["encrypt", "--age", r, str(src)], key_file, tmp_path).stdout
        out = tmp_path / f"dup-enc.{'env' if fmt == 'dotenv' else fmt}"
        out.write_bytes(enc)
        assert sops_decrypt(sops_bin, str(out), fmt, key_file, tmp_path).count(b"3") == 1  # both kept
        with pytest.raises(S.SopsFormatError, match=re.escape(where)):
            S.load(str(out)).decrypt([keys["ids"][0]])
    # INI: a repeated section is kept by sops (we refuse); a repeated key is merged, last value first
    # place, by sops and by us alike.
    src = tmp_path / "dup-src.ini"
    src.write_text("[s]\na = 1\nb = 2\na = 3\n[t]\nc = 4\n[s]\nd = 5\n")
    out = tmp_path / "dup-enc.ini"
    out.write_bytes(run_sops(sops_bin, ["encrypt", "--age", r, str(src)], key_file, tmp_path).stdout)
    assert sops_decrypt(sops_bin, str(out), "ini", key_file, tmp_path).count(b"[s]") == 2
    with pytest.raises(S.SopsFormatError, match=re.escape("section [s] appears again (first at line 1)")):
        S.load(str(out)).decrypt([keys["ids"][0]])
    src.write_text("[s]\na = 1\nb = 2\na = 3\n")
    out.write_bytes(run_sops(sops_bin, ["encrypt", "--age", r, str(src)], key_file, tmp_path).stdout)
    theirs = parse_plain("ini", sops_decrypt(sops_bin, str(out), "ini", key_file, tmp_path))
    assert S.load(str(out)).decrypt([keys["ids"][0]]) == theirs == {"s": {"a": "3", "b": "2"}}


# --------------------------------------------------------------------------- random documents through sops
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x85\u2028\u2029\ufeff"),
                max_size=15)
_keys = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x24F), min_size=1, max_size=8).filter(
    lambda k: k != "sops")
_scalars = st.one_of(_text, st.integers(-(2**63), 2**63 - 1), st.booleans(), st.none(),
                     st.floats(allow_nan=False, allow_infinity=False))
_docs = st.dictionaries(
    _keys, st.recursive(_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(_keys, c, max_size=3),
                        max_leaves=10), max_size=5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_docs, encrypt=st.booleans())
def test_random_yaml_documents_pass_sops(sops_bin, tmp_path_factory, doc, encrypt):
    """Unencrypted values exercise every scalar style: sops must parse them to what we hashed."""
    tmp = tmp_path_factory.mktemp("h")
    ident = generate_identity()
    key_file = tmp / "k.txt"
    key_file.write_text(ident + "\n")
    path = str(tmp / "r.yaml")
    opts = {} if encrypt else {"unencrypted_regex": "."}
    S.encrypt_file(path, doc, [[recipient_from_identity(ident)]], rule_options=opts)
    out = run_sops(sops_bin, ["decrypt", "--output-type", "json", path], str(key_file), tmp)
    import json

    theirs = json.loads(out.stdout)

    def norm(v):
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        return v

    assert norm(theirs) == norm(doc)


def _has_item_needing_indicator(v) -> bool:
    if isinstance(v, dict):
        return any(_has_item_needing_indicator(x) for x in v.values())
    if isinstance(v, list):
        return any((isinstance(x, str) and "\n" in x and x[:1] in " \n") or _has_item_needing_indicator(x)
                   for x in v)
    return False


def test_multiline_list_items_with_a_leading_break_are_written_so_sops_reads_them(sops_bin, tmp_path, keys):
    """Where yaml.v3 (so sops) writes an unreadable '- |4-', we write the '- |2-' it can read."""
    doc = {"0": ["\n0", " a\nb"], "m": [{"c": ["\nx\n"]}], "v": "\nkept"}
    path = str(tmp_path / "lead.yaml")
    S.encrypt_file(path, doc, [keys["recipients"][:1]], rule_options={"unencrypted_regex": "."})
    assert b"- |2-\n" in open(path, "rb").read()
    out = run_sops(sops_bin, ["decrypt", "--output-type", "json", path], keys["files"][0], tmp_path)
    import json

    assert json.loads(out.stdout) == doc
    assert S.load(path).decrypt([keys["ids"][0]]) == doc


def _num(v):
    if isinstance(v, dict):
        return {k: _num(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_num(x) for x in v]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return ("n", float(v))
    return v


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_docs, encrypt=st.booleans())
def test_random_yaml_documents_from_sops(sops_bin, tmp_path_factory, doc, encrypt):
    """sops encrypts random plaintext (with or without encryption of values); we read the same data."""
    # yaml.v3 writes a multi-line sequence item that starts with a space or line break as '- |4-' with
    # its text 2 columns past the dash, which neither it nor sops can read back: sops cannot round-trip it.
    assume(encrypt or not _has_item_needing_indicator(doc))
    tmp = tmp_path_factory.mktemp("h")
    ident = generate_identity()
    key_file = tmp / "k.txt"
    key_file.write_text(ident + "\n")
    src = tmp / "p.yaml"
    src.write_bytes(store_for("yaml").emit_plain([doc]))
    flags = [] if encrypt else ["--unencrypted-regex", "."]
    enc = run_sops(sops_bin, ["encrypt", "--age", recipient_from_identity(ident), *flags, str(src)],
                   str(key_file), tmp).stdout
    dst = tmp / "e.yaml"
    dst.write_bytes(enc)
    # yaml.v3 writes the float 0.0 as '0' (and sops reads it back as an int): compare numbers by value.
    assert _num(S.load(str(dst)).decrypt([ident])) == _num(doc)
    # And our re-emission of sops' file is sops' own bytes (set of an unchanged value writes nothing new).
    sf = S.load(str(dst))
    from ansible_collections.nixfleet.sops.plugins.module_utils.sops import cipher

    key = sf.data_key([ident])
    stash: dict = {}
    docs = cipher.decrypt_tree(sf.encrypted_documents, key, sf.metadata, False, stash, None)
    enc_docs, _unused = cipher.encrypt_tree(docs, key, sf.metadata.rules, False, stash, None)
    ours = sf.store.emit(enc_docs, sf.metadata.to_mapping())
    # Equal list items share their additional data, so sops' IV stash (and ours) reuses one IV
    # for them on re-encryption: compare ciphertexts only through the layout.
    values = re.compile(rb"ENC\[AES256_GCM,data:[^\]]*,type:(\w+)\]")
    assert values.sub(rb"ENC[\1]", ours) == values.sub(rb"ENC[\1]", enc)


# --------------------------------------------------------------------------- age beside PGP, with the real sops and gpg
@pytest.fixture(scope="module")
def gpg_home():
    """A throwaway GnuPG home with one ed25519/cv25519 key (no passphrase); (home, fingerprint)."""
    if shutil.which("gpg") is None:
        pytest.fail("gpg is not installed; run `make test` (it installs gnupg)")
    import tempfile

    home = tempfile.mkdtemp(prefix="gpg-")  # short: gpg-agent's socket path has a length limit
    env = {**os.environ, "GNUPGHOME": home}
    gen = ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run([*gen, "--quick-gen-key", "nixfleet test <test@example.org>", "ed25519", "cert,sign", "never"],
                   env=env, check=True, capture_output=True, timeout=60)
    out = subprocess.run(["gpg", "--batch", "--list-keys", "--with-colons"], env=env, check=True,
                         capture_output=True, text=True).stdout
    fp = next((line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")), None)
    assert fp, out
    subprocess.run([*gen, "--quick-add-key", fp, "cv25519", "encr", "never"], env=env, check=True,
                   capture_output=True, timeout=60)
    yield home, fp
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, capture_output=True, timeout=30, check=False)
    shutil.rmtree(home, ignore_errors=True)


def run_sops_gpg(sops_bin, args, key_file, cwd, gnupghome, check=True):
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(cwd), "SOPS_DISABLE_VERSION_CHECK": "1",
           "SOPS_AGE_KEY_FILE": key_file, "GNUPGHOME": gnupghome}
    proc = subprocess.run([sops_bin, *args], capture_output=True, env=env, cwd=cwd, timeout=120, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"sops {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
    return proc


_PGP_ARMOR = re.compile(r"-----BEGIN PGP MESSAGE-----.*?-----END PGP MESSAGE-----", re.S)
_CREATED = re.compile(r'(created_at["\s:=]+)"?\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"?')


def normalise_all(text: bytes) -> str:
    return _CREATED.sub(r"\1<T>", _PGP_ARMOR.sub("<PGP>", normalise(text)))


@pytest.mark.parametrize("fmt", ["yaml", "json", "dotenv", "ini"])
def test_age_and_pgp_in_one_group_rekeyed_by_us_still_open_with_either(sops_bin, tmp_path, keys, gpg_home, fmt):
    home, fp = gpg_home
    r = keys["recipients"]
    fname, content = FORMATS[fmt]
    src = tmp_path / ("plain-" + fname)
    src.write_bytes(content)
    enc = run_sops_gpg(sops_bin, ["encrypt", "--age", r[0], "--pgp", fp, "--input-type", fmt, "--output-type", fmt,
                                  str(src)], keys["files"][0], tmp_path, home).stdout
    path = tmp_path / fname
    path.write_bytes(enc)
    sf = S.load(str(path))
    assert sf.recipients == [[r[0]]] and sf.metadata.foreign_keys == [{"pgp": [fp]}]
    plain = sf.decrypt([keys["ids"][0]])
    # The rule now names a second age recipient beside the same age and PGP keys.
    assert S.updatekeys(str(path), [[r[0], r[1]]], [keys["ids"][0]], foreign=[{"pgp": [fp]}]) == (
        True, {r[1]}, set())
    empty_home = tmp_path / "no-gpg"
    empty_home.mkdir(mode=0o700, exist_ok=True)
    # The PGP key alone (the age key file holds an unrelated identity) ...
    by_pgp = run_sops_gpg(sops_bin, ["decrypt", "--input-type", fmt, "--output-type", fmt, str(path)],
                          keys["files"][2], tmp_path, home).stdout
    # ... and the new age key alone (no GnuPG key at all) both open it, to the same plaintext.
    by_age = run_sops_gpg(sops_bin, ["decrypt", "--input-type", fmt, "--output-type", fmt, str(path)],
                          keys["files"][1], tmp_path, str(empty_home)).stdout
    assert by_pgp == by_age
    assert same(fmt, parse_plain(fmt, by_age), plain)
    assert run_sops_gpg(sops_bin, ["decrypt", "--input-type", fmt, str(path)], keys["files"][2], tmp_path,
                        str(empty_home), check=False).returncode != 0


def test_pgp_kept_or_dropped_like_sops_updatekeys(sops_bin, tmp_path, keys, gpg_home):
    home, fp = gpg_home
    r = keys["recipients"]
    src = tmp_path / "plain.yaml"
    src.write_bytes(FORMATS["yaml"][1])
    enc = run_sops_gpg(sops_bin, ["encrypt", "--age", r[0], "--pgp", fp, str(src)], keys["files"][0], tmp_path,
                       home).stdout
    for n, (age_rule, pgp_rule) in enumerate([([r[0], r[1]], [fp]), ([r[1]], [])]):
        work = tmp_path / f"w{n}"
        work.mkdir()
        ours, theirs = work / "ours.yaml", work / "theirs.yaml"
        ours.write_bytes(enc)
        theirs.write_bytes(enc)
        rule = f"creation_rules:\n  - age: {','.join(age_rule)}\n" + (f"    pgp: {pgp_rule[0]}\n" if pgp_rule else "")
        (work / ".sops.yaml").write_text(rule)
        run_sops_gpg(sops_bin, ["updatekeys", "-y", str(theirs)], keys["files"][0], work, home)
        changed, added, removed = S.updatekeys(str(ours), [age_rule], [keys["ids"][0]], foreign=[{"pgp": pgp_rule}])
        assert changed and added == set(age_rule) - {r[0]}
        assert removed == (set() if pgp_rule else {r[0], "pgp:" + fp})
        # Our file is sops' own, the wrapped keys and the PGP entry's creation time aside.
        assert normalise_all(ours.read_bytes()) == normalise_all(theirs.read_bytes())
        no_pgp = run_sops_gpg(sops_bin, ["decrypt", str(ours)], keys["files"][2], work, home, check=False)
        assert (no_pgp.returncode == 0) == bool(pgp_rule)
        run_sops_gpg(sops_bin, ["decrypt", str(ours)], keys["files"][1], work, str(work))
    # A PGP key the file does not have: only sops can add it.
    other = tmp_path / "other.yaml"
    other.write_bytes(enc)
    with pytest.raises(S.SopsError, match="sops updatekeys"):
        S.updatekeys(str(other), [[r[0]]], [keys["ids"][0]], foreign=[{"pgp": [fp, "0" * 40]}])
    with pytest.raises(S.SopsError, match="sops rotate"):
        S.rotate(str(other), [keys["ids"][0]])
    assert other.read_bytes() == enc
