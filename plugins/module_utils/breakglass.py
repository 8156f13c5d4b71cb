# Copyright: nixfleet.sops contributors
# MIT License
"""Break-glass recovery: an offline age key on paper that opens every file of the fleet.

Four steps, one function each (``playbooks/break_glass.yml`` has a tag per step):

- ``generate`` (offline machine): a new X25519 identity that touches disk only
  as the printable page(s) the user asked for — the whole key, or one page per
  SLIP-39 share. Returns the recipient only.
- ``register`` (admin machine, recipient only): ``&break_glass`` in its own
  commented section of ``keys:``, a member of every key group of every rule,
  every file rekeyed.
- ``drill``: the typed key (or k shares) opens the data key of every sops file;
  no value is decrypted, nothing decrypted is written; the date goes to the
  key inventory.
- ``recover``: the break-glass key opens every file, a new admin key is
  registered and every file rekeyed to it.

Why every key group: with several key groups (a Shamir threshold in
``.sops.yaml``) a key in one group opens one share of the data key, never the
file. The break-glass key exists for the day nobody else can open anything,
so it must open every file alone; the k-of-n protection moves to the paper
(SLIP-39 shares).

Hooks for code elsewhere: ``anchor_of`` (which anchor is the break-glass
key), ``rule_members`` (the anchors a new rule gets), ``ensure_in_every_rule``
(add it wherever it is missing), ``uncovered`` and ``drill_findings`` (audit).
"""

from __future__ import annotations

import datetime
import os
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from . import age, fleet, keyinventory, paperkey, paperpage, vcs
from . import sops as engine
from .errors import NixfleetError
from .fsutil import (
    KEY_FILE_LIMIT,
    atomic_write,
    check_output_dir,
    check_private_dir,
    ensure_private_dir,
    exposed_mode,
    read_regular,
    repo_lock,
)
from .sops_config import SopsConfig

ANCHOR = "break_glass"
GROUP = "recovery"  # not "break_glass": an anchored-list group is itself an anchor
KIND = "break-glass"
DRILL_MAX_AGE_DAYS = 365
SECTION_MARK = "Break-glass recovery key"
SECTION_COMMENT = (
    f"# {SECTION_MARK} (nixfleet.sops playbooks/break_glass.yml): its identity exists only on",
    "# paper (or as SLIP-39 shares), never on a machine. It is a member of every key group of every",
    "# creation rule, so it alone opens every file: keep it there (audit.yml flags a rule without it).",
)
FIXES = {
    "break_glass_never_drilled": "run the drill: ansible-playbook playbooks/break_glass.yml --tags test",
    "break_glass_drill_overdue": "run the drill: ansible-playbook playbooks/break_glass.yml --tags test",
    "break_glass_missing": "ansible-playbook playbooks/break_glass.yml --tags register (adds it to every rule)",
}
_FLEET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class BreakGlassError(NixfleetError, RuntimeError):
    """A break-glass step refused; the message says why and what to do. ``files`` lists files when it is about them."""

    def __init__(self, message: str, files: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.files = list(files or [])


def _today() -> str:
    return datetime.datetime.now(datetime.UTC).date().isoformat()


# --------------------------------------------------------------------------- hooks for other steps
def anchor_of(config: SopsConfig, inventory: keyinventory.Inventory | None = None) -> str | None:
    """The break-glass anchor of ``config``: the inventory's break-glass entry, else ``&break_glass``
    (or ``&break-glass``); None when there is none."""
    anchors = config.anchors()
    for e in inventory.entries if inventory is not None else []:
        if e.kind == KIND and e.anchor in anchors:
            return e.anchor
    return next((name for name in (ANCHOR, "break-glass") if name in anchors), None)


def rule_members(config: SopsConfig, anchors: list[str]) -> list[str]:
    """``anchors`` plus the break-glass anchor when one is registered: what a new rule (bootstrap,
    access) passes to ``SopsConfig.ensure_rule`` — also with ``exclusive=True``, which would drop it."""
    name = anchor_of(config)
    return [*anchors, name] if name and name not in anchors else list(anchors)


def uncovered(config: SopsConfig, name: str) -> list[tuple[int, int]]:
    """(rule index, key group index) of every key group that cannot be opened by anchor ``name``."""
    recipient = config.anchors()[name].recipient
    # A rule with the path_regex of an earlier one is never used by sops (the first match wins).
    live = [r for r in config.rules if config.find_rule(r.path_regex) is r]
    return [(rule.index, gi) for rule in live for gi in range(max(1, len(rule.members)))
            if gi >= len(rule.key_groups) or recipient not in rule.key_groups[gi]]


def ensure_in_every_rule(config: SopsConfig, name: str | None = None) -> bool:
    """Add the break-glass anchor to every key group of every creation rule that lacks it.

    Each addition is one verified transaction of the editor. Returns whether
    the text changed; False (nothing done) when no break-glass anchor exists.
    """
    name = name or anchor_of(config)
    if not name:
        return False
    changed = False
    # Edits shift lines and indexes stay: recompute what is missing after each one.
    for _unused in range(100_000):
        missing = uncovered(config, name)
        if not missing:
            return changed
        index, _gi = missing[0]
        rule = config.rules[index]
        if not config.ensure_rule_member(rule.path_regex, name, every_group=True):
            raise BreakGlassError(f"{config.path}: could not add &{name} to every key group of {rule.describe()}")
        changed = True
    raise BreakGlassError(f"{config.path}: could not add &{name} to every rule")  # pragma: no cover


def drill_findings(inventory: keyinventory.Inventory | list[keyinventory.KeyEntry],
                   max_age_days: int = DRILL_MAX_AGE_DAYS, today: datetime.date | None = None) -> list[dict[str, Any]]:
    """Audit findings about break-glass drills: a key never drilled, or last drilled more than
    ``max_age_days`` ago. Each: ``{kind, severity, message, anchor, fix}``."""
    entries = inventory.entries if isinstance(inventory, keyinventory.Inventory) else inventory
    today = today or datetime.datetime.now(datetime.UTC).date()
    out = []
    for e in entries:
        if e.kind != KIND:
            continue
        if not e.drilled:
            kind, msg = "break_glass_never_drilled", (
                f"break-glass key &{e.anchor} (created {e.created[:10]}) has never been drilled")
        else:
            age_days = (today - datetime.date.fromisoformat(e.drilled[:10])).days
            if age_days <= int(max_age_days):
                continue
            kind, msg = "break_glass_drill_overdue", (
                f"break-glass key &{e.anchor} was last drilled {age_days} days ago ({e.drilled[:10]}; "
                f"policy: every {int(max_age_days)} days)")
        out.append({"kind": kind, "severity": "warning", "message": msg, "anchor": e.anchor, "fix": FIXES[kind]})
    return out


# --------------------------------------------------------------------------- the key as typed
def key_from_input(key: str | None = None, shares: list[str] | None = None) -> str:
    """The break-glass identity from what was typed or scanned: the key (lines or QR text) or SLIP-39 shares."""
    if key and shares:
        raise BreakGlassError("give the break-glass key or its shares, not both")
    try:
        if shares:
            return paperkey.combine_shares(shares)
        if key:
            return paperkey.parse_identity(key)
    except paperkey.PaperKeyError as exc:
        raise BreakGlassError(f"{'break_glass_shares' if shares else 'break_glass_key'}: {exc}") from None
    raise BreakGlassError("no break-glass key given: type the key (or scan its QR code), or type the shares")


# --------------------------------------------------------------------------- generate
@dataclass
class GenerateResult:
    """What generate wrote (or would). Public data only: the recipient, never the key."""

    changed: bool = False
    recipient: str | None = None
    pages: list[str] = field(default_factory=list)
    shares: int = 0
    threshold: int = 0


def page_names(fleet_name: str, shares: int = 0) -> list[str]:
    """File names of the pages of ``fleet_name``: one for the whole key, or one per share."""
    if not shares:
        return [f"{fleet_name}-break-glass.html"]
    return [f"{fleet_name}-break-glass-share-{i}-of-{shares}.html" for i in range(1, shares + 1)]


def _existing_pages(output_dir: str, fleet_name: str) -> list[str]:
    prefix = f"{fleet_name}-break-glass"
    try:
        names = os.listdir(output_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix) and n.endswith(".html"))


def generate(output_dir: str, fleet_name: str, shares: int | None = None, threshold: int | None = None,
             check_mode: bool = False, today: str | None = None) -> GenerateResult:
    """Make a break-glass identity and write its printable page(s) into ``output_dir`` (created 0700).

    With ``shares``/``threshold`` the key is split (SLIP-39) and only the share
    pages are written. Idempotent: when pages of ``fleet_name`` are already
    there, nothing is made and their recipient is returned (move them away to
    make a new key). Check mode says what would be made and invents no key.
    """
    if not isinstance(fleet_name, str) or not _FLEET_RE.match(fleet_name):
        raise BreakGlassError(f"fleet name {fleet_name!r}: use letters, digits, '.', '_' or '-' (it names the pages)")
    if bool(shares) != bool(threshold):
        raise BreakGlassError("give both shares and threshold (e.g. 5 and 3), or neither for one page with the key")
    if shares:
        paperkey.check_split(int(shares), int(threshold or 0))
    n, k = int(shares or 0), int(threshold or 0)
    output_dir = os.path.abspath(output_dir)
    # Pages hold the key: a directory others can write (or that is not ours) is refused before any key exists.
    check_output_dir(output_dir, "the pages")
    existing = _existing_pages(output_dir, fleet_name)
    if existing:
        return _already_generated(output_dir, existing, n, k)
    res = GenerateResult(changed=True, pages=[os.path.join(output_dir, p) for p in page_names(fleet_name, n)],
                         shares=n, threshold=k)
    if check_mode:
        return res
    ensure_private_dir(output_dir, 0o700)
    check_output_dir(output_dir, "the pages")
    date = today or _today()
    identity = age.generate_identity()
    res.recipient = age.recipient_from_identity(identity)
    if n:
        mnemonics = paperkey.split_identity(identity, n, k)
        # Prove the split before anything is written: any k shares give the key back.
        if paperkey.combine_shares(mnemonics[-k:]) != identity:
            raise BreakGlassError("the SLIP-39 split does not recombine; nothing was written")  # pragma: no cover
        pages = [paperpage.share_page(m, i, n, k, res.recipient, fleet_name, date)
                 for i, m in enumerate(mnemonics, start=1)]
    else:
        lines = paperkey.identity_lines(identity)
        if paperkey.parse_identity("\n".join(f"{ln.text} {ln.checksum}" for ln in lines)) != identity:
            raise BreakGlassError("the printed lines do not give the key back; nothing was written")  # pragma: no cover
        pages = [paperpage.identity_page(identity, res.recipient, fleet_name, date)]
    for path, page in zip(res.pages, pages, strict=True):
        atomic_write(path, page, mode=0o600, private=True)
    return res


def _already_generated(output_dir: str, names: list[str], n: int, k: int) -> GenerateResult:
    recipients = set()
    for name in names:
        page = read_regular(os.path.join(output_dir, name), KEY_FILE_LIMIT, "break-glass page")
        recipients.add(paperpage.read_meta(page[:4096].decode("utf-8", "replace")).get("recipient"))
    recipients.discard(None)
    if len(recipients) != 1:
        raise BreakGlassError(
            f"{output_dir} holds break-glass pages of {len(recipients) or 'no readable'} different keys "
            f"({', '.join(names[:4])}): move them away and run again")
    return GenerateResult(changed=False, recipient=recipients.pop(),
                          pages=[os.path.join(output_dir, p) for p in names], shares=n, threshold=k)


# --------------------------------------------------------------------------- register
@dataclass
class RepoResult:
    """What register / recover did to the repository (or would). Public data only."""

    changed: bool = False
    anchor: str = ""
    recipient: str | None = None
    touched: list[str] = field(default_factory=list)
    changed_files: list[str] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    config_before: str = ""
    config_after: str = ""
    opened: int = 0
    not_opened: list[dict[str, str]] = field(default_factory=list)
    msg: str = ""


def _section_group(config: SopsConfig) -> str | None:
    """The group a new break-glass anchor goes into: its own, except in a flat ``keys:`` list."""
    return None if config.layout == "flat" else GROUP


def document_section(config: SopsConfig, name: str) -> SopsConfig:
    """``config`` with the break-glass comment above its section (or its anchor line), if not there yet.

    Comments are invisible to sops: the result must read exactly as before,
    which is checked; the returned config keeps the loaded text as original.
    """
    anchor = config.anchors()[name]
    lines = config.text.split("\n")
    target = anchor.line - 1
    above = target - 1
    while above >= 0 and (not lines[above].strip() or lines[above].lstrip().startswith("#")):
        above -= 1
    group = anchor.group
    if group and (config.groups().get(group) or [])[:1] == [name] and above >= 0 and re.match(
            rf"^\s*(-\s+)?&?{re.escape(group)}:?\s*$", lines[above]):
        target = above  # the section header: `break_glass:` or `- &break_glass:`
    window = "\n".join(lines[max(0, target - len(SECTION_COMMENT) - 1) : target])
    if SECTION_MARK in window:
        return config
    indent = re.match(r"^\s*", lines[target]).group(0)  # type: ignore[union-attr]
    eol = "\r" if "\r\n" in config.text else ""
    documented = SopsConfig("\n".join(lines[:target] + [indent + c + eol for c in SECTION_COMMENT] + lines[target:]),
                            config.path)
    if documented.snapshot() != config.snapshot():
        raise BreakGlassError(f"{config.path}: the break-glass comment would change what sops reads; "
                              "the file is left unchanged (please report this layout)")
    documented.original = config.original
    return documented


def _register_anchor(config: SopsConfig, name: str, recipient: str) -> SopsConfig:
    """&name holding ``recipient`` in its own documented section, in every key group of every rule."""
    anchors = config.anchors()
    config.ensure_recipient(name, recipient, group=None if name in anchors else _section_group(config))
    config = document_section(config, name)
    ensure_in_every_rule(config, name)
    return config


def _lock(repo: str, purpose: str, check_mode: bool, wait: float) -> Any:
    return nullcontext() if check_mode else repo_lock(repo, purpose=purpose, require=fleet.CONFIG_NAME, wait=wait)


def _apply(repo: str, config: SopsConfig, openers: list[str] | None, res: RepoResult,
           inventory: keyinventory.Inventory, check_mode: bool, before_write: Any = None) -> None:
    """Plan the rekey against the edited config, then (unless checking) write config, files, inventory.
    ``before_write`` runs after a successful plan, before the repository is written."""
    # Planned first: a file the openers cannot open refuses the whole step before anything is written.
    plan = fleet.rekey(repo, openers, check_mode=True, config=config)
    res.config_after = config.text
    paths = ([fleet.CONFIG_NAME] if config.changed else []) + plan.changed_files
    paths += [keyinventory.INVENTORY_PATH] if inventory.changed else []
    res.touched, res.changed_files, res.changes = paths, plan.changed_files, plan.changes
    res.changed = bool(paths)
    if check_mode or not paths:
        return
    if before_write is not None:
        before_write()
    vcs.record_pending(repo, [os.path.join(repo, p) for p in paths])
    config.save()
    done = fleet.rekey(repo, openers)
    res.changed_files, res.changes = done.changed_files, done.changes
    res.touched = ([fleet.CONFIG_NAME] if res.config_before != res.config_after else []) + done.changed_files
    if inventory.save():
        res.touched.append(keyinventory.INVENTORY_PATH)


def register(repo: str, recipient: str, identities: list[str] | None = None, anchor: str | None = None,
             check_mode: bool = False, lock_timeout: float = 0) -> RepoResult:
    """Register the break-glass ``recipient``: ``&anchor`` in its own documented section of ``keys:``,
    a member of every key group of every creation rule, every file rekeyed (opened with
    ``identities``, None: searched like sops), the key inventory updated. Idempotent.

    ``anchor`` defaults to the break-glass anchor already there (``anchor_of``), else
    ``break_glass``; a new recipient for it replaces the old break-glass key everywhere."""
    try:
        recipient = age.validate_recipient(recipient)
    except age.AgeKeyError as exc:
        raise BreakGlassError(f"break-glass recipient: {exc} (give the age1… line generate printed)") from None
    repo = os.path.abspath(repo)
    with _lock(repo, "break-glass register", check_mode, lock_timeout):
        config = SopsConfig.load(fleet.config_path(repo))
        inv = keyinventory.Inventory.load(repo)
        anchor = anchor or anchor_of(config, inv) or ANCHOR
        res = RepoResult(anchor=anchor, recipient=recipient, config_before=config.text)
        replaced = anchor in config.anchors() and config.anchors()[anchor].recipient != recipient
        config = _register_anchor(config, anchor, recipient)
        inv.record(anchor, KIND, recipient, rotated=replaced)
        _apply(repo, config, identities, res, inv, check_mode)
    n = len(res.changed_files)
    res.msg = (f"&{anchor} {'would be ' if check_mode and res.changed else ''}"
               f"{'registered' if res.changed else 'already registered'} in every rule; {n} file(s) "
               f"{'would be ' if check_mode else ''}rekeyed")
    return res


# --------------------------------------------------------------------------- drill
@dataclass
class DrillResult:
    """What the drill proved: the files whose data key the key opened. Public data only."""

    changed: bool = False
    anchor: str = ""
    recipient: str = ""
    opened: list[str] = field(default_factory=list)
    drilled: str = ""
    msg: str = ""


def _registered(config: SopsConfig, inv: keyinventory.Inventory, recipient: str, anchor: str | None) -> str:
    """The anchor of the break-glass key, refusing a key that is not the registered one."""
    name = anchor or anchor_of(config, inv)
    anchors = config.anchors()
    if not name or name not in anchors:
        raise BreakGlassError(f"{config.path}: no break-glass anchor (&{anchor or ANCHOR}); register the key first "
                              "(playbooks/break_glass.yml --tags register)")
    if anchors[name].recipient != recipient:
        raise BreakGlassError(
            f"the key typed is not the registered break-glass key: its recipient is {recipient}, &{name} in "
            f"{config.path} holds {anchors[name].recipient}; check which page (or shares) you used. Nothing was "
            "recorded")
    return name


def open_every_file(repo: str, identity: str, sc: fleet.Scan | None = None) -> tuple[list[str], list[dict[str, str]]]:
    """(files whose data key ``identity`` alone opens, files it cannot open with why). Only data keys
    are opened, in memory; no value is decrypted and nothing is written."""
    sc = sc or fleet.scan(repo, strict=False)
    recipient = age.recipient_from_identity(identity)
    kr = engine.keyring([identity])
    opened, failed = [], []
    for fp in sc.files:
        try:
            engine.load(fp.path).data_key(kr)
        except engine.SopsError as exc:
            have = {r for g in fp.current for r in g}
            why = "the break-glass key is not one of its recipients" if recipient not in have else exc.message
            failed.append({"path": fp.rel, "error": why})
            continue
        opened.append(fp.rel)
    failed += [{"path": u["path"], "error": u["error"]} for u in sc.unreadable]
    return opened, failed


def drill(repo: str, identity: str, anchor: str | None = None, check_mode: bool = False,
          today: str | None = None, lock_timeout: float = 0) -> DrillResult:
    """The drill: ``identity`` must open the data key of every sops file; then the date is recorded
    in the key inventory. Any file it cannot open fails the drill (listed), and nothing is recorded."""
    repo = os.path.abspath(repo)
    recipient = age.recipient_from_identity(identity)
    with _lock(repo, "break-glass drill", check_mode, lock_timeout):
        sc = fleet.scan(repo, strict=False)
        inv = keyinventory.Inventory.load(repo)
        name = _registered(sc.config, inv, recipient, anchor)
        opened, failed = open_every_file(repo, identity, sc)
        if failed:
            listing = "; ".join(f"{f['path']}: {f['error']}" for f in failed[:20])
            raise BreakGlassError(
                f"drill failed: the break-glass key opens {len(opened)} of {len(opened) + len(failed)} sops files; "
                f"it cannot open {listing}. Run playbooks/break_glass.yml --tags register (or rekey.yml), then drill "
                "again. Nothing was recorded", failed)
        day = today or _today()
        if inv.find(name) is None:
            inv.record(name, KIND, recipient)
        inv.mark_drilled(name, day)
        res = DrillResult(changed=inv.changed, anchor=name, recipient=recipient, opened=opened, drilled=day)
        if not check_mode and inv.changed:
            vcs.record_pending(repo, [keyinventory.inventory_file(repo)])
            inv.save()
    res.msg = (f"drill passed: the break-glass key &{name} opens the data key of all {len(opened)} sops files; "
               f"drill date {day} {'would be ' if check_mode else ''}recorded")
    return res


# --------------------------------------------------------------------------- recover
def _new_admin_key(key_file: str | None, recipient: str | None, check_mode: bool) -> tuple[str | None, str | None]:
    """(identity or None, recipient or None) of the new admin key; generated only when the file is missing."""
    if recipient:
        try:
            return None, age.validate_recipient(recipient)
        except age.AgeKeyError as exc:
            raise BreakGlassError(f"admin_recipient: {exc}") from None
    if not key_file:
        raise BreakGlassError("say where the new admin key goes (admin_key_file), or give its recipient "
                              "(admin_recipient)")
    check_private_dir(os.path.dirname(os.path.abspath(key_file)))
    if os.path.lexists(key_file):
        mode = exposed_mode(key_file)
        if mode is not None:
            # Others may already hold a copy: such a key must not become the fleet's new admin key.
            raise BreakGlassError(f"admin_key_file {key_file} has mode {mode:04o} (others can read it): point "
                                  "admin_key_file at a new file (it is created 0600), or chmod 600 it if nobody "
                                  "else can have read it")
        try:
            identity = age.read_identity_file(key_file)[0]
        except age.AgeKeyError as exc:
            raise BreakGlassError(f"{exc}; point admin_key_file at a new file (it is created 0600)") from None
        return identity, age.recipient_from_identity(identity)
    if check_mode:
        return None, None
    return age.generate_identity(), None


def _write_admin_key(path: str, identity: str) -> bool:
    """Write the new admin key file 0600 in a private directory; False when it already holds it."""
    if os.path.lexists(path):
        return False
    ensure_private_dir(os.path.dirname(os.path.abspath(path)), 0o700)
    atomic_write(path, age.format_identity_file(identity), mode=0o600, private=True)
    return True


def _admin_everywhere(config: SopsConfig, name: str) -> None:
    """Make &name a member of every reachable creation rule (first key group when missing from all)."""
    for rule in list(config.rules):
        current = config.find_rule(rule.path_regex)
        if current is not None and current.index == rule.index:
            config.ensure_rule_member(rule.path_regex, name)


def recover(repo: str, identity: str, admin_anchor: str = "admin", admin_key_file: str | None = None,
            admin_recipient: str | None = None, replace: bool = True, admin_group: str = "users",
            check_mode: bool = False, lock_timeout: float = 0) -> RepoResult:
    """The day every admin key is lost: with the break-glass ``identity`` as the only opener, register a
    new admin key as ``&admin_anchor`` in every rule and rekey every file to it.

    The new key is generated into ``admin_key_file`` (0600, never returned) when
    that file does not exist, read from it when it does, or given as
    ``admin_recipient``. ``replace`` puts the new recipient into the existing
    ``&admin_anchor`` (the lost key leaves every rule with it); otherwise
    ``&admin_anchor`` must be a new name and goes beside the lost one.
    """
    repo = os.path.abspath(repo)
    bg_recipient = age.recipient_from_identity(identity)
    new_identity, new_recipient = _new_admin_key(admin_key_file, admin_recipient, check_mode)
    with _lock(repo, "break-glass recover", check_mode, lock_timeout):
        config = SopsConfig.load(fleet.config_path(repo))
        inv = keyinventory.Inventory.load(repo)
        _registered(config, inv, bg_recipient, None)
        res = RepoResult(anchor=admin_anchor, config_before=config.text)
        if new_identity is not None and new_recipient is None:
            new_recipient = age.recipient_from_identity(new_identity)
        if new_recipient is None:  # check mode, key not generated: say what would happen
            res.changed, res.touched = True, [fleet.CONFIG_NAME]
            res.msg = (f"a new admin key would be generated into {admin_key_file}, registered as &{admin_anchor} "
                       "in every rule, and every file rekeyed to it")
            return res
        res.recipient = new_recipient
        anchors = config.anchors()
        if admin_anchor in anchors and anchors[admin_anchor].recipient != new_recipient and not replace:
            raise BreakGlassError(f"{config.path}: &{admin_anchor} already holds another key; choose a new "
                                  "admin_anchor to put the new key beside it, or replace=true")
        replaced = admin_anchor in anchors and anchors[admin_anchor].recipient != new_recipient
        group = None if admin_anchor in anchors or config.layout == "flat" else admin_group
        config.ensure_recipient(admin_anchor, new_recipient, group=group)
        _admin_everywhere(config, admin_anchor)
        inv.record(admin_anchor, "admin", new_recipient, rotated=replaced)
        key = new_identity
        # The key file is written after the plan and before .sops.yaml names the key: a run stopped later
        # leaves a key file the next run reuses, never a registered key nobody holds.
        write_key = (lambda: _write_admin_key(admin_key_file, key)) if key and admin_key_file else None
        _apply(repo, config, [identity], res, inv, check_mode, before_write=write_key)
        if key is not None and not check_mode:
            opened, res.not_opened = open_every_file(repo, key)
            res.opened = len(opened)
    verb = "would be " if check_mode else ""
    res.msg = (f"&{admin_anchor} {verb}{'registered' if res.changed else 'already registered'} with the new admin "
               f"key; {len(res.changed_files)} file(s) {verb}rekeyed with the break-glass key"
               + (f"; the new key opens {res.opened} sops file(s)" if res.opened else "")
               + (f"; it cannot open {len(res.not_opened)} (see not_opened)" if res.not_opened else ""))
    return res
