# Copyright: nixfleet.sops contributors
# MIT License
"""The fleet audit report (``audit_report.build``) as one self-contained HTML page.

Inline CSS and script, no network. Hosts are grouped by inventory group, with
counts per group and severity, a filter (text and severity), each host's key
ages (past the policy highlighted), and every finding linked to the row it
belongs to. Every name comes from user files or the inventory: each one goes
through ``html.escape``, and the script reads only the page's own attributes.
"""

from __future__ import annotations

import html
from collections import Counter
from typing import Any

from .audit_report import UNGROUPED


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 2em 2em; color: #222; }
header { position: sticky; top: 0; background: #fff; padding: .5em 0; border-bottom: 1px solid #ccc; z-index: 1; }
h1 { margin: .3em 0; font-size: 1.4em; } h3 small { font-weight: normal; color: #555; }
table { border-collapse: collapse; margin: .5em 0 1.5em; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
thead th { background: #f3f3f3; }
code, .mono { font-family: ui-monospace, monospace; font-size: 12px; }
.error { color: #a00; font-weight: 600; } .warning { color: #8a5a00; font-weight: 600; }
tr[data-sev=error] td:first-child { border-left: 4px solid #c00; }
tr[data-sev=warning] td:first-child { border-left: 4px solid #e0a000; }
tr[data-sev=ok] td:first-child { border-left: 4px solid #3a3; }
td.old, span.old { background: #fbe0e0; color: #a00; font-weight: 600; }
a.f { margin-right: .4em; } :target { outline: 3px solid #36c; }
#bar input { width: 24em; padding: 3px; } #shown { color: #555; margin-left: 1em; }
details summary { cursor: pointer; }
"""

_JS = """
(function () {
  var q = document.getElementById('q'), s = document.getElementById('sev');
  var given = new URLSearchParams(location.search);  // a filtered view can be shared: page.html?q=web&sev=error
  q.value = given.get('q') || ''; s.value = given.get('sev') || '';
  function fits(sev, want) {
    if (!want) return true;
    if (want === 'ok') return sev === 'ok';
    return want === 'warning' ? sev !== 'ok' : sev === 'error';
  }
  function apply() {
    var t = q.value.trim().toLowerCase(), w = s.value, shown = 0, rows = document.querySelectorAll('tr[data-sev]');
    rows.forEach(function (r) {
      var v = fits(r.getAttribute('data-sev'), w) && (!t || r.getAttribute('data-text').indexOf(t) >= 0);
      r.hidden = !v; if (v) shown++;
    });
    document.querySelectorAll('section.grp').forEach(function (g) {
      g.hidden = !g.querySelector('tr[data-sev]:not([hidden])');
    });
    document.getElementById('shown').textContent = shown + ' of ' + rows.length + ' rows shown';
  }
  function reveal() {
    var el = location.hash && document.getElementById(location.hash.slice(1));
    if (el && el.closest('[hidden]')) { q.value = ''; s.value = ''; apply(); el.scrollIntoView(); }
  }
  q.addEventListener('input', apply); s.addEventListener('change', apply);
  window.addEventListener('hashchange', reveal); apply();
})();
"""


def _links(ids: list[str], by_id: dict[str, dict[str, Any]]) -> str:
    return "".join(f"<a class='f {_e(by_id[i]['severity'])}' href='#{_e(i)}' title='{_e(by_id[i]['message'])}'>"
                   f"{_e(i)}</a>" for i in ids) or "&mdash;"


def _listing(items: list[str], noun: str) -> str:
    if not items:
        return "&mdash;"
    if len(items) <= 3:
        return ", ".join(f"<span class='mono'>{_e(i)}</span>" for i in items)
    body = "<br>".join(f"<span class='mono'>{_e(i)}</span>" for i in items)
    return f"<details><summary>{len(items)} {noun}</summary>{body}</details>"


def _text(*parts: Any) -> str:
    """The lowercase text a row is filtered by."""
    flat = []
    for p in parts:
        flat.extend(p if isinstance(p, list) else [p])
    return _e(" ".join(str(p) for p in flat if p is not None).lower())


def _key_cell(keys: list[dict[str, Any]]) -> tuple[str, bool]:
    cells, old = [], False
    for k in keys:
        policy = f" (max {k['max_age_days']})" if k["max_age_days"] is not None else ""
        label = f"{_e(k['kind'])} {_e(k['age_days'])} d{_e(policy)}"
        if k["overdue"]:
            old = True
            label = f"<span class='old' title='past the key-age policy'>{label}</span>"
        cells.append(label)
    return "<br>".join(cells) or "&mdash;", old


def _sections(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Hosts under each of their groups; a group holding every grouped host (``nixos``) is only in the counts."""
    size = Counter(g for h in report["hosts"] for g in h["groups"])
    grouped = sum(1 for h in report["hosts"] if h["groups"] != [UNGROUPED])
    everyone = {g for g, n in size.items() if n == grouped and g != UNGROUPED} if len(size) > 1 else set()
    out: dict[str, list[dict[str, Any]]] = {}
    for h in report["hosts"]:
        for g in [g for g in h["groups"] if g not in everyone] or h["groups"]:
            out.setdefault(g, []).append(h)
    return dict(sorted(out.items(), key=lambda kv: (kv[0] == UNGROUPED, kv[0])))


def _host_rows(hosts: list[dict[str, Any]], by_id: dict[str, dict[str, Any]], placed: set[str]) -> str:
    """Host rows; the row id (what findings link to) goes on a host's first row only."""
    rows = []
    for h in hosts:
        keys, old = _key_cell(h["keys"])
        name = _e(h["name"]) + ("" if h["in_inventory"] else " <small>(not in inventory)</small>")
        text = _text(h["name"], h["groups"], h["anchors"], h["files"], [by_id[i]["kind"] for i in h["findings"]])
        row_id = "" if h["id"] in placed else f" id='{_e(h['id'])}'"
        placed.add(h["id"])
        rows.append(
            f"<tr{row_id} data-sev='{_e(h['severity'])}' data-text='{text}'><td class='mono'>{name}</td>"
            f"<td>{_e(', '.join(h['groups']))}</td><td class='mono'>{_e(', '.join(h['anchors'])) or '&mdash;'}</td>"
            f"<td{' class=old' if old else ''}>{keys}</td><td>{_listing(h['files'], 'files')}</td>"
            f"<td>{_links(h['findings'], by_id)}</td></tr>")
    return "".join(rows)


def _groups(report: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> str:
    sections = _sections(report)
    sec_id = {g: f"g-{i + 1}" for i, g in enumerate(sections)}
    counts = report["summary"]["by_group"]
    head = "<tr><th>group</th><th>hosts</th><th>hosts with findings</th><th>errors</th><th>warnings</th></tr>"
    rows = "".join(
        f"<tr><td>{f'<a href=#{sec_id[g]}>{_e(g)}</a>' if g in sec_id else _e(g)}</td><td>{c['hosts']}</td>"
        f"<td>{c['hosts_with_findings']}</td><td class='{'error' if c['error'] else ''}'>{c['error']}</td>"
        f"<td class='{'warning' if c['warning'] else ''}'>{c['warning']}</td></tr>"
        for g, c in counts.items())
    parts = [f"<h2 id='groups'>Groups</h2><table class='counts'><thead>{head}</thead><tbody>{rows}</tbody></table>",
             "<h2>Hosts by group</h2>"]
    host_head = ("<thead><tr><th>host</th><th>groups</th><th>anchors</th><th>key age</th><th>files it can open</th>"
                 "<th>findings</th></tr></thead>")
    placed: set[str] = set()
    for g, hosts in sections.items():
        sev = Counter(h["severity"] for h in hosts)
        parts.append(
            f"<section class='grp' id='{sec_id[g]}' data-group='{_e(g)}'><h3>{_e(g)} <small>{len(hosts)} hosts "
            f"&middot; {sev['error']} with errors &middot; {sev['warning']} with warnings</small></h3>"
            f"<table>{host_head}<tbody>{_host_rows(hosts, by_id, placed)}</tbody></table></section>")
    return "".join(parts)


def _files(report: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr id='{_e(f['id'])}' data-sev='{_e(f['severity'])}' data-text='{_text(f['path'], f['anchors'])}'>"
        f"<td class='mono'>{_e(f['path'])}</td><td class='mono'>{_e(f['rule'] or '(no rule)')}</td>"
        f"<td>{_listing(f['anchors'], 'anchors')}</td><td>{len(f['hosts'])}</td>"
        f"<td>{_links(f['findings'], by_id)}</td></tr>" for f in report["files"])
    return ("<h2 id='files'>Files</h2><table><thead><tr><th>file</th><th>creation rule</th><th>who can decrypt</th>"
            f"<th>hosts</th><th>findings</th></tr></thead><tbody>{rows}</tbody></table>")


def _anchors(report: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr id='{_e(a['id'])}' data-sev='{_e(a['severity'])}' data-text='{_text(a['name'], a['kind'], a['host'])}'>"
        f"<td class='mono'>&amp;{_e(a['name'])}</td><td>{_e(a['kind'])}</td><td>{_e(a['type'] or '?')}</td>"
        f"<td class='mono'>{_e(a['recipient'])}</td><td>{_e(a['line'])}</td><td>{a['files']}</td>"
        f"<td>{_links(a['findings'], by_id)}</td></tr>" for a in report["anchors"])
    return ("<h2 id='anchors'>Anchors</h2><table><thead><tr><th>anchor</th><th>kind</th><th>key type</th>"
            "<th>recipient</th><th>line</th><th>files</th><th>findings</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _held(anchor: str, kinds: dict[str, str]) -> str:
    return f"&amp;{_e(anchor)} ({_e(kinds.get(anchor) or '?')})"


def _duplicates(report: dict[str, Any], kinds: dict[str, str]) -> str:
    dups = report["duplicate_recipients"]
    if not dups:
        return "<h2 id='dups'>Duplicate recipients</h2><p>No recipient is held by two anchors.</p>"
    rows = "".join(
        f"<tr id='{_e(d['id'])}' data-sev='error' data-text='{_text(d['recipient'], d['anchors'])}'>"
        f"<td class='mono'>{_e(d['recipient'])}</td>"
        f"<td>{', '.join(_held(n, kinds) for n in d['anchors'])}</td></tr>"
        for d in dups)
    return ("<h2 id='dups'>Duplicate recipients</h2><table><thead><tr><th>recipient</th><th>held by</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _findings(report: dict[str, Any]) -> str:
    config = [f for f in report["findings"] if f["target"] == "config"]
    cfg = ("<h2 id='config'>.sops.yaml</h2><p>" + (_links([f["id"] for f in config], {f["id"]: f for f in config})
                                                   if config else "No finding about the file as a whole.") + "</p>")
    rows = "".join(
        f"<tr id='{_e(f['id'])}' data-sev='{_e(f['severity'])}' data-text='{_text(f['kind'], f['message'])}'>"
        f"<td>{_e(f['id'])}</td><td class='{_e(f['severity'])}'>{_e(f['severity'])}</td><td>{_e(f['kind'])}</td>"
        f"<td>{_e(f['message'])}</td><td>{_e(f['fix'])}</td><td><a href='#{_e(f['target'])}'>{_e(f['target'])}</a>"
        "</td></tr>" for f in report["findings"]) or "<tr><td colspan='6'>no findings</td></tr>"
    return (cfg + "<h2 id='findings'>Findings</h2><table><thead><tr><th>id</th><th>severity</th><th>kind</th>"
            f"<th>what</th><th>fix</th><th>row</th></tr></thead><tbody>{rows}</tbody></table>")


def render(report: dict[str, Any]) -> str:
    """The page for ``report`` (from ``audit_report.build``)."""
    s = report["summary"]
    by_id = {f["id"]: f for f in report["findings"]}
    kinds = {a["name"]: a["kind"] for a in report["anchors"]}
    summary = (f"{s['hosts']} hosts in {len(s['by_group'])} groups, {s['files']} sops files, {s['anchors']} anchors: "
               f"<span class='error'>{s['errors']} errors</span>, <span class='warning'>{s['warnings']} warnings"
               f"</span>, {s['duplicate_recipients']} duplicate recipients, {s['keys_overdue']} keys past the policy.")
    filter_bar = ("<div id='bar'><input id='q' type='search' placeholder='filter: host, group, file, anchor, finding' "
                  "aria-label='filter'> <select id='sev' aria-label='severity'><option value=''>any severity</option>"
                  "<option value='error'>errors</option><option value='warning'>warnings or errors</option>"
                  "<option value='ok'>no findings</option></select><span id='shown'></span></div>")
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(report['title'])}</title>"
            f"<style>{_CSS}</style></head><body><header><h1>{_e(report['title'])}</h1><p>{summary}</p>{filter_bar}"
            f"</header>{_groups(report, by_id)}{_duplicates(report, kinds)}{_files(report, by_id)}"
            f"{_anchors(report, by_id)}{_findings(report)}<script>{_JS}</script></body></html>\n")
