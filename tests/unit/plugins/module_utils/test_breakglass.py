"""breakglass.py: generate, register, drill, recover, and the hooks for bootstrap and the audit."""

from __future__ import annotations

import datetime
import glob
import os
import shutil
import stat
import subprocess

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, breakglass, keyinventory, paperkey
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine
from ansible_collections.nixfleet.sops.plugins.module_utils.fsutil import UnsafePathError
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig

from tests.lib.runner import REPO
from tests.lib.secrets_repo import make_repo, sops_decrypt

FIXTURES = sorted(glob.glob(os.path.join(REPO, "tests", "fixtures", "sops_config", "*.yaml")))


def git(repo, *args):
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path):
    return make_repo(str(tmp_path), hosts=("alpha", "beta"))


@pytest.fixture
def glass():
    ident = age.generate_identity()
    return ident, age.recipient_from_identity(ident)


def admin_ids(repo):
    return [repo.identities["admin"]]


def tree_bytes(path):
    out = {}
    for root, _dirs, files in os.walk(path):
        if ".git" in root.split(os.sep):
            continue
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                out[os.path.relpath(os.path.join(root, f), path)] = fh.read()
    return out


# --------------------------------------------------------------------------- register
@pytest.mark.parametrize("fixture", FIXTURES, ids=os.path.basename)
def test_register_every_layout_every_group_idempotent(tmp_path, fixture, glass):
    repo = tmp_path / "r"
    repo.mkdir()
    shutil.copy(fixture, repo / ".sops.yaml")
    before = (repo / ".sops.yaml").read_text()
    _unused, recipient = glass
    checked = breakglass.register(str(repo), recipient, identities=[], check_mode=True)
    assert checked.changed and (repo / ".sops.yaml").read_text() == before
    assert not (repo / ".nixfleet").exists()
    res = breakglass.register(str(repo), recipient, identities=[])
    assert res.changed and res.touched == [".sops.yaml", keyinventory.INVENTORY_PATH]
    assert res.config_after == checked.config_after
    cfg = SopsConfig.load(str(repo / ".sops.yaml"))
    name = res.anchor
    # An existing break-glass anchor is reused (the shamir fixture has &break-glass): never two of them.
    assert name == ("break-glass" if "&break-glass" in before else "break_glass")
    assert cfg.anchors()[name].recipient == recipient
    assert breakglass.uncovered(cfg, name) == []
    for rule in cfg.rules:
        assert all(recipient in group for group in rule.key_groups), rule.describe()
    lines = cfg.text.split("\n")
    anchor_line = cfg.anchors()[name].line - 1
    assert any(breakglass.SECTION_MARK in ln for ln in lines[max(0, anchor_line - 5):anchor_line])
    if cfg.layout != "flat" and "&break-glass" not in before:
        assert cfg.anchors()[name].group == breakglass.GROUP
    # Everything sops read before still reads the same, plus the new member.
    old = SopsConfig(before, str(repo / ".sops.yaml"))
    replaced = {old.anchors()[name].recipient} if name in old.anchors() else set()
    assert len(old.rules) == len(cfg.rules)
    for o, n in zip(old.rules, cfg.rules, strict=True):
        assert [(set(g) - replaced) | {recipient} for g in o.key_groups] == [set(g) for g in n.key_groups]
        assert o.fields == n.fields and o.shamir_threshold == n.shamir_threshold
    again = breakglass.register(str(repo), recipient, identities=[])
    assert not again.changed and again.touched == []
    assert (repo / ".sops.yaml").read_text() == cfg.text


def test_register_rekeys_and_break_glass_alone_opens_with_real_sops(repo, glass, sops_bin, tmp_path):
    identity, recipient = glass
    res = breakglass.register(repo.path, recipient, admin_ids(repo))
    assert sorted(res.changed_files) == ["sops/alpha.yaml", "sops/beta.yaml", "sops/shared.yaml"]
    keyfile = tmp_path / "bg.txt"
    keyfile.write_text(age.format_identity_file(identity))
    for rel in res.changed_files:
        out = sops_decrypt(sops_bin, repo.file(rel), str(keyfile))
        assert out.returncode == 0, out.stderr
    entry = keyinventory.Inventory.load(repo.path).find("break_glass")
    assert entry.kind == "break-glass" and entry.recipient == recipient and entry.drilled is None


def test_register_new_recipient_replaces_the_old_key(repo, glass):
    _unused, first = glass
    breakglass.register(repo.path, first, admin_ids(repo))
    second = age.recipient_from_identity(age.generate_identity())
    res = breakglass.register(repo.path, second, admin_ids(repo))
    assert res.changed and res.anchor == "break_glass"
    cfg = SopsConfig.load(os.path.join(repo.path, ".sops.yaml"))
    assert list(cfg.anchors()).count("break_glass") == 1 and cfg.anchors()["break_glass"].recipient == second
    assert cfg.text.count(breakglass.SECTION_MARK) == 1
    for rel in ("sops/shared.yaml", "sops/alpha.yaml"):
        have = engine.load(repo.file(rel)).recipients[0]
        assert second in have and first not in have


def test_register_refuses_before_writing_when_a_file_cannot_be_opened(repo, glass):
    before = tree_bytes(repo.path)
    with pytest.raises(Exception, match="rekey refused") as exc:
        breakglass.register(repo.path, glass[1], [repo.identities["alpha"]])
    assert "AGE-SECRET" not in str(exc.value)
    assert tree_bytes(repo.path) == before


def test_register_refuses_a_bad_recipient(repo):
    before = tree_bytes(repo.path)
    with pytest.raises(breakglass.BreakGlassError, match="break-glass recipient"):
        breakglass.register(repo.path, "age1notarecipient", admin_ids(repo))
    assert tree_bytes(repo.path) == before


def test_register_multi_group_rule_break_glass_alone_opens(tmp_path, glass, sops_bin):
    """A key in one of several Shamir groups opens one share; in every group it opens the file."""
    repo = make_repo(str(tmp_path), hosts=("alpha",))
    ids = {n: age.generate_identity() for n in ("alice", "bob")}
    rec = {n: age.recipient_from_identity(i) for n, i in ids.items()}
    cfg = os.path.join(repo.path, ".sops.yaml")
    with open(cfg) as fh:
        text = fh.read()
    text = text.replace("  users:\n", f"  users:\n    - &alice {rec['alice']}\n    - &bob {rec['bob']}\n")
    text += ("  - path_regex: sops/vault\\.yaml$\n    shamir_threshold: 2\n    key_groups:\n"
             "      - age:\n          - *alice\n      - age:\n          - *bob\n")
    with open(cfg, "w") as fh:
        fh.write(text)
    engine.encrypt_file(repo.file("sops/vault.yaml"), {"root": "pw"}, [[rec["alice"]], [rec["bob"]]],
                        shamir_threshold=2)
    identity, recipient = glass
    breakglass.register(repo.path, recipient, [repo.identities["admin"], ids["alice"], ids["bob"]])
    assert [recipient in g for g in engine.load(repo.file("sops/vault.yaml")).recipients] == [True, True]
    engine.load(repo.file("sops/vault.yaml")).data_key([identity])
    keyfile = tmp_path / "bg.txt"
    keyfile.write_text(age.format_identity_file(identity))
    out = sops_decrypt(sops_bin, repo.file("sops/vault.yaml"), str(keyfile))
    assert out.returncode == 0 and "pw" in out.stdout, out.stderr


# --------------------------------------------------------------------------- drill
def test_drill_opens_every_file_and_records_the_date(repo, glass):
    identity, recipient = glass
    breakglass.register(repo.path, recipient, admin_ids(repo))
    before = tree_bytes(repo.path)
    checked = breakglass.drill(repo.path, identity, check_mode=True, today="2026-12-01")
    assert checked.changed and tree_bytes(repo.path) == before
    res = breakglass.drill(repo.path, identity, today="2026-12-01")
    assert res.changed and sorted(res.opened) == ["sops/alpha.yaml", "sops/beta.yaml", "sops/shared.yaml"]
    assert keyinventory.Inventory.load(repo.path).find("break_glass").drilled == "2026-12-01"
    after = tree_bytes(repo.path)
    assert set(after) == set(before)  # nothing new on disk, only the inventory changed
    assert [p for p in after if after[p] != before[p]] == [keyinventory.INVENTORY_PATH]
    assert not breakglass.drill(repo.path, identity, today="2026-12-01").changed


def test_drill_lists_files_it_cannot_open_and_records_nothing(repo, glass):
    identity, recipient = glass
    breakglass.register(repo.path, recipient, admin_ids(repo))
    # Written by someone bypassing the rules: only the admin can open it.
    engine.encrypt_file(repo.file("sops/alpha-1.yaml"), {"x": 1}, [[repo.recipient("admin")]])
    inv_before = open(keyinventory.inventory_file(repo.path)).read()
    with pytest.raises(breakglass.BreakGlassError, match=r"opens 3 of 4 sops files; it cannot open "
                       r"sops/alpha-1.yaml: the break-glass key is not one of its recipients") as exc:
        breakglass.drill(repo.path, identity)
    assert exc.value.files == [{"path": "sops/alpha-1.yaml",
                                "error": "the break-glass key is not one of its recipients"}]
    assert open(keyinventory.inventory_file(repo.path)).read() == inv_before


def test_drill_refuses_another_key_and_an_unregistered_repo(repo, glass):
    identity, recipient = glass
    with pytest.raises(breakglass.BreakGlassError, match="no break-glass anchor"):
        breakglass.drill(repo.path, identity)
    breakglass.register(repo.path, recipient, admin_ids(repo))
    other = age.generate_identity()
    with pytest.raises(breakglass.BreakGlassError, match="not the registered break-glass key") as exc:
        breakglass.drill(repo.path, other)
    assert other not in str(exc.value)
    assert keyinventory.Inventory.load(repo.path).find("break_glass").drilled is None


def test_drill_with_shares(repo, glass):
    identity, recipient = glass
    breakglass.register(repo.path, recipient, admin_ids(repo))
    shares = paperkey.split_identity(identity, 5, 3)
    key = breakglass.key_from_input(shares=[shares[4], shares[1], shares[3]])
    assert breakglass.drill(repo.path, key).opened
    with pytest.raises(breakglass.BreakGlassError, match=r"break_glass_shares: 2 distinct share\(s\) given, 3 needed"):
        breakglass.key_from_input(shares=shares[:2])
    with pytest.raises(breakglass.BreakGlassError, match="not both"):
        breakglass.key_from_input(key=identity, shares=shares[:3])


def test_drill_findings():
    r = age.recipient_from_identity(age.generate_identity())
    today = datetime.date(2026, 12, 1)
    entries = [keyinventory.KeyEntry("break_glass", "break-glass", r, "2025-01-01"),
               keyinventory.KeyEntry("host1", "host", r, "2020-01-01")]
    (f,) = breakglass.drill_findings(entries, today=today)
    assert f["kind"] == "break_glass_never_drilled" and f["anchor"] == "break_glass" and f["fix"]
    entries[0].drilled = "2025-11-30"
    (f,) = breakglass.drill_findings(entries, today=today)
    assert f["kind"] == "break_glass_drill_overdue" and "366 days ago" in f["message"]
    assert breakglass.drill_findings(entries, max_age_days=400, today=today) == []
    entries[0].drilled = "2026-06-01"
    assert breakglass.drill_findings(entries, today=today) == []


def test_hooks_anchor_of_and_rule_members(repo, glass):
    cfg_path = os.path.join(repo.path, ".sops.yaml")
    cfg = SopsConfig.load(cfg_path)
    assert breakglass.anchor_of(cfg) is None
    assert breakglass.rule_members(cfg, ["admin", "gamma"]) == ["admin", "gamma"]
    breakglass.register(repo.path, glass[1], admin_ids(repo))
    cfg = SopsConfig.load(cfg_path)
    assert breakglass.anchor_of(cfg) == "break_glass"
    assert breakglass.rule_members(cfg, ["admin"]) == ["admin", "break_glass"]
    assert breakglass.rule_members(cfg, ["break_glass", "admin"]) == ["break_glass", "admin"]
    # A rule created later by exclusive anchors keeps the break-glass key when built with rule_members.
    cfg.ensure_recipient("gamma", age.recipient_from_identity(age.generate_identity()), group="hosts")
    cfg.ensure_rule(r"sops/gamma\.yaml$", anchors=breakglass.rule_members(cfg, ["admin", "gamma"]), exclusive=True)
    cfg.ensure_rule(r"sops/host-keys/gamma\.yaml$", anchors=breakglass.rule_members(cfg, ["admin"]), exclusive=True)
    assert breakglass.uncovered(cfg, "break_glass") == []
    # ensure_in_every_rule: for rules made without it.
    cfg.ensure_rule(r"sops/delta\.yaml$", anchors=["admin"])
    assert breakglass.uncovered(cfg, "break_glass") != []
    assert breakglass.ensure_in_every_rule(cfg)
    assert breakglass.uncovered(cfg, "break_glass") == [] and not breakglass.ensure_in_every_rule(cfg)


# --------------------------------------------------------------------------- recover
def test_recover_replaces_the_lost_admin_key(repo, glass, sops_bin, tmp_path):
    identity, recipient = glass
    breakglass.register(repo.path, recipient, admin_ids(repo))
    git(repo.path, "add", "-A")
    git(repo.path, "commit", "-qm", "bg")
    old_admin = repo.recipient("admin")
    key_file = tmp_path / "home" / ".config" / "sops" / "age" / "keys.txt"
    checked = breakglass.recover(repo.path, identity, admin_key_file=str(key_file), check_mode=True)
    assert checked.changed and checked.recipient is None and not key_file.exists()
    res = breakglass.recover(repo.path, identity, admin_key_file=str(key_file))
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    new_identity = age.read_identity_file(str(key_file))[0]
    assert res.recipient == age.recipient_from_identity(new_identity) and res.anchor == "admin"
    assert new_identity not in repr(res)
    cfg = SopsConfig.load(os.path.join(repo.path, ".sops.yaml"))
    assert cfg.anchors()["admin"].recipient == res.recipient
    assert all(res.recipient in r.recipients and old_admin not in r.recipients for r in cfg.rules)
    assert res.opened == 3 and res.not_opened == []
    for rel in ("sops/shared.yaml", "sops/alpha.yaml", "sops/beta.yaml"):
        out = sops_decrypt(sops_bin, repo.file(rel), str(key_file))
        assert out.returncode == 0, out.stderr
    entry = keyinventory.Inventory.load(repo.path).find("admin", "admin")
    assert entry.recipient == res.recipient
    again = breakglass.recover(repo.path, identity, admin_key_file=str(key_file))
    assert not again.changed and again.touched == []


def test_recover_beside_the_lost_key_and_with_a_given_recipient(repo, glass):
    identity, recipient = glass
    breakglass.register(repo.path, recipient, admin_ids(repo))
    new = age.recipient_from_identity(age.generate_identity())
    with pytest.raises(breakglass.BreakGlassError, match="already holds another key"):
        breakglass.recover(repo.path, identity, admin_anchor="admin", admin_recipient=new, replace=False)
    res = breakglass.recover(repo.path, identity, admin_anchor="admin2", admin_recipient=new, replace=False)
    cfg = SopsConfig.load(os.path.join(repo.path, ".sops.yaml"))
    assert cfg.anchors()["admin2"].group == "users"
    assert all(new in r.recipients and repo.recipient("admin") in r.recipients for r in cfg.rules)
    assert sorted(res.changed_files) == ["sops/alpha.yaml", "sops/beta.yaml", "sops/shared.yaml"]


def test_recover_refuses_a_key_file_others_could_read(repo, glass, tmp_path):
    identity, recipient = glass
    breakglass.register(repo.path, recipient, admin_ids(repo))
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    before = tree_bytes(repo.path)
    with pytest.raises(Exception, match="another user could read or replace"):
        breakglass.recover(repo.path, identity, admin_key_file=str(shared / "keys.txt"))
    assert not (shared / "keys.txt").exists()
    assert tree_bytes(repo.path) == before


# --------------------------------------------------------------------------- generate
def _files_holding(root, needles):
    hits = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            try:
                data = open(path, "rb").read().decode("latin-1").upper()
            except OSError:
                continue
            if any(n.upper() in data for n in needles):
                hits.append(path)
    return hits


def test_generate_whole_key_page(tmp_path):
    out = tmp_path / "pages"
    checked = breakglass.generate(str(out), "home", check_mode=True)
    assert checked.changed and checked.recipient is None and not out.exists()
    res = breakglass.generate(str(out), "home", today="2026-12-01")
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    (page,) = res.pages
    assert os.path.basename(page) == "home-break-glass.html" and stat.S_IMODE(os.stat(page).st_mode) == 0o600
    text = open(page).read()
    assert res.recipient in text and "home" in text and "2026-12-01" in text
    again = breakglass.generate(str(out), "home")
    assert not again.changed and again.recipient == res.recipient


def test_generate_shares_write_no_whole_key_anywhere(tmp_path):
    out = tmp_path / "pages"
    res = breakglass.generate(str(out), "home", shares=5, threshold=3)
    assert [os.path.basename(p) for p in res.pages] == [f"home-break-glass-share-{i}-of-5.html" for i in range(1, 6)]
    import re

    texts = [open(p).read() for p in res.pages]
    mnemonics = [" ".join(w for _n, row, _c in re.findall(
        r'<tr><td class="n">(\d+)</td><td>([^<]*)</td><td class="sum">([0-9a-f]{4})</td></tr>', t) for w in row.split())
        for t in texts]
    identity = paperkey.combine_shares(mnemonics[1:4])
    assert age.recipient_from_identity(identity) == res.recipient
    assert _files_holding(str(tmp_path), [identity, identity[16:]]) == []


def test_generate_refuses_bad_input_before_making_a_key(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    with pytest.raises(UnsafePathError, match="others could replace the pages"):
        breakglass.generate(str(open_dir), "home")
    assert os.listdir(open_dir) == []
    with pytest.raises(breakglass.BreakGlassError, match="give both shares and threshold"):
        breakglass.generate(str(tmp_path / "x"), "home", shares=5)
    with pytest.raises(paperkey.PaperKeyError, match="threshold 6 of 5"):
        breakglass.generate(str(tmp_path / "x"), "home", shares=5, threshold=6)
    with pytest.raises(breakglass.BreakGlassError, match="fleet name"):
        breakglass.generate(str(tmp_path / "x"), "../etc")
    assert not (tmp_path / "x").exists()


def test_recover_refuses_an_existing_key_file_others_can_read(repo, glass, tmp_path):
    identity, recipient = glass
    breakglass.register(repo.path, recipient, admin_ids(repo))
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    key_file = home / "keys.txt"
    key_file.write_text(age.format_identity_file(age.generate_identity()))
    os.chmod(key_file, 0o640)
    before = tree_bytes(repo.path)
    with pytest.raises(breakglass.BreakGlassError, match=r"keys\.txt has mode 0640 \(others can read it\)"):
        breakglass.recover(repo.path, identity, admin_key_file=str(key_file))
    assert tree_bytes(repo.path) == before
    os.chmod(key_file, 0o600)  # once private again it is taken as the new admin key
    res = breakglass.recover(repo.path, identity, admin_key_file=str(key_file))
    assert res.recipient == age.recipient_from_identity(age.read_identity_file(str(key_file))[0])
