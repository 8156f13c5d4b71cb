"""audit_report.py and audit_html.py on a small repository: where each finding links, per-host data, group counts.

The 200-host fleet in headless Chromium is tests/integration/test_audit_fleet_report.py.
"""

from __future__ import annotations

import json

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, audit, audit_html, audit_report, keyinventory
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig

from tests.lib.browser import Page
from tests.lib.secrets_repo import make_repo


@pytest.fixture
def repo(tmp_path):
    r = make_repo(str(tmp_path), hosts=("alpha", "beta", "gamma"), git=False)
    cfg = SopsConfig.load(r.file(".sops.yaml"))
    cfg.ensure_recipient("retired", age.recipient_from_identity(age.generate_identity()), group="users")
    cfg.ensure_recipient("beta-again", r.recipient("beta"), group="users")
    cfg.save()
    keyinventory.record(r.path, "alpha", "host", r.recipient("alpha"), host="alpha", created="2020-01-01")
    keyinventory.record(r.path, "beta", "host", r.recipient("beta"), host="beta")
    return r


def build(repo, **kw):
    groups = {"alpha": ["web", "prod"], "beta": ["web"], "delta": ["db"]}
    res = audit.run(repo.path, hosts=["alpha", "beta", "delta"], host_groups=groups, max_age_days={"host": 365}, **kw)
    return res, audit_report.build(res, "audit")


def test_each_finding_links_to_the_row_it_is_about(repo):
    res, rep = build(repo)
    host_id = {h["name"]: h["id"] for h in rep["hosts"]}
    anchor_id = {a["name"]: a["id"] for a in rep["anchors"]}
    by_kind = {f["kind"]: f for f in rep["findings"]}
    assert by_kind["host_without_key"]["target"] == host_id["delta"]
    assert by_kind["key_too_old"]["target"] == host_id["alpha"]
    assert by_kind["unused_anchor"]["target"] in (anchor_id["retired"], anchor_id["beta-again"])
    dup = by_kind["duplicate_recipient"]
    assert dup["target"] == rep["duplicate_recipients"][0]["id"] and sorted(dup["anchors"]) == ["beta", "beta-again"]
    # The duplicate is listed on the host whose key it is, too.
    assert dup["id"] in next(h for h in rep["hosts"] if h["name"] == "beta")["findings"]
    assert [f["id"] for f in rep["findings"]] == [f["id"] for f in res.findings]
    assert len({f["id"] for f in rep["findings"]}) == len(rep["findings"])


def test_hosts_carry_groups_anchors_key_ages_and_files(repo):
    _res, rep = build(repo)
    hosts = {h["name"]: h for h in rep["hosts"]}
    assert sorted(hosts) == ["alpha", "beta", "delta", "gamma"]
    assert hosts["alpha"]["groups"] == ["prod", "web"] and hosts["gamma"]["groups"] == ["ungrouped"]
    assert hosts["gamma"]["in_inventory"] is False and hosts["delta"]["anchors"] == []
    (key,) = hosts["alpha"]["keys"]
    assert key["overdue"] and key["age_days"] > 365 and key["max_age_days"] == 365
    assert not hosts["beta"]["keys"][0]["overdue"]
    assert hosts["alpha"]["files"] == ["sops/alpha.yaml", "sops/shared.yaml"]
    assert hosts["alpha"]["severity"] == "warning" and hosts["gamma"]["severity"] == "ok"
    shared = next(f for f in rep["files"] if f["path"] == "sops/shared.yaml")
    assert shared["hosts"] == ["alpha", "beta", "gamma"] and "beta-again" in shared["anchors"]


def test_group_counts_follow_the_hosts(repo):
    _res, rep = build(repo)
    by_group = rep["summary"]["by_group"]
    for group, counts in by_group.items():
        members = [h for h in rep["hosts"] if group in h["groups"]]
        ids = {i for h in members for i in h["findings"]}
        sev = [f["severity"] for f in rep["findings"] if f["id"] in ids]
        assert counts == {"hosts": len(members), "hosts_with_findings": sum(1 for h in members if h["findings"]),
                          "error": sev.count("error"), "warning": sev.count("warning")}
    assert by_group["web"]["hosts"] == 2 and set(by_group) == {"web", "prod", "db", "ungrouped"}
    s = rep["summary"]
    assert s["errors"] + s["warnings"] == s["findings"] == len(rep["findings"]) and s["keys_overdue"] == 1


def test_html_links_all_land_and_names_are_escaped(repo):
    res = audit.run(repo.path, hosts=["alpha", "<script>alert(1)</script>"],
                    host_groups={"<script>alert(1)</script>": ["<img src=x onerror=alert(2)>"], "alpha": ["web"]})
    rep = audit_report.build(res, "audit of <b>repo</b>")
    text = audit_html.render(rep)
    page = Page(text)
    assert page.links and not set(page.links) - set(page.ids)
    assert len(page.ids) == len(set(page.ids))
    for f in rep["findings"]:
        assert f["id"] in page.ids and f["target"] in page.ids and f["id"] in page.links
    assert "<script>alert" not in text and "<img src=x" not in text and "<b>repo" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&lt;img src=x onerror=alert(2)&gt;" in text
    assert page.scripts == 1 and "AGE-SECRET-KEY" not in text
    json.loads(audit_report.to_json(rep))
