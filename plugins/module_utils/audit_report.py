# Copyright: nixfleet.sops contributors
# MIT License
"""The audit as reports for a fleet: one JSON document and one self-contained HTML page.

Both are built from an :class:`audit.Audit` and hold public data only (anchor
names, recipients, paths, dates); every name comes from user files or the
inventory, so the HTML escapes each one. Neither has a timestamp: an unchanged
audit writes nothing (key ages change once a day, so the reports do too).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

from .audit import ERROR, WARNING, Audit

SCHEMA = "nixfleet.sops/audit-report/1"
UNGROUPED = "ungrouped"
_RANK = {ERROR: 2, WARNING: 1}


def _severity(findings: list[dict[str, Any]]) -> str:
    """The worst severity among ``findings`` ("ok" when there is none)."""
    worst = max((_RANK.get(f["severity"], 0) for f in findings), default=0)
    return {2: ERROR, 1: WARNING}.get(worst, "ok")


class _Fleet:
    """Hosts, files and anchors of one audit, each with a row id, and which findings belong to which."""

    def __init__(self, a: Audit) -> None:
        self.a = a
        inv_hosts = set(a.hosts) | set(a.host_groups)
        host_anchors = {n for n in a.anchors if a.kinds.get(n) == "host"}
        self.hosts = sorted(inv_hosts | host_anchors | {k["host"] for k in a.keys if k.get("host")})
        self.in_inventory = inv_hosts
        self.anchors_of = {h: [h] if h in a.recipients else [] for h in self.hosts}
        for k in a.keys:
            held = self.anchors_of.get(k.get("host") or "")
            if held is not None and k["anchor"] in a.recipients and k["anchor"] not in held:
                held.append(k["anchor"])
        self.host_of = {n: h for h, held in self.anchors_of.items() for n in held}
        self.holders: dict[str, list[str]] = {}
        for n, r in a.recipients.items():
            self.holders.setdefault(r, []).append(n)
        self.files_of: dict[str, set[str]] = {}
        for f in a.files:
            for n in a.access[f]:
                self.files_of.setdefault(n, set()).add(f)
        self.keys_of: dict[str, list[dict[str, Any]]] = {}
        for k in a.keys:
            for h in {k.get("host"), self.host_of.get(k["anchor"])} - {None}:
                self.keys_of.setdefault(h, []).append(k)
        self.ids = {("host", h): f"host-{i + 1}" for i, h in enumerate(self.hosts)}
        self.ids.update({("file", f): f"file-{i + 1}" for i, f in enumerate(a.files)})
        self.ids.update({("anchor", n): f"anchor-{i + 1}" for i, n in enumerate(a.anchors)})
        self.ids.update({("dup", d["recipient"]): f"dup-{i + 1}" for i, d in enumerate(a.duplicates)})
        self.by_target: dict[str, list[dict[str, Any]]] = {}
        self.findings = [self._place(f) for f in a.findings]

    def _target(self, f: dict[str, Any]) -> str:
        """Row a finding links to: its host, else its file, else its anchor's host or anchor, else the config."""
        if f.get("host") in self.anchors_of:
            return self.ids[("host", f["host"])]
        if ("file", f.get("path")) in self.ids:
            return self.ids[("file", f["path"])]
        if f["kind"] == "duplicate_recipient":
            return self.ids[("dup", f["recipient"])]
        if f.get("anchor") in self.host_of:
            return self.ids[("host", self.host_of[f["anchor"]])]
        return self.ids.get(("anchor", f.get("anchor")), "config")

    def _place(self, f: dict[str, Any]) -> dict[str, Any]:
        out = {**f, "target": self._target(f)}
        for key in {out["target"], *self._also(f)}:
            self.by_target.setdefault(key, []).append(out)
        return out

    def _also(self, f: dict[str, Any]) -> set[str]:
        """Other rows a finding concerns: the host of each anchor it names, and its file."""
        names = set(f.get("anchors") or []) | {f.get("anchor")}
        names |= set(self.holders.get(f.get("recipient") or "", []))
        rows = {self.ids[("host", self.host_of[n])] for n in names if n in self.host_of}
        rows |= {self.ids[("anchor", n)] for n in names if ("anchor", n) in self.ids}
        if ("file", f.get("path")) in self.ids:
            rows.add(self.ids[("file", f["path"])])
        return rows

    def row_findings(self, kind: str, name: str) -> list[dict[str, Any]]:
        """Findings that concern the host, file or anchor ``name``."""
        return self.by_target.get(self.ids[(kind, name)], [])

    def groups_of(self, host: str) -> list[str]:
        """The host's inventory groups (``ungrouped`` when the inventory gave none)."""
        return self.a.host_groups.get(host) or [UNGROUPED]

    def host(self, h: str) -> dict[str, Any]:
        """One host's entry of the report."""
        held = self.anchors_of[h]
        found = self.row_findings("host", h)
        return {
            "id": self.ids[("host", h)], "name": h, "groups": self.groups_of(h), "in_inventory": h in self.in_inventory,
            "anchors": held, "recipients": {n: self.a.recipients[n] for n in held},
            "keys": self.keys_of.get(h, []),
            "files": sorted(set().union(*(self.files_of.get(n, set()) for n in held))),
            "findings": [f["id"] for f in found], "severity": _severity(found),
        }

    def file(self, path: str) -> dict[str, Any]:
        """One sops file's entry of the report."""
        readers = self.a.access[path]
        found = self.row_findings("file", path)
        return {
            "id": self.ids[("file", path)], "path": path, "rule": self.a.rules.get(path), "anchors": readers,
            "hosts": sorted({self.host_of[n] for n in readers if n in self.host_of}),
            "findings": [f["id"] for f in found], "severity": _severity(found),
        }

    def anchor(self, n: str) -> dict[str, Any]:
        """One anchor's entry of the report."""
        found = self.row_findings("anchor", n)
        return {
            "id": self.ids[("anchor", n)], "name": n, "kind": self.a.kinds.get(n), "type": self.a.types.get(n),
            "recipient": self.a.recipients[n], "line": self.a.lines.get(n), "host": self.host_of.get(n),
            "files": len(self.files_of.get(n, ())),
            "findings": [f["id"] for f in found], "severity": _severity(found),
        }


def _group_counts(hosts: list[dict[str, Any]], findings: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per inventory group: hosts, hosts with findings, and distinct findings by severity."""
    out: dict[str, dict[str, int]] = {}
    seen: dict[str, set[str]] = {}
    for h in hosts:
        for g in h["groups"]:
            c = out.setdefault(g, {"hosts": 0, "hosts_with_findings": 0, ERROR: 0, WARNING: 0})
            c["hosts"] += 1
            c["hosts_with_findings"] += bool(h["findings"])
            for fid in h["findings"]:
                if fid not in seen.setdefault(g, set()):
                    seen[g].add(fid)
                    c[findings[fid]["severity"]] += 1
    return dict(sorted(out.items()))


def build(a: Audit, title: str) -> dict[str, Any]:
    """The fleet report: summary counts, per host, per file, per anchor, duplicate recipients, findings with ids.

    Each finding carries ``target``, the id of the host, file, anchor or
    duplicate row it belongs to (``config`` for ``.sops.yaml`` as a whole).
    """
    fl = _Fleet(a)
    hosts = [fl.host(h) for h in fl.hosts]
    by_id = {f["id"]: f for f in fl.findings}
    severities = Counter(f["severity"] for f in fl.findings)
    summary = {
        "hosts": len(hosts), "hosts_with_findings": sum(1 for h in hosts if h["findings"]),
        "files": len(a.files), "anchors": len(a.anchors), "findings": len(fl.findings),
        "errors": severities[ERROR], "warnings": severities[WARNING],
        "duplicate_recipients": len(a.duplicates), "keys_overdue": sum(1 for k in a.keys if k["overdue"]),
        "by_kind": dict(sorted(Counter(f["kind"] for f in fl.findings).items())),
        "by_group": _group_counts(hosts, by_id),
    }
    return {
        "schema": SCHEMA, "title": title, "summary": summary, "hosts": hosts,
        "files": [fl.file(f) for f in a.files], "anchors": [fl.anchor(n) for n in a.anchors],
        "duplicate_recipients": [{"id": fl.ids[("dup", d["recipient"])], **d} for d in a.duplicates],
        "findings": fl.findings,
    }


def to_json(report: dict[str, Any]) -> str:
    """The report as stable, indented JSON text."""
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def write(reports: list[tuple[str, str]], check_mode: bool = False) -> bool:
    """Write each ``(path, text)`` report whose content changed, all or none (fsutil staging); True if any changed.

    Check mode writes nothing and says whether it would.
    """
    from .fsutil import CONFIG_LIMIT, commit_all, discard_staged, make_dirs, read_regular, remove_made_dirs, stage_write

    todo = []
    for path, text in reports:
        try:
            if read_regular(path, CONFIG_LIMIT, "report").decode("utf-8", "replace") == text:
                continue
        except FileNotFoundError:
            pass
        todo.append((path, text))
    if check_mode or not todo:
        return bool(todo)
    made: list[str] = []
    staged: list[tuple[str, str]] = []
    try:
        for path, text in todo:
            made += make_dirs(os.path.dirname(os.path.abspath(path)), 0o755)
            staged.append((stage_write(path, text, default_mode=0o644, sync=False), path))
        commit_all(staged)
    except BaseException:
        discard_staged([tmp for tmp, _unused in staged])
        remove_made_dirs(made)
        raise
    return True
