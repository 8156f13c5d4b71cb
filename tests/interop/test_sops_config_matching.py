"""The real sops binary is the oracle for rule matching and for what the modules write.

Every check encrypts a file with `sops encrypt` and compares the recipients in its
metadata with what SopsConfig.rule_for() says for the same path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pyrage
import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import (
    SopsConfig,
    SopsConfigError,
    compile_path_regex,
)

from tests.lib.runner import run_module

pytestmark = pytest.mark.interop

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "sops_config")
CONTENT = {".yaml": "a: b\n", ".yml": "a: b\n", ".json": '{"a": "b"}\n', ".env": "A=b\n"}


def new_recipient() -> str:
    return str(pyrage.x25519.Identity.generate().to_public())


def sops_recipients(sops_bin: str, path: str, cwd: str, config: str | None = None) -> list[str] | None:
    """Recipients sops encrypts ``path`` to (None when sops finds no matching rule)."""
    full = os.path.normpath(os.path.join(cwd, path))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as fh:
        fh.write(CONTENT.get(os.path.splitext(full)[1], "plain text\n"))
    # --config is a global flag: it goes before the subcommand.
    cmd = [sops_bin] + (["--config", config] if config else []) + ["encrypt", "--output-type", "json"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPS_AGE")}
    env["SOPS_DISABLE_VERSION_CHECK"] = "1"
    proc = subprocess.run(cmd + [path], cwd=cwd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        if "no matching creation rules" in proc.stderr:
            return None
        raise AssertionError(f"sops failed for {path}: {proc.stderr}")
    meta = json.loads(proc.stdout)["sops"]
    out = [a["recipient"] for a in meta.get("age") or []]
    for group in meta.get("key_groups") or []:
        out += [a["recipient"] for a in group.get("age") or []]
    return out


def ours(config_path: str, path: str, cwd: str) -> list[str] | None:
    config = SopsConfig.load(config_path)
    try:
        return config.rule_for(os.path.abspath(os.path.join(cwd, path))).recipients
    except SopsConfigError as exc:
        assert "no creation rule matches" in str(exc)
        return None


@pytest.fixture
def matrix_repo(tmp_path):
    keys = {n: new_recipient() for n in ("admin", "web", "db", "misc", "outside")}
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "sub").mkdir()
    text = f"""# rules to exercise sops' matching
keys:
  users:
    - &admin {keys["admin"]}
  hosts:
    - &web {keys["web"]}
    - &db {keys["db"]}
    - &misc {keys["misc"]}
    - &outside {keys["outside"]}
creation_rules:
  - path_regex: ^sops/web\\.yaml$
    age: [*admin, *web]
  - path_regex: sops/db/.*\\.(yaml|json)$
    key_groups:
      - age:
          - *admin
          - *db
  - path_regex: \\.env$
    age: "{keys["admin"]} , {keys["db"]},{keys["misc"]}"
  - path_regex: (?i)UPPER/[[:alpha:]]+\\d\\.yaml$
    age: *misc
  - path_regex: /outside/
    age:
    - *outside
  - path_regex: sops/
    age: [*admin, *web, *db]
  - age: [*admin]
"""
    (repo / ".sops.yaml").write_text(text)
    return tmp_path, repo, keys


PATHS = [
    "sops/web.yaml",
    "sops/db/x.yaml",
    "sops/db/x.json",
    "sops/db/x.txt",
    "a.env",
    "sops/a.env",
    "upper/abc1.yaml",
    "UPPER/abc12.yaml",
    "other/readme.yaml",
    "outside/a.yaml",
    "sub/sops/web.yaml",
    "sops/web.yaml.bak",
]


@pytest.mark.parametrize("path", PATHS)
def test_matching_cwd_is_config_dir(sops_bin, matrix_repo, path):
    _tmp, repo, _keys = matrix_repo
    expected = sops_recipients(sops_bin, path, str(repo))
    assert expected is not None
    assert sorted(ours(str(repo / ".sops.yaml"), path, str(repo))) == sorted(expected)
    assert len(set(expected)) == len(expected)


@pytest.mark.parametrize("path", ["../sops/web.yaml", "../sops/db/x.json", "../a.env", "web.yaml", "../other.yaml"])
def test_matching_from_a_subdirectory(sops_bin, matrix_repo, path):
    _tmp, repo, _keys = matrix_repo
    cwd = str(repo / "sub")
    expected = sops_recipients(sops_bin, path, cwd)  # finds ../.sops.yaml by walking up
    assert sorted(ours(str(repo / ".sops.yaml"), path, cwd)) == sorted(expected)


@pytest.mark.parametrize(
    "path", ["repo/sops/web.yaml", "repo/sops/db/x.yaml", "outside/a.yaml", "elsewhere/sops/x.yaml", "x.env"]
)
def test_matching_with_config_flag_from_elsewhere(sops_bin, matrix_repo, path):
    tmp, repo, keys = matrix_repo
    for config in (str(repo / ".sops.yaml"), "repo/.sops.yaml"):
        expected = sops_recipients(sops_bin, path, str(tmp), config=config)
        assert sorted(ours(str(repo / ".sops.yaml"), path, str(tmp))) == sorted(expected)
    if path == "outside/a.yaml":
        # Outside the config dir the absolute path is matched: the /outside/ rule applies.
        assert expected == [keys["outside"]]


FIXTURE_PATHS = [
    "sops/shared.yaml",
    "sops/griefling.yaml",
    "sops/other.yaml",
    "hosts/common/secrets.yaml",
    "hosts/atlas/secrets.yml",
    "hosts/merope/secrets.json",
    "secrets/common.yaml",
    "secrets/web/a.json",
    "secrets/web/b.env",
    "secrets/web/c.txt",
    "secrets/shared/x.yaml",
    "secrets/builder/y.yaml",
    "z.enc.yaml",
    "secrets/host.yaml",
    "secrets/other.yaml",
    "other.yaml",
]
# pgp keys would need gpg key material for sops to encrypt; the others are pure age.
AGE_ONLY = [
    f
    for f in sorted(os.listdir(FIXTURES))
    if f.endswith(".yaml") and f not in ("pgp_beside_age.yaml", "shamir_groups.yaml")
]


@pytest.mark.parametrize("fixture", AGE_ONLY)
def test_fixture_corpus_matches_like_sops(sops_bin, tmp_path, fixture):
    shutil.copy(os.path.join(FIXTURES, fixture), tmp_path / ".sops.yaml")
    for path in FIXTURE_PATHS:
        expected = sops_recipients(sops_bin, path, str(tmp_path))
        got = ours(str(tmp_path / ".sops.yaml"), path, str(tmp_path))
        assert (sorted(got) if got is not None else None) == (sorted(expected) if expected is not None else None), (
            fixture,
            path,
        )


def test_sops_rejects_what_we_reject(sops_bin, tmp_path):
    (tmp_path / ".sops.yaml").write_text(f"creation_rules:\n  - path_regex: a(?=b)\n    age: {new_recipient()}\n")
    with pytest.raises(AssertionError, match="can not compile regexp"):
        sops_recipients(sops_bin, "ab.yaml", str(tmp_path))
    with pytest.raises(SopsConfigError, match="lookahead"):
        compile_path_regex("a(?=b)")


def test_dollar_is_end_of_text_in_both(sops_bin, tmp_path):
    admin, other = new_recipient(), new_recipient()
    # With Python's `$` a name ending in a newline would match the first rule.
    (tmp_path / ".sops.yaml").write_text(
        f"creation_rules:\n  - path_regex: x\\.yaml$\n    age: {admin}\n  - age: {other}\n"
    )
    name = "x.yaml\n"
    expected = sops_recipients(sops_bin, name, str(tmp_path))
    assert ours(str(tmp_path / ".sops.yaml"), name, str(tmp_path)) == expected == [other]


def test_modules_add_and_remove_host_as_sops_sees_it(sops_bin, tmp_path):
    cfg = tmp_path / ".sops.yaml"
    shutil.copy(os.path.join(FIXTURES, "mapping_groups.yaml"), cfg)
    base = SopsConfig.load(str(cfg)).anchors()
    host_r, user_r = new_recipient(), new_recipient()
    steps = [
        (
            "sops_recipient",
            {"group": "hosts", "name": "gusto", "recipient": host_r, "rules": [r"sops/shared\.yaml$"]},
        ),
        ("sops_recipient", {"group": "users", "name": "ta_gusto", "recipient": user_r}),
        ("sops_creation_rule", {"path_regex": r"sops/gusto\.yaml$", "anchors": ["ta", "ta_gusto", "gusto"]}),
    ]
    for module, args in steps:
        r = run_module(module, {"path": str(cfg), **args})
        assert r.changed and not r.failed, r.msg

    assert sorted(sops_recipients(sops_bin, "sops/gusto.yaml", str(tmp_path))) == sorted(
        [base["ta"].recipient, user_r, host_r]
    )
    shared = sops_recipients(sops_bin, "sops/shared.yaml", str(tmp_path))
    assert sorted(shared) == sorted(
        [base["ta"].recipient, base["griefling"].recipient, base["ghost"].recipient, host_r]
    )
    # An unrelated host's file is untouched by the change.
    assert host_r not in sops_recipients(sops_bin, "sops/griefling.yaml", str(tmp_path))

    r = run_module("sops_recipient", {"path": str(cfg), "name": "gusto", "state": "absent"})
    assert r.changed and not r.failed, r.msg
    assert sorted(sops_recipients(sops_bin, "sops/gusto.yaml", str(tmp_path))) == sorted([base["ta"].recipient, user_r])
    assert host_r not in sops_recipients(sops_bin, "sops/shared.yaml", str(tmp_path))


def test_key_groups_with_merge_and_shamir_like_sops(sops_bin, tmp_path):
    r = [new_recipient() for _unused in range(4)]
    (tmp_path / ".sops.yaml").write_text(
        "keys:\n" + "".join(f"  - &k{i} {x}\n" for i, x in enumerate(r)) + "creation_rules:\n"
        "  - path_regex: merged/\n"
        "    shamir_threshold: 2\n"
        "    key_groups:\n"
        "      - age: [*k0]\n"
        "        merge:\n"
        "          - age: [*k1]\n"
        "      - age:\n"
        f"          - {r[2]},{r[3]}\n"
    )
    expected = sops_recipients(sops_bin, "merged/x.yaml", str(tmp_path))
    rule = SopsConfig.load(str(tmp_path / ".sops.yaml")).rule_for("merged/x.yaml")
    assert sorted(rule.recipients) == sorted(expected) == sorted(r)
    assert rule.key_groups == [[r[0], r[1]], [r[2], r[3]]]
    assert rule.shamir_threshold == 2


def test_regexes_the_old_translation_refused_match_like_sops(sops_bin, tmp_path):
    """Inline flags mid-pattern, Unicode classes, (?U): sops (Go RE2) accepts them and so do we now."""
    keys = [new_recipient() for _unused in range(5)]
    (tmp_path / ".sops.yaml").write_text(
        "creation_rules:\n"
        f"  - path_regex: '^\\p{{Greek}}+/'\n    age: {keys[0]}\n"
        f"  - path_regex: 'x(?i)y\\.yaml$'\n    age: {keys[1]}\n"
        f"  - path_regex: '(?U)^a+b/'\n    age: {keys[2]}\n"
        f"  - path_regex: '^\\PL\\d/'\n    age: {keys[3]}\n"
        f"  - age: {keys[4]}\n"
    )
    for path in ["αβ/s.yaml", "ab/s.yaml", "xY.yaml", "XY.yaml", "aab/s.yaml", "_1/s.yaml", "a1/s.yaml"]:
        expected = sops_recipients(sops_bin, path, str(tmp_path))
        assert ours(str(tmp_path / ".sops.yaml"), path, str(tmp_path)) == expected, path


def test_merge_keys_and_shared_anchors_read_like_sops(sops_bin, tmp_path):
    r = [new_recipient() for _unused in range(4)]
    cfg = tmp_path / ".sops.yaml"
    cfg.write_text(
        "keys:\n" + "".join(f"  - &k{i} {x}\n" for i, x in enumerate(r)) + "common: &all\n  age: [*k0, *k1]\n"
        "other: &other\n  age: [*k3]\n"
        "creation_rules:\n"
        "  - path_regex: merged\\.yaml$\n    <<: *all\n"
        "  - path_regex: first\\.yaml$\n    <<: [*other, *all]\n"
        "  - path_regex: own\\.yaml$\n    <<: *all\n    age: [*k2]\n"
        f"  - path_regex: sh1\\.yaml$\n    age: &shared {r[2]},{r[3]}\n"
        "  - path_regex: sh2\\.yaml$\n    age: *shared\n"
    )
    names = ["merged.yaml", "first.yaml", "own.yaml", "sh1.yaml", "sh2.yaml"]
    for path in names:
        assert sorted(ours(str(cfg), path, str(tmp_path))) == sorted(sops_recipients(sops_bin, path, str(tmp_path)))
    # Edits through the modules keep every other rule as sops reads it.
    before = {p: sorted(sops_recipients(sops_bin, p, str(tmp_path))) for p in names}
    host = new_recipient()
    rules = ["merged\\.yaml$", "sh1\\.yaml$"]
    add = run_module("sops_recipient", {"path": str(cfg), "name": "host", "recipient": host, "rules": rules})
    assert add.changed and not add.failed, add.msg
    after = {p: sorted(sops_recipients(sops_bin, p, str(tmp_path))) for p in names}
    assert after["merged.yaml"] == sorted(before["merged.yaml"] + [host])
    assert after["sh1.yaml"] == sorted(before["sh1.yaml"] + [host])
    assert {p: v for p, v in after.items() if p not in ("merged.yaml", "sh1.yaml")} == {
        p: v for p, v in before.items() if p not in ("merged.yaml", "sh1.yaml")
    }
