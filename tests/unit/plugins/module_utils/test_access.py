"""access.py: .sops.yaml rules from the inventory's secret categories, rekey, rotate what a host lost."""

from __future__ import annotations

import copy
import os
import re

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import access, fleet, fsutil
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig

from tests.lib.access_fleet import (
    CATEGORIES,
    CATEGORY_FILES,
    EXPECTED,
    GROUPS,
    HOST_SETTINGS,
    HOSTS,
    inventory_groups,
    make_access_repo,
    tree,
)
from tests.lib.secrets_repo import sops_decrypt

MARK = "# managed by nixfleet.sops access: category "


def model(groups=GROUPS, categories=CATEGORIES, hosts=HOST_SETTINGS, **kw):
    return access.build_model(categories, inventory_groups(groups), hosts, kw.pop("admins", ["admin"]), **kw)


def moved(host, src, dst):
    g = copy.deepcopy(GROUPS)
    g[src].remove(host)
    g[dst].append(host)
    return g


def managed(repo):
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    return {name: rule.anchors for name, rule in access.managed_rules(cfg).items()}


def run(repo, m, **kw):
    return access.run(repo.path, m, [repo.identities["admin"]], **kw)


@pytest.fixture
def repo(tmp_path):
    return make_access_repo(str(tmp_path))


# --------------------------------------------------------------------------- the model
def test_three_groups_six_hosts_give_exactly_the_expected_rules(repo):
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    hand_written = cfg.text
    rec = access.reconcile(cfg, model())
    assert {n: r.anchors for n, r in access.managed_rules(rec.config).items()} == EXPECTED
    assert [r["action"] for r in rec.rules] == ["created"] * 5
    # Each managed rule is a single key group naming exactly those anchors, in that order.
    for name, rule in access.managed_rules(rec.config).items():
        assert rule.members == [["*" + a for a in EXPECTED[name]]]
        assert rule.path_regex == (r"^sops/shared\.yaml$" if name == "base" else CATEGORIES[name]["path_regex"])
    # The hand-written part (header, anchors, per-host rules and their comments) is byte for byte the same.
    assert rec.config.text.startswith(hand_written)
    added = rec.config.text[len(hand_written):].splitlines()
    assert [ln.strip() for ln in added if ln.lstrip().startswith("#")] == [
        MARK + f"{n} (edit the inventory, not this rule)" for n in CATEGORIES]
    # sops reads the hand-written rules as before.
    for h in HOSTS:
        assert rec.config.rule_for(f"sops/{h}.yaml").anchors == ["admin", h, f"rain_{h}"]
    assert rec.break_glass == "break_glass" and rec.hosts_without_anchor == []


def test_user_keys_add_each_hosts_user_anchor():
    m = access.build_model(CATEGORIES, inventory_groups(), {}, ["admin"], user_keys=True,
                           host_users={h: "rain" for h in HOSTS})
    anchors = {a: None for a in ["admin", "break_glass", *HOSTS, *("rain_" + h for h in HOSTS)]}
    wanted, lacking, _unused = access.wanted_anchors(m, anchors)
    assert wanted["desktop"] == ["admin", "break_glass", "d1", "rain_d1", "d2", "rain_d2"]
    assert lacking == []
    m2 = access.build_model(CATEGORIES, inventory_groups(), {}, ["admin"], user_keys=True)
    _unused, lacking, _unused = access.wanted_anchors(m2, anchors)
    assert {h["host"] for h in lacking} == set(HOSTS) and all(h["anchor"] is None for h in lacking)


def test_host_without_anchor_is_left_out_and_reported(repo):
    g = copy.deepcopy(GROUPS)
    g["desktops"].append("newbox")
    rec = access.reconcile(SopsConfig.load(repo.file(".sops.yaml")), model(groups=g))
    assert access.managed_rules(rec.config)["desktop"].anchors == EXPECTED["desktop"]
    assert rec.hosts_without_anchor == [{"host": "newbox", "anchor": "newbox",
                                         "categories": ["base", "desktop", "cli"],
                                         "reason": "no anchor &newbox in .sops.yaml"}]


def test_break_glass_option():
    anchors = {"admin": 1, "d1": 1, "d2": 1, "s1": 1, "s2": 1, "v1": 1, "v2": 1}
    wanted, _unused, glass = access.wanted_anchors(model(), anchors)  # no &break_glass: none used
    assert glass == "" and wanted["desktop"] == ["admin", "d1", "d2"]
    wanted, _unused, glass = access.wanted_anchors(model(break_glass_anchor="paper"), {**anchors, "paper": 1})
    assert glass == "paper" and wanted["desktop"][:2] == ["admin", "paper"]
    with pytest.raises(access.AccessError, match=r"break-glass anchor &paper is not in \.sops\.yaml"):
        access.wanted_anchors(model(break_glass_anchor="paper"), anchors)
    wanted, _unused, glass = access.wanted_anchors(model(break_glass_anchor=""), {**anchors, "break_glass": 1})
    assert glass == "" and "break_glass" not in wanted["desktop"]


@pytest.mark.parametrize(
    ("categories", "groups_", "hosts", "admins", "message"),
    [
        ({"desktop": {"path_regex": "x", "groups": ["desktop"]}}, None, {}, ["admin"],
         r"nixfleet_secret_categories\.desktop\.groups: no inventory group 'desktop'"),
        ({"desktop": {"path_regex": "x", "path": "y", "groups": []}}, None, {}, ["admin"],
         "give exactly one of path_regex and path"),
        ({"desktop": {"path_regex": "x", "group": ["desktops"]}}, None, {}, ["admin"], r"unknown key\(s\) group"),
        ({"a": {"path_regex": "x"}, "b": {"path_regex": "x"}}, None, {}, ["admin"], "a and b have the same path_regex"),
        ({"bad name": {"path_regex": "x"}}, None, {}, ["admin"], "category name 'bad name' is not allowed"),
        ({"a": {"path_regex": "(?<=x)y"}}, None, {}, ["admin"], r"nixfleet_secret_categories\.a: path_regex"),
        ({"a": {"path": "/etc/x.yaml"}}, None, {}, ["admin"], "must be a path relative to the secrets repository"),
        (CATEGORIES, None, {"d1": {"add": ["gaming"]}}, ["admin"],
         "host d1: nixfleet_categories names unknown category gaming"),
        (CATEGORIES, None, {"d1": ["cli"]}, ["admin"],
         "host d1: nixfleet_categories must be a mapping with add and/or remove"),
        (CATEGORIES, None, {"d1": {"add": ["cli"], "remove": ["cli"]}}, ["admin"],
         "both adds and removes cli"),
        (CATEGORIES, None, {}, [], "nixfleet_admin_anchors is empty"),
    ],
)
def test_model_errors_name_the_setting(categories, groups_, hosts, admins, message):
    with pytest.raises(access.AccessError, match=message):
        access.build_model(categories, inventory_groups(groups_ or GROUPS), hosts, admins)


def test_path_is_quoted_for_re2():
    m = access.build_model({"x": {"path": "./sops/a+b (1).yaml"}}, inventory_groups(), {}, ["admin"])
    assert m.categories["x"].path_regex == r"^sops/a\+b \(1\)\.yaml$"


# --------------------------------------------------------------------------- .sops.yaml edits
def test_hand_written_rule_with_the_same_regex_is_refused(repo):
    cats = {**CATEGORIES, "d1only": {"path_regex": r"sops/d1\.yaml$", "groups": []}}
    before = open(repo.file(".sops.yaml"), "rb").read()
    with pytest.raises(access.AccessError) as err:
        run(repo, model(categories=cats))
    msg = str(err.value)
    assert "line 21" in msg and "hand-written rule 'sops/d1\\\\.yaml$'" in msg and MARK + "d1only" in msg
    assert open(repo.file(".sops.yaml"), "rb").read() == before


def test_marker_hands_a_rule_over_and_exclusive_members_follow(repo):
    text = open(repo.file(".sops.yaml")).read().replace(
        "  - path_regex: sops/d1\\.yaml$", "  " + MARK + "d1only\n  - path_regex: sops/d1\\.yaml$")
    with open(repo.file(".sops.yaml"), "w") as fh:
        fh.write(text)
    cats = {**CATEGORIES, "d1only": {"path_regex": r"sops/d1\.yaml$", "hosts": ["d1"]}}
    rec = access.reconcile(SopsConfig.load(repo.file(".sops.yaml")), model(categories=cats))
    rule = access.managed_rules(rec.config)["d1only"]
    assert rule.anchors == ["admin", "d1", "break_glass"]  # rain_d1 removed (exclusive), break_glass added
    assert next(r for r in rec.rules if r["category"] == "d1only") == {
        "category": "d1only", "path_regex": r"sops/d1\.yaml$", "action": "updated", "added": ["break_glass"],
        "removed": ["rain_d1"]}
    # The rules around it are untouched, comments included.
    for h in ("d2", "s1"):
        block = f"  # {h}: its own secrets, readable by its user key too\n  - path_regex: sops/{h}\\.yaml$\n"
        assert block in rec.config.text


def test_two_markers_for_one_category_is_an_error(repo):
    run(repo, model())
    text = open(repo.file(".sops.yaml")).read().replace(
        "  - path_regex: sops/d1\\.yaml$", "  " + MARK + "cli\n  - path_regex: sops/d1\\.yaml$")
    with pytest.raises(access.AccessError, match="two rules are marked as managed for category 'cli'"):
        access.managed_rules(SopsConfig(text, repo.file(".sops.yaml")))


def test_renamed_category_keeps_its_rule(repo):
    run(repo, model())
    cats = dict(CATEGORIES)
    cats["workstation"] = cats.pop("desktop")
    rec = access.reconcile(SopsConfig.load(repo.file(".sops.yaml")), model(categories=cats))
    assert next(r for r in rec.rules if r["category"] == "workstation")["action"] == "renamed"
    assert MARK + "desktop" not in rec.config.text and MARK + "workstation" in rec.config.text
    assert access.managed_rules(rec.config)["workstation"].anchors == EXPECTED["desktop"]


def test_category_gone_removes_its_rule_and_marker_or_refuses(repo):
    run(repo, model())
    cats = {k: v for k, v in CATEGORIES.items() if k != "cli"}
    # sops/cli.yaml would be left without any rule: refused, nothing written.
    before = tree(repo)
    with pytest.raises(access.AccessError, match=r"would leave sops/cli\.yaml without a creation rule"):
        run(repo, model(categories=cats, hosts={}))
    assert tree(repo) == before
    # With another rule covering it, the managed rule goes (marker too); the file follows the other rule.
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_rule(r"sops/.*\.yaml$", ["admin"])
    cfg.save()
    res = run(repo, model(categories=cats, hosts={}))
    assert [r for r in res.rules if r["action"] != "unchanged"] == [
        {"category": "cli", "path_regex": r"sops/cli\.yaml$", "action": "removed", "added": [],
         "removed": EXPECTED["cli"]}]
    text = open(repo.file(".sops.yaml")).read()
    assert MARK + "cli" not in text and r"sops/cli\.yaml$" not in text
    assert res.changed_files == [".sops.yaml", "sops/cli.yaml"] and res.rotated_files == ["sops/cli.yaml"]
    assert engine.load(repo.file("sops/cli.yaml")).recipients == [[repo.recipient("admin")]]


def test_shadowed_managed_rule_is_reported(repo):
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_rule(r"sops/.*\.yaml$", ["admin"])
    cfg.save()
    res = run(repo, model(), check_mode=True)
    assert any(w.startswith("sops/cli.yaml matches category cli's path_regex but sops picks the earlier rule")
               for w in res.warnings)


# --------------------------------------------------------------------------- files: rekey, rotate
def test_first_run_then_second_run_changes_nothing(repo, sops_bin):
    res = run(repo, model())
    assert res.changed_files == [".sops.yaml", *sorted(CATEGORY_FILES.values())]
    assert res.rotated_files == []  # files only gained readers
    for cat, rel in CATEGORY_FILES.items():
        assert engine.load(repo.file(rel)).recipients[0] == [repo.recipient(a) for a in EXPECTED[cat]]
    for h in HOSTS:
        expect = {c for c, members in EXPECTED.items() if h in members}
        for cat, rel in CATEGORY_FILES.items():
            out = sops_decrypt(sops_bin, repo.file(rel), repo.keyfile(h))
            assert (out.returncode == 0) == (cat in expect), (h, rel, out.stderr)
    assert sorted(fsutil_pending(repo)) == res.changed_files
    after = tree(repo)
    again = run(repo, model())
    assert not again.changed and again.changed_files == [] and again.changes == []
    assert {r["action"] for r in again.rules} == {"unchanged"}
    assert tree(repo) == after


def fsutil_pending(repo):
    from ansible_collections.nixfleet.sops.plugins.module_utils import vcs

    return vcs.pending_paths(repo.path)


def test_moving_a_host_changes_exactly_the_expected_files(repo, sops_bin):
    run(repo, model())
    before = tree(repo)
    admin = [repo.identities["admin"]]
    meta = {rel: engine.load(repo.file(rel)) for rel in CATEGORY_FILES.values()}
    keys = {rel: sf.data_key(admin) for rel, sf in meta.items()}
    meta = {rel: sf.metadata for rel, sf in meta.items()}
    m = model(groups=moved("d2", "desktops", "servers"))
    res = run(repo, m)
    changed = {r["category"]: (r["added"], r["removed"]) for r in res.rules if r["action"] != "unchanged"}
    assert changed == {"desktop": ([], ["d2"]), "server": (["d2"], []), "network": (["d2"], []),
                       "cli": ([], ["d2"])}
    assert res.changed_files == [".sops.yaml", "sops/cli.yaml", "sops/desktop.yaml", "sops/network.yaml",
                                 "sops/server.yaml"]
    assert res.rotated_files == ["sops/cli.yaml", "sops/desktop.yaml"]
    assert {c["path"]: (c["added"], c["removed"], c["rotated"]) for c in res.changes} == {
        "sops/desktop.yaml": ([], ["d2"], True), "sops/cli.yaml": ([], ["d2"], True),
        "sops/server.yaml": (["d2"], [], False), "sops/network.yaml": (["d2"], [], False)}
    after = tree(repo)
    assert {rel for rel in before if after[rel] != before[rel]} == set(res.changed_files)
    # Everything before the first managed rule (header, anchors, hand-written rules, comments) is byte-identical.
    cut = before[".sops.yaml"].index(MARK.encode())
    assert after[".sops.yaml"][:cut] == before[".sops.yaml"][:cut]
    assert before[".sops.yaml"][:cut].count(b"- path_regex: ") == len(HOSTS)
    # Gained: same data key (rekey keeps values, mac, lastmodified); lost: a new data key and mac
    # (lastmodified has a resolution of a second: the playbook test checks it).
    for rel in ("sops/server.yaml", "sops/network.yaml"):
        new = engine.load(repo.file(rel))
        assert (new.metadata.mac, new.metadata.lastmodified) == (meta[rel].mac, meta[rel].lastmodified)
        assert new.data_key(admin) == keys[rel]
    for rel in ("sops/desktop.yaml", "sops/cli.yaml"):
        new = engine.load(repo.file(rel))
        assert new.metadata.mac != meta[rel].mac and new.data_key(admin) != keys[rel]
    d2 = repo.keyfile("d2")
    for rel, readable in (("sops/server.yaml", True), ("sops/network.yaml", True), ("sops/shared.yaml", True),
                          ("sops/desktop.yaml", False), ("sops/cli.yaml", False), ("sops/d2.yaml", True)):
        assert (sops_decrypt(sops_bin, repo.file(rel), d2).returncode == 0) == readable, rel
    assert run(repo, m).changed_files == []


def test_check_mode_writes_nothing_and_reports_the_same(repo):
    run(repo, model())
    before = tree(repo)
    git_before = tree_git(repo)
    m = model(groups=moved("d2", "desktops", "servers"))
    check = run(repo, m, check_mode=True)
    assert tree(repo) == before and tree_git(repo) == git_before
    real = run(repo, m)
    assert check.changed and check.changed_files == real.changed_files
    assert check.rotated_files == real.rotated_files and check.changes == real.changes
    assert check.config_after == real.config_after
    diff = check.diff(repo.path)
    assert "- *d2" in diff[0]["before"] and diff[0]["before"] != diff[0]["after"]
    assert "sops/desktop.yaml: d2\n" in diff[1]["before"] and "sops/server.yaml: d2\n" in diff[1]["after"]
    assert "sops/desktop.yaml: data key (new)\n" in diff[1]["after"]


def tree_git(repo):
    git = os.path.join(repo.path, ".git")
    return {name: open(os.path.join(git, name), "rb").read() if os.path.isfile(os.path.join(git, name)) else None
            for name in sorted(os.listdir(git))}


def test_interrupted_run_rotates_next_time(repo):
    """Files rekeyed by a run that stopped before .sops.yaml was written still get a new data key."""
    run(repo, model())
    m = model(groups=moved("d2", "desktops", "servers"))
    rec = access.reconcile(SopsConfig.load(repo.file(".sops.yaml")), m)
    fleet.rekey(repo.path, [repo.identities["admin"]], config=rec.config)  # the rekey half, config not saved
    mac = engine.load(repo.file("sops/desktop.yaml")).metadata.mac
    res = run(repo, m)
    assert res.rotated_files == ["sops/cli.yaml", "sops/desktop.yaml"]
    assert {c["path"] for c in res.changes if c["rekey"]} == set()
    assert engine.load(repo.file("sops/desktop.yaml")).metadata.mac != mac


def test_refuses_and_writes_nothing_without_an_identity(repo):
    run(repo, model())
    before = tree(repo)
    with pytest.raises(fleet.FleetError, match="nothing was written"):
        access.run(repo.path, model(groups=moved("d2", "desktops", "servers")), [repo.identities["d1"]])
    assert tree(repo) == before


def test_run_holds_the_repo_lock(repo):
    with fsutil.repo_lock(repo.path, purpose="another run"):
        import threading

        errors = []
        t = threading.Thread(target=lambda: _catch(errors, lambda: run(repo, model())))
        t.start()
        t.join()
    assert errors and isinstance(errors[0], fsutil.LockedError) and "another run" in str(errors[0])


def _catch(errors, fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        errors.append(exc)


# --------------------------------------------------------------------------- audit
def test_drift_findings_follow_the_inventory_and_the_files(repo):
    def findings():
        sc = fleet.scan(repo.path, strict=False)
        return access.drift_findings(sc.config, m, sc.files)

    m = model()
    got = sorted((f["kind"], f.get("category") or f.get("path")) for f in findings())
    assert got == sorted([("access_rule_missing", c) for c in CATEGORIES]
                         + [("access_file_drift", rel) for rel in CATEGORY_FILES.values()])
    run(repo, m)
    assert findings() == []
    m = model(groups=moved("d2", "desktops", "servers"))
    got = {(f["kind"], f.get("category") or f.get("path")) for f in findings()}
    assert got == {("access_rule_drift", c) for c in ("desktop", "server", "network", "cli")} | {
        ("access_file_drift", f"sops/{c}.yaml") for c in ("desktop", "server", "network", "cli")}
    run(repo, m)
    assert findings() == []
    # A file brought out of step behind the model's back.
    fleet.rekey(repo.path, [repo.identities["admin"]], include=[re.escape("sops/server.yaml")],
                config=_with_rule(repo, r"sops/server\.yaml$", ["admin"]))
    f = findings()
    assert [(x["kind"], x["path"]) for x in f] == [("access_file_drift", "sops/server.yaml")]
    assert "missing: break_glass, d2, s1, s2" in f[0]["message"] and f[0]["severity"] == "error"


def _with_rule(repo, regex, anchors):
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_rule(regex, anchors, exclusive=True)
    return cfg


def test_drift_reports_a_conflict_instead_of_raising(repo):
    cats = {**CATEGORIES, "d1only": {"path_regex": r"sops/d1\.yaml$"}}
    sc = fleet.scan(repo.path, strict=False)
    f = access.drift_findings(sc.config, model(categories=cats), sc.files)
    assert [x["kind"] for x in f] == ["access_conflict"] and "hand-written" in f[0]["message"]


def test_orphan_with_the_regex_of_an_earlier_hand_written_rule_is_not_confused_with_it(repo):
    # A managed rule whose category is gone, shadowed by an earlier hand-written rule with the same regex.
    text = open(repo.file(".sops.yaml")).read() + (
        "  " + MARK + "old (edit the inventory, not this rule)\n"
        "  - path_regex: sops/d1\\.yaml$\n    key_groups:\n      - age:\n          - *admin\n")
    with open(repo.file(".sops.yaml"), "w") as fh:
        fh.write(text)
    with pytest.raises(access.AccessError, match="cannot remove the managed rule of category old .* the earlier rule "
                                                 "at line 21 has the same path_regex"):
        access.reconcile(SopsConfig.load(repo.file(".sops.yaml")), model())
