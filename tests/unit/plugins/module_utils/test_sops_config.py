"""Unit tests of the .sops.yaml model: surgical edits, rule matching, validation."""

from __future__ import annotations

import difflib
import glob
import os
import re
import shutil

import pyrage
import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import (
    SopsConfig,
    SopsConfigError,
    check_anchor_name,
    compile_path_regex,
    relative_to_config,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "fixtures", "sops_config")
ALL_FIXTURES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(FIXTURES, "*.yaml")))

A1 = "age1feepkzl0cs99tgvkp8j5lky636fap8p6hphadl772spezuwfs3zqjpl26a"
A2 = "age1248d8ylgkxqd7sctl52dtdqxrt95t93a5qkf5xu6vfdf8d6y8yssrf8l2h"
H1 = "age1qrwzpep8lgyxxum7wj9px6uqslxqy38j5c077673xlphy2df7u6q27getx"
H2 = "age147amw4am4zn2mqkew0g2al0jfn9xj434k9pl27lhfa98x2tq63sq2jl220"
H3 = "age1gq59a9ay7nw5we5u5d0lgur0tzm5q84m3utnezvtgxq3nm5ld9nq3xntlj"

# fixture -> (group for hosts, admin anchor, shared rule path_regex)
ADD_HOST = {
    "mapping_groups.yaml": ("hosts", "ta", r"sops/shared\.yaml$"),
    "anchored_lists.yaml": ("hosts", "alice", r"hosts/common/secrets.ya?ml$"),
    "flat_list.yaml": (None, "alice", r"secrets/common\.yaml$"),
    "csv_strings.yaml": (None, "admin", "^secrets/builder/"),
    "pgp_beside_age.yaml": ("hosts", "alice", r"secrets/shared\.yaml$"),
    "shamir_groups.yaml": ("hosts", "alice", r"secrets/shared\.yaml$"),
    "heavy_comments.yaml": ("hosts", "ta", r"sops/shared\.yaml$"),
    "single_alias.yaml": ("hosts", "admin", r"secrets/host\.yaml$"),
}


def new_recipient() -> str:
    return str(pyrage.x25519.Identity.generate().to_public())


def read(name: str) -> str:
    with open(os.path.join(FIXTURES, name), encoding="utf-8", newline="") as fh:
        return fh.read()


@pytest.fixture
def cfg_copy(tmp_path):
    def make(name: str) -> str:
        dst = tmp_path / ".sops.yaml"
        shutil.copy(os.path.join(FIXTURES, name), dst)
        return str(dst)

    return make


def corrupt(recipient: str) -> str:
    """One character changed: still bech32 characters, checksum wrong."""
    i = len(recipient) // 2
    repl = "q" if recipient[i] != "q" else "p"
    return recipient[:i] + repl + recipient[i + 1 :]


# ------------------------------------------------------------------ round trip
def test_corpus_covers_every_layout():
    layouts = {SopsConfig(read(f), f).layout for f in ALL_FIXTURES}
    assert {"mapping", "anchored_list", "flat"} <= layouts
    assert set(ADD_HOST) == set(ALL_FIXTURES)


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_roundtrip_without_edits_is_byte_identical(name, tmp_path):
    src = os.path.join(FIXTURES, name)
    config = SopsConfig.load(src)
    assert not config.changed
    out = tmp_path / "out.yaml"
    assert config.save(str(out))
    assert out.read_bytes() == open(src, "rb").read()
    config2 = SopsConfig.load(str(out))
    assert config2.save() is False  # nothing changed: nothing written


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_no_op_operations_leave_text_identical(name):
    config = SopsConfig(read(name), name)
    for a in config.anchors().values():
        assert config.ensure_recipient(a.name, a.recipient, a.group) is False
    for rule in config.rules:
        for anchor in rule.anchors:
            assert config.ensure_rule_member(rule.path_regex, anchor) is False
    assert config.text == read(name)


# ------------------------------------------------------------------ model
def test_mapping_layout_model():
    config = SopsConfig(read("mapping_groups.yaml"), "mapping_groups.yaml")
    assert config.layout == "mapping"
    assert config.groups() == {"hosts": ["griefling", "ghost"], "users": ["ta", "ta_griefling"]}
    assert config.anchors()["ghost"].recipient == H2
    assert config.anchors()["ghost"].group == "hosts"
    shared = config.find_rule(r"sops/shared\.yaml$")
    assert shared.uses_key_groups
    assert shared.anchors == ["ta", "griefling", "ghost"]
    assert shared.recipients == [A1, H1, H2]


def test_anchored_list_layout_model():
    config = SopsConfig(read("anchored_lists.yaml"), "x")
    assert config.layout == "anchored_list"
    assert config.groups() == {"users": ["alice", "bob"], "hosts": ["atlas", "merope"]}
    assert config.anchors()["atlas"].group == "hosts"


def test_flat_layout_model():
    config = SopsConfig(read("flat_list.yaml"), "x")
    assert config.layout == "flat"
    assert set(config.anchors()) == {"alice", "bob", "web", "db"}
    assert config.rules[-1].path_regex is None


def test_csv_strings_are_split_and_stripped():
    config = SopsConfig(read("csv_strings.yaml"), "x")
    assert [r.recipients for r in config.rules] == [[A1, H1], [A1, H1], [A1, A2], [A1]]


def test_pgp_and_other_fields_are_exposed_not_recipients():
    config = SopsConfig(read("pgp_beside_age.yaml"), "x")
    rule = config.find_rule(r"secrets/shared\.yaml$")
    assert rule.recipients == [A1, H1]
    assert rule.fields == {"encrypted_regex": "^(data|stringData|password)$"}
    assert "pgp" in rule.other_keys


def test_key_groups_and_shamir():
    config = SopsConfig(read("shamir_groups.yaml"), "x")
    rule = config.rules[0]
    assert rule.shamir_threshold == 2
    assert len(rule.key_groups) == 3
    assert rule.key_groups[0] == [A1, A2]
    assert rule.fields == {"unencrypted_suffix": "_unencrypted"}
    assert rule.other_keys == {"key_groups[2].pgp": ["85D77543B3D624B63CEA9E6DBC17301B491B3F21"]}
    assert config.rules[1].fields == {"mac_only_encrypted": True}


def test_single_alias_rule():
    config = SopsConfig(read("single_alias.yaml"), "x")
    assert config.rules[0].recipients == [H1]
    assert config.rules[1].anchors == ["admin", "host"]


# ------------------------------------------------------------------ adding a host touches only its lines
@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_add_host_adds_only_host_lines(name):
    group, admin, shared = ADD_HOST[name]
    config = SopsConfig(read(name), name)
    host = "newhost-01"
    recipient = new_recipient()
    assert config.ensure_recipient(host, recipient, group) is True
    assert config.ensure_rule_member(shared, host) is True
    host_rule = rf"sops/{host}\.yaml$"
    assert config.ensure_rule(host_rule, [admin, host]) is True
    # idempotent
    assert config.ensure_recipient(host, recipient, group) is False
    assert config.ensure_rule_member(shared, host) is False
    assert config.ensure_rule(host_rule, [admin, host]) is False

    diff = [
        ln
        for ln in difflib.unified_diff(read(name).splitlines(), config.text.splitlines(), lineterm="", n=0)
        if not ln.startswith(("---", "+++", "@@"))
    ]
    structural = re.compile(r"^\+\s*(- )?(age:|key_groups:|- age:|- \*" + re.escape(admin) + r")?\s*$")
    removed = [ln for ln in diff if ln.startswith("-")]
    added = [ln for ln in diff if ln.startswith("+")]
    if name == "csv_strings.yaml":
        # A comma-separated string can only grow in place: the one changed line gains the recipient.
        assert len(removed) == 1
        assert any(ln == "+" + removed[0][1:].rstrip("'") + ", " + recipient + "'" for ln in added)
        added = [ln for ln in added if recipient not in ln]
    elif name == "single_alias.yaml":
        # `age: *host` becomes a list: that line is rewritten, the old member stays first.
        assert removed == ["-    age: *host"]
        assert "+      - *host" in added
        added.remove("+      - *host")
    else:
        assert removed == []
    for ln in added:
        assert host in ln or recipient in ln or structural.match(ln), ln
    # It means what was intended.
    again = SopsConfig(config.text, os.path.join("/repo", ".sops.yaml"))
    assert again.anchors()[host].recipient == recipient
    assert recipient in again.find_rule(shared).recipients
    assert again.rule_for(f"/repo/sops/{host}.yaml").path_regex == host_rule
    assert set(again.rule_for(f"sops/{host}.yaml").recipients) == {again.anchors()[admin].recipient, recipient}


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_add_then_remove_host_restores_the_meaning(name):
    group, admin, shared = ADD_HOST[name]
    config = SopsConfig(read(name), name)
    before = config.snapshot()
    config.ensure_recipient("tmp", new_recipient(), group)
    config.ensure_rule_member(shared, "tmp")
    assert config.remove_anchor("tmp") is True
    assert config.remove_anchor("tmp") is False
    if name not in ("csv_strings.yaml", "single_alias.yaml"):
        # (a literal copy in a string is the user's entry, not an alias; `age: *x` stays a list)
        assert config.snapshot() == before
        assert config.text == read(name)


def test_new_rule_goes_before_the_catch_all():
    config = SopsConfig(read("heavy_comments.yaml"), "x")
    config.ensure_rule(r"sops/gusto\.yaml$", ["ta", "gusto"])
    regexes = [r.path_regex for r in config.rules]
    assert regexes == [r"sops/shared\.yaml$", r"sops/genoa\.yaml$", r"sops/gusto\.yaml$", None]
    # The catch-all keeps its comment right above it.
    lines = config.text.splitlines()
    assert lines[lines.index("  # catch-all: admins only") + 1] == "  - key_groups:"
    # The quoting of the other path_regex lines is copied.
    assert "  - path_regex: 'sops/gusto\\.yaml$'" in lines


def test_new_rule_appended_without_catch_all():
    config = SopsConfig(read("anchored_lists.yaml"), "x")
    config.ensure_rule("hosts/new/secrets.ya?ml$", ["alice"])
    assert config.rules[-1].path_regex == "hosts/new/secrets.ya?ml$"
    assert config.text.endswith(
        "  - path_regex: hosts/new/secrets.ya?ml$\n    key_groups:\n    - age:\n      - *alice\n"
    )


# ------------------------------------------------------------------ updates and removals
def test_update_recipient_changes_one_line_and_every_alias_follows():
    config = SopsConfig(read("mapping_groups.yaml"), "x")
    new = new_recipient()
    assert config.ensure_recipient("griefling", new, "hosts") is True
    diff = [
        ln for ln in difflib.ndiff(read("mapping_groups.yaml").splitlines(), config.text.splitlines()) if ln[0] in "+-"
    ]
    assert diff == [f"-     - &griefling {H1}", f"+     - &griefling {new}"]
    assert all(H1 not in r.recipients for r in config.rules)
    assert all(new in r.recipients for r in config.rules)


def test_update_keeps_quotes_and_comment():
    config = SopsConfig(read("heavy_comments.yaml"), "x")
    new = new_recipient()
    config.ensure_recipient("ta", new, "users")
    assert f'  - &ta "{new}"   # ta@workstation' in config.text.splitlines()


def test_anchor_in_other_group_is_refused():
    config = SopsConfig(read("mapping_groups.yaml"), "x")
    with pytest.raises(SopsConfigError, match="already exists in group 'hosts'"):
        config.ensure_recipient("griefling", H1, "users")


def test_new_group_is_created():
    config = SopsConfig(read("mapping_groups.yaml"), "x")
    config.ensure_recipient("break-glass", new_recipient(), "recovery")
    assert config.groups()["recovery"] == ["break-glass"]
    config2 = SopsConfig(read("anchored_lists.yaml"), "x")
    config2.ensure_recipient("break-glass", new_recipient(), "recovery")
    assert "  - &recovery:\n    - &break-glass " in config2.text


def test_keys_section_created_when_missing():
    config = SopsConfig("# my rules\ncreation_rules:\n  - age: " + A1 + "\n", "x")
    config.ensure_recipient("alice", A2, "users")
    assert config.text.startswith("keys:\n  users:\n    - &alice " + A2 + "\n# my rules\n")
    config.ensure_rule(r"sops/a\.yaml$", ["alice"])
    assert config.rule_for("sops/a.yaml").recipients == [A2]


def test_empty_file_gets_keys_and_rules():
    config = SopsConfig("", "x")
    config.ensure_recipient("alice", A1, "users")
    config.ensure_rule(r"sops/a\.yaml$", ["alice"])
    assert config.rule_for("sops/a.yaml").recipients == [A1]


def test_remove_member_from_rule():
    config = SopsConfig(read("flat_list.yaml"), "x")
    assert config.ensure_rule_member(r"secrets/common\.yaml$", "db", state="absent") is True
    assert config.find_rule(r"secrets/common\.yaml$").anchors == ["alice", "bob", "web"]
    assert config.ensure_rule_member(r"secrets/common\.yaml$", "db", state="absent") is False
    assert "  - &db " in config.text  # the anchor stays


def test_remove_from_flow_list_and_single_alias():
    config = SopsConfig(read("single_alias.yaml"), "x")
    config.ensure_rule_member("secrets/.*", "host", state="absent")
    assert "    age: [*admin]\n" in config.text
    with pytest.raises(SopsConfigError, match=r"line 7: removing 'host' would leave rule .*no recipient"):
        config.ensure_rule_member(r"secrets/host\.yaml$", "host", state="absent")


def test_remove_from_comma_string():
    config = SopsConfig(read("csv_strings.yaml"), "x")
    config.ensure_rule(r"\.enc\.yaml$", ["admin"], exclusive=True)
    assert config.find_rule(r"\.enc\.yaml$").recipients == [A1]
    assert f"    age: {A1}\n" in config.text


def test_exclusive_sets_exact_members():
    config = SopsConfig(read("anchored_lists.yaml"), "x")
    assert config.ensure_rule("hosts/merope/secrets.ya?ml$", ["alice", "merope"], exclusive=True) is True
    assert config.find_rule("hosts/merope/secrets.ya?ml$").anchors == ["alice", "merope"]
    assert config.ensure_rule("hosts/merope/secrets.ya?ml$", ["alice", "merope"], exclusive=True) is False


def test_key_groups_and_shamir_threshold():
    config = SopsConfig(read("shamir_groups.yaml"), "x")
    regex = r"secrets/vault/.*\.yaml$"
    assert config.ensure_rule(regex, key_groups=[["alice"], ["vault"], ["break-glass"]]) is True
    assert config.find_rule(regex).members == [["*alice"], ["*vault"], ["*break-glass"]]
    assert config.ensure_rule(regex, shamir_threshold=3) is True
    assert "    shamir_threshold: 3\n" in config.text
    assert config.ensure_rule(regex, shamir_threshold=3) is False
    with pytest.raises(SopsConfigError, match="changing the number of key groups"):
        config.ensure_rule(regex, key_groups=[["alice"]])
    config.ensure_rule("secrets/new/.*", key_groups=[["alice", "bob"], ["vault"]], shamir_threshold=2)
    rule = config.find_rule("secrets/new/.*")
    assert rule.shamir_threshold == 2 and rule.key_groups == [[A1, A2], [H1]]


def test_rule_absent():
    config = SopsConfig(read("flat_list.yaml"), "x")
    assert config.ensure_rule(r"secrets/web/[^/]+\.(yaml|json|env)$", state="absent") is True
    assert config.ensure_rule(r"secrets/web/[^/]+\.(yaml|json|env)$", state="absent") is False
    assert [r.path_regex for r in config.rules] == [r"secrets/common\.yaml$", None]


def test_remove_anchor_refuses_to_empty_a_rule_and_leaves_text():
    config = SopsConfig(read("mapping_groups.yaml"), "x")
    config.ensure_rule(r"sops/solo\.yaml$", ["ghost"])
    text = config.text
    with pytest.raises(SopsConfigError) as exc:
        config.remove_anchor("ghost")
    assert "'ghost'" in str(exc.value) and "no recipient" in str(exc.value) and "line " in str(exc.value)
    assert config.text == text


def test_remove_anchor_everywhere():
    config = SopsConfig(read("mapping_groups.yaml"), "x")
    assert config.remove_anchor("griefling") is True
    assert "griefling" not in config.anchors()
    assert all("griefling" not in r.anchors for r in config.rules)
    removed = [
        ln for ln in difflib.ndiff(read("mapping_groups.yaml").splitlines(), config.text.splitlines()) if ln[0] in "+-"
    ]
    assert all(ln.startswith("-") and "griefling" in ln for ln in removed)


# ------------------------------------------------------------------ bad input
def test_yaml_syntax_error_names_file_and_line():
    with pytest.raises(SopsConfigError, match=r"cfg\.yaml, line 3, column \d+: YAML syntax error: mapping values"):
        SopsConfig("keys:\n  - &a x\n  - b: c: d\ncreation_rules: []\n", "cfg.yaml")


@pytest.mark.parametrize("bad", ["a b", "../evil", "a*b", "&x", "x:", "", "-x", "é", "a/b", "a\nb"])
def test_bad_anchor_names_are_refused(bad):
    config = SopsConfig(read("mapping_groups.yaml"), "x")
    with pytest.raises(SopsConfigError) as exc:
        config.ensure_recipient(bad, A1, "hosts")
    assert repr(bad) in str(exc.value) and "letter or digit" in str(exc.value)
    assert config.text == read("mapping_groups.yaml")


def test_group_names_allow_trailing_colon_only():
    assert check_anchor_name("users:", "group", allow_group_colon=True) == "users:"
    with pytest.raises(SopsConfigError):
        check_anchor_name("us ers:", "group", allow_group_colon=True)


def test_invalid_recipient_checksum():
    config = SopsConfig(read("mapping_groups.yaml"), "x")
    with pytest.raises(SopsConfigError, match=r"anchor 'web'.*checksum"):
        config.ensure_recipient("web", corrupt(new_recipient()), "hosts")
    with pytest.raises(SopsConfigError, match="SSH public key"):
        config.ensure_recipient("web", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA", "hosts")
    assert config.text == read("mapping_groups.yaml")


def test_alias_to_missing_anchor():
    text = read("mapping_groups.yaml").replace("          - *ghost\n", "          - *ghosty\n")
    config = SopsConfig(text, "cfg.yaml")
    findings = config.validate(scan_files=False)
    assert any(f["kind"] == "unknown_alias" and f["line"] == 18 and "*ghosty" in f["message"] for f in findings)
    with pytest.raises(SopsConfigError, match=r"cfg\.yaml, line 18: alias \*ghosty"):
        config.rules  # noqa: B018
    with pytest.raises(SopsConfigError, match="anchor 'nobody' is not defined"):
        SopsConfig(read("mapping_groups.yaml"), "x").ensure_rule("x", ["nobody"])


def test_rule_needs_a_recipient():
    config = SopsConfig(read("mapping_groups.yaml"), "x")
    with pytest.raises(SopsConfigError, match="at least one anchor"):
        config.ensure_rule("sops/x", [])


def test_missing_rule_for_membership():
    config = SopsConfig(read("mapping_groups.yaml"), "x")
    with pytest.raises(SopsConfigError, match="no creation rule with path_regex 'nope'"):
        config.ensure_rule_member("nope", "ta")


# ------------------------------------------------------------------ validate
def test_validate_finds_problems(tmp_path):
    bad = corrupt(H3)
    text = (
        "keys:\n"
        "  hosts:\n"
        f"    - &a {A1}\n"
        f"    - &a {A2}\n"
        f"    - &b {bad}\n"
        "creation_rules:\n"
        "  - path_regex: ^secrets/a\\.yaml$\n"
        "    age: [*a, *zz]\n"
        "  - path_regex: ^secrets/\n"
        "    age: [*a]\n"
        "  - path_regex: ^secrets/a\\.yaml$\n"
        "    age: [*a]\n"
        "  - path_regex: (?=x)\n"
        "    age: [*a]\n"
    )
    (tmp_path / ".sops.yaml").write_text(text)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "a.yaml").write_text("a: 1\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "s.yaml").write_text("a: ENC[x]\nsops:\n    mac: ENC[y]\n    version: 3.11.0\n")
    (tmp_path / "other" / "plain.yaml").write_text("a: 1\n")
    config = SopsConfig.load(str(tmp_path / ".sops.yaml"))
    kinds = sorted((f["kind"], f.get("line")) for f in config.validate())
    assert ("duplicate_anchor", 4) in kinds
    assert ("unknown_alias", 8) in kinds
    assert ("invalid_recipient", 5) in kinds
    assert ("invalid_regex", 13) in kinds
    assert ("rule_unused", 9) in kinds  # matches nothing but what the first rule takes
    assert ("rule_unused", 11) in kinds
    unmatched = [f for f in config.validate() if f["kind"] == "unmatched_sops_file"]
    assert [f["path"] for f in unmatched] == ["other/s.yaml"]


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_fixtures_validate_clean(name):
    assert SopsConfig(read(name), name).validate(scan_files=False) == []


# ------------------------------------------------------------------ matching
def test_rule_for_first_match_and_catch_all():
    config = SopsConfig(read("flat_list.yaml"), "/repo/.sops.yaml")
    assert config.rule_for("/repo/secrets/common.yaml").path_regex == r"secrets/common\.yaml$"
    assert config.rule_for("secrets/web/a.env").path_regex == r"secrets/web/[^/]+\.(yaml|json|env)$"
    assert config.rule_for("secrets/web/a.env.bak").path_regex is None
    assert config.rule_for("/elsewhere/x").path_regex is None


def test_rule_for_without_match():
    config = SopsConfig(read("anchored_lists.yaml"), "/repo/.sops.yaml")
    with pytest.raises(SopsConfigError, match="no creation rule matches 'nothing.txt'"):
        config.rule_for("nothing.txt")


def test_relative_to_config():
    assert relative_to_config("/r/.sops.yaml", "/r/a/b.yaml") == "a/b.yaml"
    assert relative_to_config("/r/.sops.yaml", "a/../b.yaml") == "b.yaml"
    assert relative_to_config("/r/.sops.yaml", "/rr/b.yaml") == "/rr/b.yaml"
    assert relative_to_config("/r/sub/../.sops.yaml", "/r/x") == "x"


@pytest.mark.parametrize(
    "pattern",
    [
        "a(?=b)",
        "a(?!b)",
        "(?<=a)b",
        "(?<!a)b",
        r"(a)\1",
        "(?P<x>a)(?P=x)",
        "a*+",
        "a++",
        "a?+",
        "a{2}+",
        r"a\Z",
        "(?>a)",
        "(?#c)a",
        "**",
        "a**",
        "(",
        "a)",
        "[a",
        "a{1001}",
        r"\e",
        "[z-a]",
        # C++ RE2 accepts these, Go's regexp (sops) does not.
        r"a\Cb",
        "(?P<é>a)",
        "(?P<n>a)(?P<n>b)",
    ],
)
def test_re2_rejects_what_re2_or_python_differ_on(pattern):
    with pytest.raises(SopsConfigError) as exc:
        compile_path_regex(pattern)
    assert repr(pattern) in str(exc.value)


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("a$", "a\n", False),  # RE2 $ is end of text only
        ("a$", "xa", True),
        (r"a\z", "a", True),
        (r"\d", "\u0663", False),  # Arabic-Indic digit: RE2 \d is ASCII
        (r"\w+$", "é", False),
        ("a{,2}", "a{,2}", True),  # literal in RE2, a repeat in Python
        ("a{,2}", "aa", False),
        ("(?i)SOPS/", "sops/x", True),
        ("[[:digit:]]+x", "12x", True),
        (r"\Qa.b\E", "a.b", True),
        (r"\Qa.b\E", "axb", False),
        ("(?<n>a)b", "ab", True),
        (r"\bfoo\b", "a foo b", True),
        (r"\bfoo\b", "afoo", False),
        (r"[\d.]+", "1.2", True),
        ("sops/.*", "x/sops/y", True),  # unanchored search
        (r"\x{41}", "A", True),
        ("a#b", "a#b", True),
    ],
)
def test_re2_translation_keeps_meaning(pattern, text, expected):
    assert bool(compile_path_regex(pattern).search(text)) is expected


def test_dollar_and_multiline_like_go():
    # What the hand translation used to spell as \Z and (?m)$: RE2 reads them so itself.
    assert compile_path_regex(r"sops/.*\.yaml$").search("sops/a.yaml")
    assert not compile_path_regex(r"sops/.*\.yaml$").search("sops/a.yaml\n")
    assert compile_path_regex("(?m)a$").search("a\nb")


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        # Refused by the old hand translation, accepted by sops (Go RE2): see the interop test.
        (r"\p{Greek}+\.yaml$", "αβ.yaml", True),
        (r"\p{Greek}+\.yaml$", "ab.yaml", False),
        ("x(?i)y", "xY", True),
        ("x(?i)y", "XY", False),
        ("(?U)a+", "aaa", True),
        (r"\pL", "é", True),
        (r"[[:^alpha:]]", "1", True),
    ],
)
def test_re2_accepts_what_go_accepts(pattern, text, expected):
    assert bool(compile_path_regex(pattern).search(text)) is expected


# ------------------------------------------------------------------ robustness
def test_crlf_file_keeps_crlf():
    text = read("mapping_groups.yaml").replace("\n", "\r\n")
    config = SopsConfig(text, "x")
    config.ensure_recipient("zz", new_recipient(), "hosts")
    config.ensure_rule_member(r"sops/shared\.yaml$", "zz")
    config.ensure_rule(r"sops/zz\.yaml$", ["ta", "zz"])
    assert "\n" not in config.text.replace("\r\n", "")
    assert config.remove_anchor("zz") and config.ensure_rule(r"sops/zz\.yaml$", state="absent")
    assert config.snapshot() == SopsConfig(text, "x").snapshot()


def test_unverifiable_edit_is_refused_and_text_kept():
    # An anchor defined inside a rule is also that rule's member: removing it is not a plain anchor removal.
    text = f"creation_rules:\n  - path_regex: a\n    age:\n      - &inline {A1}\n      - {A2}\n"
    config = SopsConfig(text, "cfg.yaml")
    with pytest.raises(SopsConfigError, match="cfg.yaml"):
        config.remove_anchor("inline")
    assert config.text == text


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(ALL_FIXTURES),
    ops=st.lists(st.tuples(st.sampled_from(["add", "member", "rule", "update"]), st.integers(0, 3)), max_size=8),
)
def test_random_edits_always_reparse_and_undo(name, ops):
    group, admin, shared = ADD_HOST[name]
    config = SopsConfig(read(name), name)
    original = config.snapshot()
    added: list[str] = []
    for op, n in ops:
        host = f"h{n}"
        if op == "add" or host not in added:
            config.ensure_recipient(host, new_recipient(), group)
            if host not in added:
                added.append(host)
        elif op == "member":
            config.ensure_rule_member(shared, host)
        elif op == "rule":
            config.ensure_rule(rf"sops/{host}\.yaml$", [admin, host])
        else:
            config.ensure_recipient(host, new_recipient(), group)
        SopsConfig(config.text, name)  # always valid YAML with the same reading
    for host in added:
        config.ensure_rule(rf"sops/{host}\.yaml$", state="absent")
        config.remove_anchor(host)
    if name not in ("csv_strings.yaml", "single_alias.yaml"):
        assert config.snapshot() == original


def test_duplicate_keys_are_refused_like_sops():
    with pytest.raises(SopsConfigError, match=r"cfg\.yaml, line 3: key 'hosts' is defined twice"):
        SopsConfig(f"keys:\n  hosts: [&a {A1}]\n  hosts: [&b {A2}]\n", "cfg.yaml")


def test_group_that_is_not_a_list():
    config = SopsConfig(f"keys:\n  users:\n    - &a {A1}\n  hosts:\ncreation_rules: []\n", "cfg.yaml")
    with pytest.raises(SopsConfigError, match="group 'hosts' is not a list"):
        config.ensure_recipient("web", A2, "hosts")
    config = SopsConfig(f"keys:\n  users:\n    - &a {A1}\n  hosts: []\n", "cfg.yaml")
    config.ensure_recipient("web", A2, "hosts")
    assert f"  hosts: [&web {A2}]\n" in config.text
    assert config.anchors()["web"].group == "hosts"


def test_merge_in_key_groups_is_read():
    text = (
        "keys:\n"
        f"  - &a {A1}\n"
        f"  - &b {A2}\n"
        "creation_rules:\n"
        "  - key_groups:\n"
        "      - age: [*a]\n"
        "        merge:\n"
        "          - age: [*b]\n"
    )
    assert SopsConfig(text, "x").rules[0].key_groups == [[A1, A2]]


# ------------------------------------------------------------------ the parse
def test_parse_runs_on_libyaml_and_indexes_characters():
    from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config.parse import libyaml_in_use, parse_text

    assert libyaml_in_use()
    text = f"# é日本 𝔘😀 comment\nkeys:\n  - &w {A1}  # ünïcode\ncreation_rules:\n  - path_regex: 'ß/.*'\n    age: *w\n"
    doc = parse_text(text)
    anchor = doc.anchor_defs[0]
    assert text[anchor.start : anchor.end] == f"&w {A1}"
    assert (anchor.line, anchor.col) == (2, 4)
    regex = doc.root.get("creation_rules").items[0].get("path_regex")
    assert text[regex.start : regex.end] == "'ß/.*'" and regex.style == "'"
    assert doc.aliases[0].target is anchor
    # libyaml's plain style '' reads as None, like the pure parser's.
    assert doc.root.items[0][0].style is None


def bomb(levels: int = 9, width: int = 9) -> str:
    lines = ['a: &a ["lol"' + ', "lol"' * (width - 1) + "]"]
    for i in range(1, levels):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * width) + "]")
    last = chr(ord("a") + levels - 1)
    lines += ["creation_rules:", "  - path_regex: x", f"    age: *{last}"]
    return "\n".join(lines) + "\n"


def test_billion_laughs_fails_fast_naming_the_file(tmp_path, monkeypatch):
    import time

    from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import parse as parse_mod

    text = bomb()
    assert len(text) < 700
    cfg = tmp_path / ".sops.yaml"
    cfg.write_text(text)
    t0 = time.monotonic()
    with pytest.raises(SopsConfigError, match=r"\.sops\.yaml, line \d+: aliases expand to more than 1,000,000 nodes"):
        SopsConfig.load(str(cfg))
    assert time.monotonic() - t0 < 1
    assert cfg.read_text() == text
    # Past the parse's limit, every resolution has its own budget: rules and snapshot fail fast too.
    monkeypatch.setattr(parse_mod, "MAX_ALIAS_EXPANSION", 10**12)
    config = SopsConfig(text, str(cfg))
    monkeypatch.setattr(parse_mod, "MAX_ALIAS_EXPANSION", 1_000_000)
    for read in (lambda: config.rules, config.snapshot, lambda: config.rule_for("x")):
        t0 = time.monotonic()
        with pytest.raises(SopsConfigError, match=r"\.sops\.yaml, line \d+: aliases expand to more than"):
            read()
        assert time.monotonic() - t0 < 1


def test_recursive_alias_is_refused():
    with pytest.raises(SopsConfigError, match=r"cfg\.yaml, line 1: alias \*a is used inside the node it names"):
        SopsConfig("a: &a [*a]\n", "cfg.yaml")


# ------------------------------------------------------------------ YAML merge keys and shared anchored values
MERGED = f"""keys:
  - &a {A1}
  - &b {A2}
  - &h {H1}
common: &all
  age: [*a, *b]
  encrypted_regex: ^data$
creation_rules:
  - path_regex: one\\.yaml$
    <<: *all
  - path_regex: two\\.yaml$
    <<: *all
"""


def test_merge_key_is_read_like_yaml_v3():
    config = SopsConfig(MERGED, "cfg.yaml")
    rule = config.rule_for("one.yaml")
    assert rule.recipients == [A1, A2]
    assert rule.members == [["*a", "*b"]]
    assert rule.fields == {"encrypted_regex": "^data$"}
    text = (
        f"keys:\n  - &a {A1}\n  - &b {A2}\nx: &x {{age: [*a]}}\ny: &y {{age: [*b], shamir_threshold: 1}}\n"
        "creation_rules:\n"
        "  - path_regex: first\n    <<: [*x, *y]\n"  # the first merged mapping wins
        "  - path_regex: own\n    age: [*b]\n    <<: *x\n"  # a key written in the mapping wins
    )
    config = SopsConfig(text, "cfg.yaml")
    assert config.find_rule("first").recipients == [A1]
    assert config.find_rule("first").shamir_threshold == 1
    assert config.find_rule("own").recipients == [A2]


def test_adding_to_a_merged_rule_keeps_the_merged_recipients_and_the_other_rule():
    config = SopsConfig(MERGED, "cfg.yaml")
    assert config.ensure_rule_member(r"one\.yaml$", "h") is True
    again = SopsConfig(config.text, "cfg.yaml")
    assert again.rule_for("one.yaml").recipients == [A1, A2, H1]
    assert again.rule_for("two.yaml").recipients == [A1, A2]
    assert again.rule_for("one.yaml").fields == {"encrypted_regex": "^data$"}
    assert config.ensure_rule_member(r"one\.yaml$", "h") is False
    assert config.ensure_rule_member(r"one\.yaml$", "a", state="absent") is True
    assert SopsConfig(config.text, "x").rule_for("one.yaml").recipients == [A2, H1]
    assert SopsConfig(config.text, "x").rule_for("two.yaml").recipients == [A1, A2]


def test_revoking_an_anchor_removes_it_from_the_merged_list_for_every_rule():
    config = SopsConfig(MERGED, "cfg.yaml")
    assert config.remove_anchor("b") is True
    assert [r.recipients for r in config.rules] == [[A1], [A1]]


def test_a_wrong_edit_of_a_merged_rule_is_caught(monkeypatch):
    # The old edit wrote `age: [*h]` beside the merge key: sops would then encrypt to h alone.
    from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config.edit_rules import RuleEdits

    monkeypatch.setattr(RuleEdits, "_member_texts", lambda self, f: [])
    config = SopsConfig(MERGED, "cfg.yaml")
    with pytest.raises(SopsConfigError, match=r"refusing to add 'h' to rule 'one\\\\.yaml\$': sops would read"):
        config.ensure_rule_member(r"one\.yaml$", "h")
    assert config.text == MERGED


SHARED = f"""keys:
  - &h {H1}
creation_rules:
  - path_regex: one
    age: &shared {A1},{A2}
  - path_regex: two
    age: *shared
"""


def test_shared_anchored_value_keeps_its_anchor_and_the_other_rule():
    config = SopsConfig(SHARED, "cfg.yaml")
    assert config.find_rule("two").recipients == [A1, A2]
    assert config.ensure_rule_member("one", "h") is True
    assert "&shared" in config.text
    assert config.find_rule("one").recipients == [A1, A2, H1]
    assert config.find_rule("two").recipients == [A1, A2]
    assert config.ensure_rule_member("two", "h") is True  # `age: *shared` becomes a list: [*shared, *h]
    assert config.find_rule("two").recipients == [A1, A2, H1]
    text = config.text
    refusal = r"line 6: refusing to remove a member of rule 'one': this value is anchored \(&shared\) and other rules"
    with pytest.raises(SopsConfigError, match=refusal):
        config.ensure_rule("one", ["h"], exclusive=True)
    assert config.text == text


def test_foreign_master_keys_per_group():
    text = (
        f"creation_rules:\n"
        f"  - path_regex: top\n    age: {A1}\n    pgp: 'FP1, FP2'\n    kms: ['arn:a', 'arn:b']\n"
        f"    hc_vault_transit_uri: https://v/keys/k\n"
        f"  - path_regex: groups\n    key_groups:\n      - age: [{A1}]\n        pgp: [FP3]\n"
        f"      - age: [{A2}]\n        kms: [{{arn: 'arn:c', role: r}}]\n        hc_vault: ['https://v/k2']\n"
    )
    config = SopsConfig(text, "x")
    top = config.find_rule("top")
    assert top.foreign == [{"pgp": ["FP1", "FP2"], "kms": ["arn:a", "arn:b"], "hc_vault_transit_uri": ["https://v/keys/k"]}]
    assert top.other_keys["pgp"] == "FP1, FP2"
    assert config.find_rule("groups").foreign == [
        {"pgp": ["FP3"]},
        {"kms": ["arn:c"], "hc_vault_transit_uri": ["https://v/k2"]},
    ]


# ------------------------------------------------------------------ matching and lint
def test_matcher_set_and_fallback_agree(monkeypatch):
    from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import PathMatcher

    patterns = [r"^a/.*\.yaml$", None, "b"] + [rf"^h{i}/" for i in range(300)]
    paths = ["a/x.yaml", "b/x", "h7/x", "zzz", "a/x.json"]
    with_set = PathMatcher(patterns)
    assert with_set.set is not None
    monkeypatch.setattr(PathMatcher, "_build_set", lambda self: None)
    without = PathMatcher(patterns)
    assert [with_set.first(p) for p in paths] == [without.first(p) for p in paths] == [0, 1, 1, 1, 1]
    tail = PathMatcher([r"^h\d+/", "(?=x)", "y"])
    assert tail.first("h1/a") == 0  # sops stops before the pattern it cannot compile
    with pytest.raises(SopsConfigError, match=r"path_regex '\(\?=x\)'.*Go RE2"):
        tail.first("y")


def test_lint_takes_the_files_from_its_caller():
    from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import RepoFile

    config = SopsConfig(read("flat_list.yaml").replace("  - age:", "  - path_regex: ^other/\n    age:"), "/nowhere/x")
    files = [RepoFile("secrets/common.yaml", True), RepoFile("elsewhere/s.yaml", True), RepoFile("a.txt", False)]
    kinds = sorted((f["kind"], f.get("path") or f.get("line")) for f in config.validate(files=files))
    assert ("unmatched_sops_file", "elsewhere/s.yaml") in kinds
    assert ("rule_unused", 17) in kinds  # secrets/web/… matches none of the given files
    assert ("rule_unused", 22) in kinds
    assert not any(k == "unmatched_sops_file" and p == "a.txt" for k, p in kinds)


def test_a_sops_yaml_linked_out_of_its_directory_is_refused(tmp_path):
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    repo.mkdir()
    outside.mkdir()
    text = "creation_rules:\n  - path_regex: x\n    age: age1x\n"
    (outside / "rules.yaml").write_text(text)
    (repo / ".sops.yaml").symlink_to(outside / "rules.yaml")
    with pytest.raises(SopsConfigError, match=r"\.sops\.yaml is a symlink to .*outside/rules\.yaml, outside .*repo"):
        SopsConfig.load(str(repo / ".sops.yaml"))
    # A link that stays inside the directory is read as before.
    (repo / "rules.yaml").write_text(text)
    (repo / ".sops.yaml").unlink()
    (repo / ".sops.yaml").symlink_to("rules.yaml")
    assert SopsConfig.load(str(repo / ".sops.yaml")).text == text
