# Copyright: nixfleet.sops contributors
# MIT License
"""Revoke a host: its keys leave the secrets repository, and what it could read is listed for the source.

Removing a recipient from ``.sops.yaml`` and rekeying (``updatekeys``) is not
enough: whoever holds the host's key also holds the data key of every file
it could read, so every such file gets a new data key too (rotate). And git
history keeps the old ciphertexts, which the host's key opens forever: those
credentials must be changed where they come from. :func:`revoke` does the
first part in one change of the repository and reports the second.

In one :class:`~changeset.Changeset` (nothing visible until everything is
staged): the host's own creation rules go (bootstrap's ``sops/<host>.yaml`` and
``sops/host-keys/<host>.yaml`` rules), its anchors (``&<host>``,
``&<user>_<host>``, and the ``_next`` ones of an unfinished rotation) leave every
rule (refused, naming the rule, when a rule would be left without a
recipient), the host's own files are removed or archived (re-encrypted for
the admins, with a new data key), every other file it could read is rekeyed
and rotated, its key-inventory entries and rotation journal go. The report
(:func:`report_text`, JSON through :meth:`RevokeResult.report`) lists every file
and key path the host could read now and at any commit of the repository's
history (with the first commit at which it could), and the deploy keys to
delete at the forge.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from . import history, keyinventory, sshkeys
from . import sops as engine
from .bootstrap import (
    DEPLOY_KEYS,
    USER_RE,
    host_file,
    host_key_file,
    host_key_rule,
    host_rule,
    validate_host,
    validate_user,
)
from .changeset import Changeset
from .errors import NixfleetError
from .fleet import Plan
from .fsutil import atomic_write, make_dirs
from .rotation import NEXT_ANCHOR, journal_rel
from .sops_config import SopsConfigError

OWN_FILES = ("remove", "archive")


class RevokeError(NixfleetError, ValueError):
    """A revocation cannot be done safely; the message names the host, the rule or file, and what to do."""


@dataclass
class RevokeSpec:
    """Which host to revoke, and what becomes of its own files."""

    host: str
    user: str | None = None
    own_files: str = "remove"  # remove | archive
    archive_dir: str = ".nixfleet/archive"

    def __post_init__(self) -> None:
        validate_host(self.host)
        if self.user:
            validate_user(self.user, self.host)
        if self.own_files not in OWN_FILES:
            raise RevokeError(f"{self.host}: own_files must be remove or archive, not {self.own_files!r}")
        parts = self.archive_dir.strip("/").split("/")
        if os.path.isabs(self.archive_dir) or ".." in parts or not self.archive_dir.strip("/"):
            raise RevokeError(f"archive_dir {self.archive_dir!r} must be a directory inside the secrets repository "
                              "(relative, no '..'), for example .nixfleet/archive")


@dataclass
class RevokeResult:
    """What a revocation did (or would do). Public data only."""

    host: str
    changed: bool = False
    anchors: dict[str, str] = field(default_factory=dict)  # anchor -> recipient, removed
    rules_removed: list[str] = field(default_factory=list)
    own_files: list[dict[str, str]] = field(default_factory=list)  # path, action, to
    touched: list[str] = field(default_factory=list)
    rekeyed: list[str] = field(default_factory=list)
    rotated: list[str] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    deploy_keys: list[dict[str, str]] = field(default_factory=list)  # name, public_key
    exposure: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    config_before: str = ""
    config_after: str = ""
    msg: str = ""

    def report(self) -> dict[str, Any]:
        """The blast-radius report (JSON): what the host could read, and what to do at the forge and the source."""
        return {"host": self.host, "date": datetime.datetime.now(datetime.UTC).date().isoformat(),
                "anchors_removed": self.anchors, "rules_removed": self.rules_removed, "own_files": self.own_files,
                "files_rekeyed_and_rotated": self.rotated, "deploy_keys_to_delete_at_forge": self.deploy_keys,
                "could_read": self.exposure}

    def as_dict(self) -> dict[str, Any]:
        """What the module returns (no diff texts)."""
        out = asdict(self)
        for name in ("config_before", "config_after", "warnings"):  # warnings go through module.warn
            out.pop(name)
        return out


def host_anchors(spec: RevokeSpec, anchors: dict[str, Any], inventory: list[keyinventory.KeyEntry]) -> list[str]:
    """The host's anchors present in ``.sops.yaml``: ``&<host>``, its users' ``&<user>_<host>``, and their
    ``_next`` anchors. Users come from ``spec.user``, else the key inventory, else anchors named ``<user>_<host>``."""
    host = spec.host
    users = [spec.user] if spec.user else []
    users += [e.anchor[: -len(host) - 1] for e in inventory
              if e.kind == "user" and e.host == host and e.anchor.endswith("_" + host)]
    if not users:
        suffix = "_" + host
        users = [n[: -len(suffix)] for n in anchors if n.endswith(suffix) and USER_RE.match(n[: -len(suffix)])]
    names = [host] + [f"{u}_{host}" for u in dict.fromkeys(users)]
    return [n for base in names for n in (base, base + NEXT_ANCHOR) if n in anchors]


def _deploy_keys(cs: Changeset, host: str, inventory: list[keyinventory.KeyEntry]) -> list[dict[str, str]]:
    """The host's deploy public keys (to delete at the forge): from its file, else the key inventory."""
    out: dict[str, str] = {}
    sf = cs.open(host_file(host))
    stored = sf.tree.get(DEPLOY_KEYS) if sf is not None and sf.store.structured else None
    for name, pem in stored.items() if isinstance(stored, dict) else []:
        if isinstance(pem, str):
            try:
                out[str(name)] = sshkeys.from_private(pem).public_line
            except ValueError:
                continue  # not a key this collection wrote; the inventory may still name it
    prefix = f"{host}-"
    for e in inventory:
        if e.kind == "deploy" and e.host == host and e.anchor.startswith(prefix):
            out.setdefault(e.anchor[len(prefix):], e.recipient)
    return [{"name": k, "public_key": v} for k, v in sorted(out.items())]


def _remove_anchor(config: Any, name: str) -> list[str]:
    """The anchor and every alias to it go; a warning when only its aliases could (see below)."""
    try:
        config.remove_anchor(name)
        return []
    except SopsConfigError as exc:
        if "only entry of its list" not in str(exc):
            raise
    # The last entry of a keys: group (a fleet's only host) cannot be deleted by the editor yet: take it out of
    # every rule, which is what revoking needs; the definition stays, unused (the audit lists it).
    for rule in config.rules:
        if any("*" + name in members for members in rule.members):
            config.ensure_rule_member(rule.path_regex, name, "absent")
    return [f"&{name} is the only entry of its group in .sops.yaml: it was removed from every rule, its definition "
            "stays (unused); delete that line by hand"]


def _refuse_leftovers(cs: Changeset, plan: Plan, recipients: set[str], host: str) -> None:
    """After the edits, no rule may still name one of the host's recipients, and no file it reads may lack a rule."""
    for rule in cs.config.rules:
        left = recipients & set(rule.recipients)
        if left:
            raise RevokeError(f"{cs.config.path}, line {rule.line}: {rule.describe()} still lists a recipient of "
                              f"{host} ({', '.join(sorted(left))}) under another name or literally; remove it there, "
                              "then revoke again")
    lost = [rel for rel in plan.no_rule if plan.by_rel.get(rel) and plan.by_rel[rel].readers & recipients]
    if lost:
        raise RevokeError(f"{host} can read {', '.join(lost)}, which no creation rule matches, so it cannot be "
                          "rekeyed; add a rule for it or remove it, then revoke again")


def _own_files(cs: Changeset, plan: Plan, spec: RevokeSpec, rules: list[str], recipients: set[str]) -> list[dict]:
    """The files of the host's own rules (and its two files): removed, or archived for the admins."""
    rels = [fp.rel for fp in plan.files if fp.rule in rules]
    rels += [r for r in (host_file(spec.host), host_key_file(spec.host))
             if r not in rels and os.path.lexists(cs.path(r))]
    out = []
    for rel in sorted(rels):
        if spec.own_files == "archive":
            sf = cs.open(rel)
            if sf is None:
                continue
            groups = [[r for r in g if r not in recipients] for g in sf.recipients]
            if not all(groups):
                raise RevokeError(f"{rel}: archiving it for the admins would leave a key group without a recipient; "
                                  "revoke with own_files=remove instead")
            if groups != sf.recipients:
                sf.updatekeys(groups)
                sf.rotate()
            to = f"{spec.archive_dir.strip('/')}/{spec.host}/{rel}"
            cs.copy_to(to, sf.encode())
            out.append({"path": rel, "action": "archived", "to": to})
        else:
            out.append({"path": rel, "action": "removed"})
        cs.remove(rel)
    return out


def _exposure(repo: str, plan: Plan, recipients: set[str], anchors: list[str],
              warnings: list[str]) -> list[dict[str, Any]]:
    """Every file and key path the host's keys could read, now and at any commit (blast radius).

    ``anchors`` includes the ``_next`` anchors of rotations whose keys were put
    on the host (an aborted one's too): what those could read counts.
    """
    current = {fp.rel: sorted(fp.readers) for fp in plan.files}
    names = list(dict.fromkeys([*anchors, *(a + NEXT_ANCHOR for a in anchors if not a.endswith(NEXT_ANCHOR))]))
    try:
        radius = history.blast_radius(repo, recipients, anchors=names, current=current)
    except history.HistoryError as exc:
        warnings.append(f"the repository's history could not be read ({exc}): the report lists what the host "
                        "can read now only")
        radius = []
    found = {fx.path: fx.as_dict() for fx in radius}
    for fp in plan.files:
        if fp.rel in found or not fp.readers & recipients:
            continue
        # Readable now but never committed: not in history, still exposed.
        try:
            sf = engine.SopsFile.open(fp.path)
            keys = history.key_paths(sf.encrypted_documents[0]) if sf.format != "binary" else ["data"]
        except (engine.SopsError, IndexError):
            keys = ["(unparsable document)"]
        found[fp.rel] = {"path": fp.rel, "first_commit": "(not committed)", "first_time": 0, "readable_now": True,
                         "key_paths": [{"key": k, "first_commit": "(not committed)"} for k in sorted(keys)]}
    return [found[p] for p in sorted(found)]


def revoke(repo: str, spec: RevokeSpec, identities: Any = None, check_mode: bool = False) -> RevokeResult:
    """Revoke ``spec.host`` in the secrets repository ``repo`` (see the module docstring)."""
    repo = os.path.abspath(repo)
    plan = Plan.scan(repo)
    cs = Changeset(plan, identities, check_mode, "revoke", RevokeError)
    res = RevokeResult(host=spec.host, config_before=cs.config.text)
    inventory = keyinventory.Inventory.load(repo)
    all_anchors = cs.config.anchors()
    names = host_anchors(spec, all_anchors, inventory.entries)
    if not names:
        res.msg = f"{spec.host}: no anchor of the host in .sops.yaml; nothing to revoke"
        res.config_after = res.config_before
        return res
    res.anchors = {n: all_anchors[n].recipient for n in names}
    recipients = set(res.anchors.values())
    res.deploy_keys = _deploy_keys(cs, spec.host, inventory.entries)
    res.rules_removed = [r for r in (host_rule(spec.host), host_key_rule(spec.host)) if cs.config.find_rule(r)]
    for regex in res.rules_removed:
        cs.config.ensure_rule(regex, state="absent")
    for name in names:
        res.warnings += _remove_anchor(cs.config, name)
    _refuse_leftovers(cs, plan, recipients, spec.host)
    res.own_files = _own_files(cs, plan, spec, res.rules_removed, recipients)
    journal = journal_rel(spec.host)
    if os.path.lexists(cs.path(journal)):
        cs.remove(journal)
    dropped = [e.anchor for e in inventory.entries if e.host == spec.host or e.anchor in names]
    for anchor in dropped:
        inventory.remove(anchor)
    if inventory.changed:
        cs.write_text(keyinventory.INVENTORY_PATH, inventory.text)
    res.exposure = _exposure(repo, plan, recipients, names, res.warnings)
    cs.stage(rotate_lost=True)
    if not check_mode:
        cs.publish()
    res.changed = bool(cs.touched)
    res.touched, res.rekeyed, res.rotated, res.changes = cs.touched, cs.rekeyed, cs.rotated, cs.changes
    res.config_after = cs.config.text
    n_keys = sum(len(fx["key_paths"]) for fx in res.exposure)
    res.msg = (f"{spec.host}{' (check mode)' if check_mode else ''}: {len(names)} anchor(s) removed, "
               f"{len(res.rotated)} file(s) rekeyed with a new data key, {len(res.own_files)} own file(s) "
               f"{spec.own_files}d; it could read {n_keys} key path(s) in {len(res.exposure)} file(s) - change them "
               f"at their source; {len(res.deploy_keys)} deploy key(s) to delete at the forge")
    return res


def report_text(res: RevokeResult) -> str:
    """The blast-radius report as text (public data only)."""
    lines = [f"Revocation of {res.host}", ""]
    lines += ["Anchors removed from .sops.yaml:"] + [f"  &{n} {r}" for n, r in res.anchors.items()]
    lines += ["Creation rules removed:"] + [f"  {r}" for r in res.rules_removed or ["(none)"]]
    lines += ["Own files:"] + [f"  {f['path']}: {f['action']}" + (f" to {f['to']}" if f.get("to") else "")
                               for f in res.own_files or [{"path": "(none)", "action": "-"}]]
    lines += ["Files rekeyed with a new data key:"] + [f"  {p}" for p in res.rotated or ["(none)"]]
    lines += ["", "Deploy keys to delete at the forge:"]
    lines += [f"  {d['name']}: {d['public_key']}" for d in res.deploy_keys] or ["  (none)"]
    lines += ["", "What the host could read (now, or at any commit of the history) - change these at their source:"]
    for fx in res.exposure:
        until = ", readable until this revocation" if fx["readable_now"] else ""
        lines.append(f"  {fx['path']} (since {fx['first_commit'][:12]}{until})")
        lines += [f"    {k['key']} (since {k['first_commit'][:12]})" for k in fx["key_paths"]]
    if not res.exposure:
        lines.append("  (nothing)")
    return "\n".join(lines) + "\n"


def write_report(res: RevokeResult, directory: str) -> list[str]:
    """Write ``nixfleet-revoke-<host>.json`` and ``.txt`` into ``directory``; return their paths."""
    if not re.match(r"^[a-z0-9-]+$", res.host):
        raise RevokeError(f"{res.host!r} is not a host name")
    make_dirs(os.path.abspath(directory), 0o755)
    base = os.path.join(directory, f"nixfleet-revoke-{res.host}")
    atomic_write(base + ".json", json.dumps(res.report(), indent=2) + "\n", default_mode=0o644)
    atomic_write(base + ".txt", report_text(res), default_mode=0o644)
    return [base + ".json", base + ".txt"]


__all__ = ["RevokeError", "RevokeResult", "RevokeSpec", "host_anchors", "report_text", "revoke", "write_report"]
