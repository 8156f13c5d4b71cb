"""The fleet audit reports for 200 hosts: the module writes JSON and HTML, headless Chromium renders the page.

The screenshot is kept as an artifact in tests/output/audit_fleet.png (gitignored).
"""

from __future__ import annotations

import json
import os
import re

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import keyinventory
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig

from tests.lib.browser import Page, dump_dom, png_stats, screenshot
from tests.lib.inproc import run_module_inproc
from tests.lib.runner import REPO
from tests.lib.secrets_repo import make_repo

OUTPUT = os.path.join(REPO, "tests", "output")
HOSTILE = "<script>alert(1)</script>"
HOSTILE_GROUP = "<img src=x onerror=alert(2)>"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """200 hosts in overlapping groups, one host only in .sops.yaml, one hostile inventory name; planted faults."""
    base = tmp_path_factory.mktemp("fleet")
    hosts = [f"web-{i:03d}" for i in range(200)]
    repo = make_repo(str(base), hosts=hosts, git=False)
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_recipient("web-001-old", repo.recipient("web-001"), group="users")
    cfg.save()
    for i, h in enumerate(hosts[:20]):
        keyinventory.record(repo.path, h, "host", repo.recipient(h), host=h,
                            created="2020-01-01" if i % 5 == 2 else None)
    inventory = hosts[:199] + [HOSTILE]  # web-199 is only an anchor
    groups = {h: ["nixos", "db" if i % 4 == 0 else "web", "prod" if i % 2 else "staging"]
              for i, h in enumerate(inventory)}
    groups[HOSTILE] = ["nixos", HOSTILE_GROUP]
    args = {"repo": repo.path, "hosts": inventory, "host_groups": groups, "max_age_days": {"host": 365},
            "report_json": str(base / "out" / "audit.json"), "report_path": str(base / "out" / "audit.html")}
    res = run_module_inproc("sops_audit", args)
    assert not res.failed, res.msg
    return repo, args, res


def test_json_report_is_the_module_result(fleet):
    _repo, args, res = fleet
    report = json.loads(open(args["report_json"]).read())
    assert res.changed and report["schema"] == "nixfleet.sops/audit-report/1"
    assert report["findings"] == res.result["findings"] and report["summary"] == res.result["summary"]
    s = report["summary"]
    assert s["hosts"] == len(report["hosts"]) == 201 and s["files"] == 201
    assert s["keys_overdue"] == 4 and s["duplicate_recipients"] == 1
    assert s["errors"] == sum(1 for f in report["findings"] if f["severity"] == "error")
    assert s["by_kind"]["key_too_old"] == 4 and s["by_kind"]["host_without_key"] == 1
    hosts = {h["name"]: h for h in report["hosts"]}
    assert hosts["web-199"]["groups"] == ["ungrouped"] and not hosts["web-199"]["in_inventory"]
    assert hosts["web-002"]["keys"][0]["overdue"] and hosts["web-003"]["keys"][0]["overdue"] is False
    assert hosts[HOSTILE]["findings"] and hosts[HOSTILE]["anchors"] == []
    dup = report["duplicate_recipients"][0]
    assert sorted(dup["anchors"]) == ["web-001", "web-001-old"]
    on_host = [f["kind"] for f in report["findings"] if f["id"] in hosts["web-001"]["findings"]]
    assert "duplicate_recipient" in on_host
    assert "AGE-SECRET-KEY" not in open(args["report_json"]).read()


def test_reports_are_idempotent_and_check_mode_writes_nothing(fleet, tmp_path):
    _repo, args, _res = fleet
    again = run_module_inproc("sops_audit", args)
    assert not again.failed and not again.changed
    elsewhere = dict(args, report_json=str(tmp_path / "a.json"), report_path=str(tmp_path / "a.html"))
    check = run_module_inproc("sops_audit", elsewhere, check=True)
    assert check.changed and not os.listdir(tmp_path)


def test_html_structure_matches_the_json(fleet):
    _repo, args, _res = fleet
    text = open(args["report_path"]).read()
    report = json.loads(open(args["report_json"]).read())
    page = Page(text)
    assert not set(page.links) - set(page.ids), "a link without a target"
    for f in report["findings"]:
        assert f["id"] in page.links and f["target"] in page.ids
    # One row per host and group, except nixos (it holds every grouped host): a host shows once per group.
    sections = re.findall(r"<section class='grp' id='(g-\d+)' data-group='([^']*)'>", text)
    assert [g for _i, g in sections] == ["&lt;img src=x onerror=alert(2)&gt;", "db", "prod", "staging", "web",
                                         "ungrouped"]
    for group, counts in report["summary"]["by_group"].items():
        cells = re.search(r"<tr><td>(?:<a href=#g-\d+>)?" + re.escape(group.replace("<", "&lt;").replace(">", "&gt;"))
                          + r"(?:</a>)?</td><td>(\d+)</td><td>(\d+)</td><td[^>]*>(\d+)</td><td[^>]*>(\d+)</td>", text)
        assert cells, group
        wanted = ("hosts", "hosts_with_findings", "error", "warning")
        assert [int(c) for c in cells.groups()] == [counts[k] for k in wanted]
    assert len(re.findall(r"data-text='web-007 [^']*'><td class='mono'>web-007</td>", text)) == 2  # web and prod
    assert HOSTILE not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text and page.scripts == 1
    assert "<img src=x" not in text and "AGE-SECRET-KEY" not in text
    # Keys past the policy are highlighted on each row of their host (one per group other than nixos).
    rows = sum(len(set(h["groups"]) - {"nixos"}) for h in report["hosts"] for k in h["keys"] if k["overdue"])
    assert rows == 2 * report["summary"]["keys_overdue"]
    assert len(re.findall(r"<span class='old'", text)) == rows


def test_page_renders_in_headless_chromium(fleet, tmp_path):
    _repo, args, _res = fleet
    os.makedirs(OUTPUT, exist_ok=True)
    png = os.path.join(OUTPUT, "audit_fleet.png")
    if os.path.exists(png):
        os.unlink(png)
    screenshot(args["report_path"], png, tmp_path, window_size="1400,2000")
    width, height, ink = png_stats(png)
    # A blank page of this size filters to ~0.02% non-zero bytes; text and tables to several percent.
    assert (width, height) == (1400, 2000) and ink > 0.005, ink
    # The script ran: the row counter is filled in, and ?sev=error shows only rows with errors.
    dom = Page(dump_dom(args["report_path"], tmp_path, "all"))
    rows = dom.rows.values()
    assert all("hidden" not in r for r in rows)
    filtered = Page(dump_dom(args["report_path"] + "?sev=error", tmp_path, "errors"))
    shown = [r for r in filtered.rows.values() if "hidden" not in r]
    assert shown and {r["data-sev"] for r in shown} == {"error"}
    assert len(shown) == sum(1 for r in rows if r["data-sev"] == "error")
    by_name = Page(dump_dom(args["report_path"] + "?q=web-002", tmp_path, "text"))
    shown = [r for r in by_name.rows.values() if "hidden" not in r]
    assert shown and all("web-002" in r["data-text"] for r in shown)
    assert any(r.get("id", "").startswith("host-") for r in shown)
