# Copyright: nixfleet.sops contributors
# MIT License
"""Audit a secrets repository: who can decrypt what, and everything that is out of place.

Reads only public data: ``.sops.yaml``, the ``sops`` metadata of each file
(never a value), and the key inventory. No identity is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import breakglass, fleet, keyinventory
from .age import AgeKeyError, key_type, recipient_kind, redact
from .errors import NixfleetError
from .sops_config import RepoFile

SSH_PREFIXES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-", "sk-ssh-", "ssh-dss")
ERROR, WARNING = "error", "warning"

FIXES = {
    **breakglass.FIXES,
    "drift": "run playbooks/rekey.yml",
    "no_rule": "add a creation rule for it to .sops.yaml (nixfleet.sops.sops_creation_rule), then rekey",
    "unreadable": "restore the file from version control; its sops metadata does not parse",
    "plaintext_file": "encrypt it (nixfleet.sops.sops_secret) or move it out of the secrets directory",
    "unused_anchor": "add it to a creation rule, or remove it (nixfleet.sops.sops_recipient state=absent)",
    "unknown_recipient": "it is in the file but not in .sops.yaml: run playbooks/rekey.yml to drop it, "
    "or declare it as an anchor",
    "ssh_recipient": "replace it with its age1… form (nixfleet.sops.ssh_to_age): sops-nix's converted host key "
    "cannot open files encrypted to a raw SSH recipient",
    "host_without_key": "bootstrap the host: ansible-playbook playbooks/bootstrap.yml -l HOST",
    "key_too_old": "rotate it: ansible-playbook playbooks/rotate_keys.yml -l HOST -e nixfleet_rotate=due",
    "break_glass_missing": "add the break-glass anchor to every rule and rekey (playbooks/break_glass.yml)",
    "broken_stanza": "run playbooks/rekey.yml: it wraps the data key again for each recipient whose stanza is broken",
    "duplicate_recipient": "give each anchor its own key: remove the copy (nixfleet.sops.sops_recipient state=absent) "
    "or rotate one of them, then rekey; revoking one anchor leaves the key able to open files through the other",
    "host_recipient_unusable": "give the host its SSH host key's age1… recipient (nixfleet.sops.ssh_to_age) or an "
    "X25519/post-quantum key sops-nix has in its key file, then rekey",
}


class AuditError(NixfleetError, ValueError):
    """Bad audit input (the host -> groups map); the message names the parameter."""


@dataclass
class Audit:
    """Findings plus the access matrix (file x anchor)."""

    findings: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    anchors: list[str] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)  # anchor -> host/user/…
    types: dict[str, str] = field(default_factory=dict)  # anchor -> key type (x25519, pq, ssh-ed25519, plugin:…)
    access: dict[str, list[str]] = field(default_factory=dict)  # file -> anchors that can decrypt it
    counts: dict[str, int] = field(default_factory=dict)
    rules: dict[str, str | None] = field(default_factory=dict)  # file -> path_regex of its creation rule
    duplicates: list[dict[str, Any]] = field(default_factory=list)  # {recipient, anchors} held by 2+ anchors
    recipients: dict[str, str] = field(default_factory=dict)  # anchor -> recipient (public)
    lines: dict[str, int] = field(default_factory=dict)  # anchor -> line in .sops.yaml
    hosts: list[str] = field(default_factory=list)  # inventory hosts that should have an anchor
    host_groups: dict[str, list[str]] = field(default_factory=dict)  # inventory host -> its groups
    keys: list[dict[str, Any]] = field(default_factory=list)  # key inventory entries with age and policy

    def add(self, kind: str, message: str, severity: str = ERROR, **where: Any) -> None:
        item = {"id": f"F{len(self.findings) + 1}", "kind": kind, "severity": severity, "message": redact(message),
                "fix": FIXES.get(kind, "")}
        item.update({k: redact(v) if isinstance(v, str) else v for k, v in where.items() if v is not None})
        self.findings.append(item)

    def as_dict(self) -> dict[str, Any]:
        return {
            "findings": self.findings,
            "matrix": {"files": self.files, "anchors": self.anchors, "access": self.access, "types": self.types},
            "counts": self.counts,
            "duplicate_recipients": self.duplicates,
        }


def _anchor_kind(name: str, group: str | None, inventory: dict[str, str]) -> str:
    if name in inventory:
        return inventory[name]
    if name.startswith("break-glass") or name.startswith("break_glass"):
        return "break-glass"
    g = (group or "").rstrip(":").lower()
    if g.startswith("host"):
        return "host"
    if g.startswith("user") or g.startswith("admin"):
        return "user"
    return g or "key"


def _recipient_types(out: Audit, config_path: str, anchors: dict[str, Any]) -> None:
    """Each anchor's key type; a host key sops-nix cannot use is a finding (raw SSH, plugins)."""
    for name, a in anchors.items():
        try:
            kind = recipient_kind(a.recipient)
        except AgeKeyError:
            continue  # reported by the config lint as an invalid recipient
        out.types[name] = kind
        if out.kinds.get(name) != "host" or key_type(kind).host_usable:
            continue
        if kind.startswith("ssh-"):
            out.add("ssh_recipient", f"{config_path}: anchor &{name} is a raw SSH key, not an age1… recipient; "
                    "sops-nix decrypts with the converted age key", anchor=name, line=a.line)
        else:
            out.add("host_recipient_unusable", f"{config_path}: host anchor &{name} is a {key_type(kind).description} "
                    "recipient, which sops-nix on the host cannot use", anchor=name, line=a.line)


def _break_glass(out: Audit, sc: fleet.Plan, inventory: list[keyinventory.KeyEntry], anchor: str | None,
                 drill_max_age_days: int) -> None:
    """Break-glass coverage (every key group of every rule, every file) and drill age."""
    cfg = sc.config
    anchors = cfg.anchors()
    glass = anchor or next((n for n in anchors if out.kinds[n] == "break-glass"), None)
    if glass and glass not in anchors:
        out.add("break_glass_missing", f"{cfg.path}: no anchor &{glass}", anchor=glass)
    elif glass:
        for index, gi in breakglass.uncovered(cfg, glass):
            rule = cfg.rules[index]
            where = f"key group {gi + 1} of " if len(rule.key_groups) > 1 else ""
            out.add("break_glass_missing", f"{cfg.path}: {where}{rule.describe()} does not include &{glass}",
                    WARNING, anchor=glass, line=rule.line)
        for fp in sc.files:
            if glass not in out.access[fp.rel]:
                out.add("break_glass_missing", f"{fp.rel} cannot be opened with the break-glass key &{glass}",
                        path=fp.rel)
    for f in breakglass.drill_findings(inventory, drill_max_age_days):
        out.add(f["kind"], f["message"], f["severity"], anchor=f["anchor"])


class Holders:
    """Which anchors hold each recipient. Two anchors may hold one key: every holder can open what it opens,
    and a message names the one the file's creation rule uses (else the first in ``.sops.yaml``)."""

    def __init__(self, anchors: dict[str, Any], rules: list[Any]) -> None:
        self.of: dict[str, list[str]] = {}
        for name, a in anchors.items():
            self.of.setdefault(a.recipient, []).append(name)
        self.rule_anchors: dict[str | None, list[str]] = {}
        for rule in rules:
            self.rule_anchors.setdefault(rule.path_regex, rule.anchors)

    def __contains__(self, recipient: str) -> bool:
        return recipient in self.of

    def all(self, recipient: str) -> list[str]:
        """Every anchor holding ``recipient`` (none for a stranger)."""
        return self.of.get(recipient, [])

    def name(self, recipient: str, rule: str | None = None) -> str:
        """The anchor to name for ``recipient`` in a file matched by ``rule`` (the recipient itself if none)."""
        held = self.of.get(recipient)
        if not held:
            return recipient
        preferred = self.rule_anchors.get(rule, []) if rule is not None else []
        return next((n for n in held if n in preferred), held[0])

    def duplicates(self) -> dict[str, list[str]]:
        """Recipients held by more than one anchor, in ``.sops.yaml`` order."""
        return {r: held for r, held in self.of.items() if len(held) > 1}


def _duplicate_recipients(out: Audit, config_path: str, anchors: dict[str, Any], holders: Holders) -> None:
    for r, held in holders.duplicates().items():
        named = [f"&{n} ({out.kinds.get(n, 'key')})" for n in held]
        out.duplicates.append({"recipient": r, "anchors": held})
        out.add("duplicate_recipient", f"{config_path}: recipient {r} is held by anchors "
                + ", ".join(named[:-1]) + " and " + named[-1], recipient=r, anchor=held[0],
                anchors=held, line=anchors[held[1]].line)


def _file_findings(out: Audit, fp: fleet.FilePlan, holders: Holders) -> None:
    """One sops file: who can open it, and what is out of place (broken stanzas, raw SSH, strangers, drift)."""
    out.files.append(fp.rel)
    have = [r for g in fp.current for r in g]
    out.access[fp.rel] = sorted({n for r in have for n in holders.all(r)})
    out.rules[fp.rel] = fp.rule

    def name(r: str) -> str:
        return holders.name(r, fp.rule)

    for g, r in fp.broken_stanzas:
        out.add("broken_stanza", f"{fp.rel}: the data key wrapped for {name(r)} (key group {g + 1}) is "
                "structurally broken, so that key cannot open the file", path=fp.rel, recipient=r)
    for r in have:
        if r.startswith(SSH_PREFIXES) and (r not in holders or any(out.kinds.get(n) == "host" for n in holders.all(r))):
            out.add("ssh_recipient", f"{fp.rel} is encrypted to a raw SSH recipient", path=fp.rel)
        elif r not in holders and not any(r in g for g in (fp.wanted or [])):
            out.add("unknown_recipient", f"{fp.rel} is encrypted to {r}, which no anchor in .sops.yaml names",
                    path=fp.rel, recipient=r)
    if fp.wanted is not None and fp.needs_change:
        parts = []
        if fp.added:
            parts.append("missing " + ", ".join(name(r) for r in fp.added))
        if fp.removed:
            parts.append("extra " + ", ".join(name(r) for r in fp.removed))
        out.add("drift", f"{fp.rel} differs from {fp.rule!r}: " + "; ".join(parts or ["key groups differ"]),
                path=fp.rel)


def _key_ages(inv_entries: list[keyinventory.KeyEntry], max_age_days: dict[str, int]) -> list[dict[str, Any]]:
    """Each inventory key's public data, its age in days, the policy for its kind and whether it is past it."""
    out = []
    for e in inv_entries:
        age, limit = e.age_days(), max_age_days.get(e.kind)
        out.append({"anchor": e.anchor, "kind": e.kind, "host": e.host, "recipient": e.recipient,
                    "created": e.created, "age_days": age, "max_age_days": limit,
                    "overdue": limit is not None and age > limit})
    return out


def check_host_groups(host_groups: Any) -> dict[str, list[str]]:
    """The inventory's host -> groups map checked: names are strings, groups a list of strings."""
    if not isinstance(host_groups, dict):
        raise AuditError("host_groups: give a mapping of inventory host to its groups, e.g. {alpha: [web, prod]}")
    out: dict[str, list[str]] = {}
    for host, groups in host_groups.items():
        if isinstance(groups, str):
            groups = [groups]
        if not isinstance(host, str) or not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise AuditError(f"host_groups.{host}: give a list of group names (the host's group_names)")
        out[host] = sorted(set(groups))
    return out


def run(
    repo: str,
    hosts: list[str] | None = None,
    max_age_days: dict[str, int] | None = None,
    secrets_dirs: tuple[str, ...] = ("sops",),
    break_glass_anchor: str | None = None,
    drill_max_age_days: int = breakglass.DRILL_MAX_AGE_DAYS,
    workers: int | None = None,
    host_groups: dict[str, list[str]] | None = None,
) -> Audit:
    """Audit ``repo``. ``hosts`` (inventory hostnames) enables the host-without-key check;
    ``break_glass_anchor`` enables break-glass coverage (default: an anchor named break-glass if any);
    ``host_groups`` (inventory host -> groups) is kept for the fleet report."""
    max_age_days = keyinventory.check_policy(max_age_days or {})
    host_groups = check_host_groups(host_groups or {})
    sc = fleet.scan(repo, workers=workers, strict=False)
    cfg = sc.config
    anchors = cfg.anchors()
    holders = Holders(anchors, cfg.rules)
    inv_entries = keyinventory.load(repo)
    inv_kinds = {e.anchor: e.kind for e in inv_entries}
    out = Audit()
    out.anchors = list(anchors)
    out.kinds = {n: _anchor_kind(n, a.group, inv_kinds) for n, a in anchors.items()}
    out.recipients = {n: a.recipient for n, a in anchors.items()}
    out.lines = {n: a.line for n, a in anchors.items()}
    out.hosts, out.host_groups = list(hosts or []), host_groups
    out.keys = _key_ages(inv_entries, max_age_days)

    # The lint sees the plan's files: the repository is walked once, with one skip list.
    repo_files = [RepoFile(fp.rel, True) for fp in sc.files] + [RepoFile(r, False) for r in sc.not_sops]
    repo_files += [RepoFile(u["path"], True) for u in sc.unreadable]
    for finding in cfg.validate(scan_files=True, files=repo_files):
        kind = finding.get("kind", "config")
        if kind == "unmatched_sops_file":
            continue  # reported below as no_rule, with the file
        out.add(f"config_{kind}", f"{cfg.path}: {finding.get('message', '')}",
                severity=WARNING if kind == "rule_unused" else ERROR, line=finding.get("line"),
                anchor=finding.get("anchor"))

    used: set[str] = set()
    for rule in cfg.rules:
        used.update(rule.anchors)
    _recipient_types(out, cfg.path, anchors)
    _duplicate_recipients(out, cfg.path, anchors, holders)
    for name, a in anchors.items():
        if name not in used:
            out.add("unused_anchor", f"{cfg.path}: anchor &{name} is in no creation rule", WARNING, anchor=name,
                    line=a.line)

    for fp in sc.files:
        _file_findings(out, fp, holders)
    for rel in sc.no_rule:
        out.add("no_rule", f"{rel} is sops-encrypted but no creation rule matches it", path=rel)
    for u in sc.unreadable:
        out.add("unreadable", f"{u['path']}: {u['error']}", path=u["path"])
    for rel in sc.not_sops:
        if any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in secrets_dirs):
            out.add("plaintext_file", f"{rel} is under the secrets directory but not sops-encrypted", path=rel)

    for host in hosts or []:
        if host not in anchors:
            out.add("host_without_key", f"host {host} has no anchor &{host} in .sops.yaml", WARNING, host=host)

    for item in keyinventory.overdue(inv_entries, max_age_days or {}):
        out.add("key_too_old", f"{item['kind']} key &{item['anchor']} is {item['age_days']} days old "
                f"(policy: {item['max_age_days']})", WARNING, anchor=item["anchor"])

    _break_glass(out, sc, inv_entries, break_glass_anchor, drill_max_age_days)

    out.counts = {
        "files": len(out.files),
        "anchors": len(out.anchors),
        "errors": sum(1 for f in out.findings if f["severity"] == ERROR),
        "warnings": sum(1 for f in out.findings if f["severity"] == WARNING),
    }
    return out


def text_table(a: Audit) -> list[str]:
    """The access matrix as fixed-width lines for task output, then one line per finding."""
    width = max([len(f) for f in a.files] + [4])
    head = " " * width + " | " + " ".join(a.anchors)
    lines = [head, "-" * len(head)]
    for f in a.files:
        cells = " ".join(("x" if n in a.access[f] else ".").center(len(n)) for n in a.anchors)
        lines.append(f"{f.ljust(width)} | {cells}")
    if not a.findings:
        lines.append("no findings")
    for item in a.findings:
        lines.append(f"{item['severity'].upper()} [{item['kind']}] {item['message']} -> {item['fix']}")
    return lines
