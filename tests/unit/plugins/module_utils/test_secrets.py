"""secrets.py: key paths, set/unset with create-for-rule, key-path diffs, reading values."""

from __future__ import annotations

import os

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, secrets
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfigError

from tests.lib.secrets_repo import make_repo, sops_decrypt

SECRET = "AGE-SECRET-KEY-1NOTAREALKEYBUTLOOKSLIKEONEXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"


@pytest.fixture
def repo(tmp_path):
    return make_repo(str(tmp_path), hosts=("alpha", "beta"), git=False)


def state(path: str) -> tuple[bytes, int]:
    return open(path, "rb").read(), os.stat(path).st_mtime_ns


def ids(repo, *anchors: str) -> list[str]:
    return [repo.identities[a] for a in anchors or ("admin",)]


# --------------------------------------------------------------------------- key paths
@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("keys/age", ["keys", "age"]),
        ("password", ["password"]),
        (["deploy-keys", "nix-config"], ["deploy-keys", "nix-config"]),
        (["a/b", "c"], ["a/b", "c"]),
        (["hosts", 0, "name"], ["hosts", 0, "name"]),
        ('["keys"]["age"]', ["keys", "age"]),
        ('["hosts"][0]["na\\"me"]', ["hosts", 0, 'na"me']),
    ],
)
def test_parse_key_path_forms(key, expected):
    assert secrets.parse_key_path(key, "f.yaml") == expected


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ([], "empty"),
        ("", "empty"),
        ("a//b", "empty key"),
        ("/a", "empty key"),
        ([0, "a"], "must start with a key"),
        ('[0]["a"]', "must start with a key"),
        (["sops", "mac"], "'sops'"),
        (["a", True], "bool"),
        (["a", 1.5], "float"),
        (5, "expected a list or a string"),
        ('["a"]x', "sops syntax"),
    ],
)
def test_parse_key_path_rejects(key, fragment):
    with pytest.raises(engine.SopsKeyPathError) as err:
        secrets.parse_key_path(key, "sops/x.yaml")
    assert fragment in str(err.value)
    assert str(err.value).startswith("sops/x.yaml: ")
    assert "\n" not in str(err.value)


def test_display_key_path():
    assert secrets.display_key_path(["keys", "age"]) == "keys/age"
    assert secrets.display_key_path(["hosts", 2, "name"]) == "hosts/[2]/name"


def test_find_config_searches_upward(tmp_path):
    (tmp_path / ".sops.yaml").write_text("creation_rules: []\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert secrets.find_config(str(deep)) == str(tmp_path / ".sops.yaml")
    (tmp_path / "a" / ".sops.yaml").write_text("creation_rules: []\n")
    assert secrets.find_config(str(deep)) == str(tmp_path / "a" / ".sops.yaml")


def test_read_value_file(tmp_path):
    p = tmp_path / "key.txt"
    p.write_bytes(b"# created\n" + SECRET.encode() + b"\n")
    assert secrets.read_value_file(str(p)) == "# created\n" + SECRET + "\n"
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(engine.SopsError, match="not UTF-8"):
        secrets.read_value_file(str(p))
    with pytest.raises(engine.SopsError, match="cannot read value_file"):
        secrets.read_value_file(str(tmp_path / "missing"))


# --------------------------------------------------------------------------- diffs
def test_changed_key_paths():
    before = {"a": 1, "b": {"c": "x", "d": "y"}, "l": [1, 2], "gone": {"deep": 1}}
    after = {"a": 1, "b": {"c": "z", "e": "new"}, "l": [1, 3, 4], "fresh": "v"}
    assert secrets.changed_key_paths(before, after) == [
        (["b", "c"], "changed"),
        (["b", "d"], "removed"),
        (["b", "e"], "added"),
        (["l", 1], "changed"),
        (["l", 2], "added"),
        (["gone", "deep"], "removed"),
        (["fresh"], "added"),
    ]
    assert secrets.changed_key_paths(before, dict(before)) == []
    # bool and int are different values for sops (type:bool vs type:int)
    assert secrets.changed_key_paths({"x": 1}, {"x": True}) == [(["x"], "changed")]
    assert secrets.changed_key_paths({"x": "s"}, {"x": {"y": 1}}) == [(["x"], "changed")]
    assert secrets.changed_key_paths({}, {"x": {"y": [1, {"z": 2}], "e": {}}}) == [
        (["x", "y", 0], "added"), (["x", "y", 1, "z"], "added"), (["x", "e"], "added")]


# --------------------------------------------------------------------------- set / unset on an existing file
def test_set_new_key_then_idempotent(repo):
    path = repo.file("sops/alpha.yaml")
    before = state(path)
    res = secrets.ensure_secret(path, ["deploy-keys", "nix-config"], SECRET, identities=ids(repo), dry_run=True)
    assert res.changed and not res.created and not res.existed
    assert res.changes == [(["deploy-keys", "nix-config"], "added")]
    assert state(path) == before  # dry run writes nothing

    res = secrets.ensure_secret(path, ["deploy-keys", "nix-config"], SECRET, identities=ids(repo))
    assert res.changed
    assert secrets.read_secret(path, ["deploy-keys", "nix-config"], ids(repo, "alpha")) == SECRET
    after = state(path)
    assert after != before

    for dry in (True, False):
        res = secrets.ensure_secret(path, ["deploy-keys", "nix-config"], SECRET, identities=ids(repo), dry_run=dry)
        assert not res.changed and res.existed and res.changes == []
        assert state(path) == after


def test_change_existing_value_keeps_others(repo, sops_bin):
    path = repo.file("sops/alpha.yaml")
    res = secrets.ensure_secret(path, ["keys", "age"], "rotated", identities=ids(repo))
    assert res.changed and res.existed
    assert res.changes == [(["keys", "age"], "changed")]
    d = res.diff()
    assert d["before"] == "keys/age: (set)\n" and d["after"] == "keys/age: (changed)\n"
    out = sops_decrypt(sops_bin, path, repo.keyfile("alpha"))
    assert out.returncode == 0, out.stderr
    assert "age: rotated" in out.stdout and "host: alpha" in out.stdout


@pytest.mark.parametrize("value", [42, True, 1.5, {"user": "ta", "uid": 1000}, ["a", 2, False], "multi\nline\n"])
def test_value_types_roundtrip(repo, value):
    path = repo.file("sops/beta.yaml")
    assert secrets.ensure_secret(path, ["v"], value, identities=ids(repo)).changed
    assert secrets.read_secret(path, ["v"], ids(repo)) == value
    assert not secrets.ensure_secret(path, ["v"], value, identities=ids(repo)).changed


def test_dict_value_diff_names_leaves(repo):
    path = repo.file("sops/beta.yaml")
    secrets.ensure_secret(path, ["wifi"], {"home": "pw1", "work": "pw2"}, identities=ids(repo))
    res = secrets.ensure_secret(path, ["wifi"], {"home": "pw1", "work": "pw3", "cafe": "pw4"},
                                identities=ids(repo))
    assert res.changes == [(["wifi", "work"], "changed"), (["wifi", "cafe"], "added")]
    d = res.diff()
    assert d["before"] == "wifi/work: (set)\n"
    assert d["after"] == "wifi/work: (changed)\nwifi/cafe: (added)\n"
    assert not any(v in str(d) for v in ("pw1", "pw3", "pw4"))


def test_unset(repo):
    path = repo.file("sops/alpha.yaml")
    before = state(path)
    res = secrets.ensure_secret(path, ["keys", "age"], state="absent", identities=ids(repo), dry_run=True)
    assert res.changed and state(path) == before
    assert res.diff()["after"] == "keys/age: (removed)\n"
    res = secrets.ensure_secret(path, ["keys", "age"], state="absent", identities=ids(repo))
    assert res.changed
    assert secrets.read_secret(path, None, ids(repo)) == {"host": "alpha", "i": 0, "keys": {}}
    after = state(path)
    for key in (["keys", "age"], ["nothing"], ["host", "x"], ["keys", 3]):
        res = secrets.ensure_secret(path, key, state="absent", identities=ids(repo))
        assert not res.changed
    assert state(path) == after


def test_absent_on_missing_file_is_not_a_change(repo):
    res = secrets.ensure_secret(repo.file("sops/nope.yaml"), ["a"], state="absent")
    assert not res.changed and not os.path.exists(repo.file("sops/nope.yaml"))


# --------------------------------------------------------------------------- create for the rule
def test_create_for_rule(repo, sops_bin):
    path = repo.file("sops/alpha-1.yaml")
    res = secrets.ensure_secret(path, ["keys", "age"], SECRET, dry_run=True)
    assert res.changed and res.created and not os.path.exists(path)
    assert res.diff() == {"before": "", "after": "keys/age: (added)\n",
                          "before_header": f"{path} (absent)", "after_header": path}
    res = secrets.ensure_secret(path, "keys/age".split("/"), SECRET)
    assert res.created and res.changed
    sf = engine.load(path)
    assert sf.recipients == [[repo.recipient("admin"), repo.recipient("alpha")]]
    for anchor in ("admin", "alpha"):
        out = sops_decrypt(sops_bin, path, repo.keyfile(anchor))
        assert out.returncode == 0, out.stderr
        assert SECRET in out.stdout
    out = sops_decrypt(sops_bin, path, repo.keyfile("beta"))
    assert out.returncode != 0
    after = state(path)
    res = secrets.ensure_secret(path, ["keys", "age"], SECRET, identities=ids(repo))
    assert not res.changed and not res.created and state(path) == after


def test_create_honours_key_groups_shamir_and_options(tmp_path):
    a, b, c = (age.generate_identity() for _unused in range(3))
    ra, rb, rc = (age.recipient_from_identity(i) for i in (a, b, c))
    (tmp_path / ".sops.yaml").write_text(
        "creation_rules:\n"
        "  - path_regex: secrets/.*\\.yaml$\n"
        "    encrypted_regex: ^(keys|password)$\n"
        "    shamir_threshold: 2\n"
        "    key_groups:\n"
        f"      - age: [{ra}]\n"
        f"      - age: [{rb}]\n"
        f"      - age: [{rc}]\n"
    )
    (tmp_path / "secrets").mkdir()
    path = str(tmp_path / "secrets" / "x.yaml")
    assert secrets.ensure_secret(path, ["keys", "age"], SECRET).created
    sf = engine.load(path)
    assert sf.recipients == [[ra], [rb], [rc]]
    assert sf.metadata.shamir_threshold == 2
    assert sf.metadata.rules.encrypted_regex == "^(keys|password)$"
    assert secrets.read_secret(path, ["keys", "age"], [a, c]) == SECRET
    with pytest.raises(engine.SopsNoIdentityError):
        secrets.read_secret(path, ["keys", "age"], [b])
    # encrypted_regex: a key outside it is stored in clear
    secrets.ensure_secret(path, ["hostname"], "griefling", identities=[a, b])
    assert b"hostname: griefling" in open(path, "rb").read()
    assert SECRET.encode() not in open(path, "rb").read()


def test_create_uses_explicit_config(tmp_path, repo):
    other = tmp_path / "elsewhere"
    (other / "sops").mkdir(parents=True)
    (other / "secrets").mkdir()
    path = str(other / "sops" / "alpha.yaml")
    with pytest.raises(SopsConfigError, match="no .sops.yaml was found"):
        secrets.ensure_secret(path, ["a"], "v")
    assert secrets.ensure_secret(path, ["a"], "v", config=repo.file(".sops.yaml")).created
    assert engine.load(path).recipients == [[repo.recipient("admin"), repo.recipient("alpha")]]
    with pytest.raises(SopsConfigError, match="no creation rule matches"):
        secrets.ensure_secret(str(other / "secrets" / "alpha.yaml"), ["a"], "v", config=repo.file(".sops.yaml"))


def test_create_errors_name_the_file_and_write_nothing(repo):
    path = repo.file("sops/unknown.yaml")
    with pytest.raises(SopsConfigError) as err:
        secrets.ensure_secret(path, ["a"], "v")
    msg = str(err.value)
    assert msg.startswith(path + ": cannot create it:") and "no creation rule matches" in msg
    assert "sops/unknown.yaml" in msg and "\n" not in msg
    assert not os.path.exists(path)

    with pytest.raises(engine.SopsError, match="create=true"):
        secrets.ensure_secret(repo.file("sops/alpha-1.yaml"), ["a"], "v", create=False)
    with pytest.raises(engine.SopsError, match="no extension"):
        secrets.ensure_secret(repo.file("sops/alpha-1"), ["a"], "v")
    with pytest.raises(engine.SopsError, match="does not exist"):
        secrets.ensure_secret(repo.file("nodir/alpha.yaml"), ["a"], "v")
    assert sorted(os.listdir(repo.file("sops"))) == ["alpha.yaml", "beta.yaml", "shared.yaml"]


def test_create_refuses_rule_with_other_key_types(tmp_path):
    r = age.recipient_from_identity(age.generate_identity())
    (tmp_path / ".sops.yaml").write_text(
        f"creation_rules:\n  - path_regex: .*\n    pgp: 85D77543B3D624B63CEA9E6DBC17301B491B3F21\n    age: {r}\n")
    with pytest.raises(engine.SopsError, match="pgp"):
        secrets.ensure_secret(str(tmp_path / "x.yaml"), ["a"], "v")
    assert not os.path.exists(tmp_path / "x.yaml")


# --------------------------------------------------------------------------- errors on existing files
def test_no_identity_leaves_file(repo):
    path = repo.file("sops/alpha.yaml")
    before = state(path)
    with pytest.raises(engine.SopsNoIdentityError) as err:
        secrets.ensure_secret(path, ["keys", "age"], "x", identities=ids(repo, "beta"))
    assert path in str(err.value)
    assert state(path) == before


def test_not_sops_file(repo):
    path = repo.file("plain.yaml")
    with open(path, "w") as fh:
        fh.write("a: b\n")
    with pytest.raises(engine.SopsNotEncryptedError):
        secrets.ensure_secret(path, ["a"], "c", identities=ids(repo))
    assert open(path).read() == "a: b\n"


# --------------------------------------------------------------------------- read_secret
def test_read_secret(repo):
    path = repo.file("sops/shared.yaml")
    assert secrets.read_secret(path, None, ids(repo)) == {"shared": {"wifi": "hunter2", "n": 1}}
    assert secrets.read_secret(path, ["shared", "n"], ids(repo, "beta")) == 1
    with pytest.raises(engine.SopsKeyPathError) as err:
        secrets.read_secret(path, ["shared", "wifi", "deeper"], ids(repo))
    assert str(err.value) == f"{path}: no value at key path 'shared/wifi/deeper'"
    assert "hunter2" not in str(err.value)


def test_read_secret_binary(tmp_path):
    i = age.generate_identity()
    path = str(tmp_path / "blob.txt")
    engine.encrypt_file(path, b"line one\n", [[age.recipient_from_identity(i)]])
    assert secrets.read_secret(path, None, [i]) == "line one\n"
    with pytest.raises(engine.SopsKeyPathError, match="binary"):
        secrets.read_secret(path, ["a"], [i])
    with pytest.raises(engine.SopsError, match="binary"):
        secrets.ensure_secret(path, ["a"], "v", identities=[i])
