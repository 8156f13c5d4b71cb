# Copyright: nixfleet.sops contributors
# MIT License
"""The key inventory: which keys this collection created, of what kind, and when.

It lives in the secrets repository (``.nixfleet/keys.yaml``) beside
``.sops.yaml`` and holds public data only (anchor, kind, recipient, created
date, host). The audit compares the dates with a policy of maximum ages.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import asdict, dataclass
from typing import Any

from .age import parse_ssh_public_key, validate_recipient
from .errors import NixfleetError
from .fsutil import UnsafePathError, atomic_write, make_dirs, read_regular, remove_made_dirs
from .sops_config import check_anchor_name

INVENTORY_PATH = os.path.join(".nixfleet", "keys.yaml")
KINDS = ("host", "user", "deploy", "break-glass", "admin")
HEADER = (
    "# Key inventory kept by nixfleet.sops: which keys it created and when.\n"
    "# Public data only. The audit compares `created` with the key-age policy.\n"
)
from .module_support import note_missing_lib

# Guarded: without the library, modules fail with missing_required_lib (module_support.require_libs).
try:
    import yaml
except ImportError:
    HAS_PYYAML = False
    note_missing_lib("PyYAML")
else:
    HAS_PYYAML = True


MAX_BYTES = 64 << 20
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader) if HAS_PYYAML else None


class InventoryError(NixfleetError, ValueError):
    """Malformed inventory or entry; the message names the file and entry."""


@dataclass
class KeyEntry:
    """One key: its anchor in .sops.yaml (or a deploy key's name), kind, public part and dates.

    ``created`` is when this key was made; ``rotated`` when it replaced an
    earlier key of the same anchor (absent for a key never rotated);
    ``drilled`` when a break-glass drill last proved it opens every file.
    """

    anchor: str
    kind: str
    recipient: str
    created: str
    host: str | None = None
    rotated: str | None = None
    drilled: str | None = None

    def age_days(self, today: datetime.date | None = None) -> int:
        """Days since the key was created."""
        today = today or datetime.datetime.now(datetime.UTC).date()
        return (today - datetime.date.fromisoformat(self.created[:10])).days


def inventory_file(repo: str) -> str:
    """Path of the inventory in the secrets repository ``repo``."""
    return os.path.join(repo, INVENTORY_PATH)


def _today() -> str:
    return datetime.datetime.now(datetime.UTC).date().isoformat()


def _check_date(path: str, i: int, entry: KeyEntry) -> None:
    for name in ("created", "rotated", "drilled"):
        value = getattr(entry, name)
        if value is None and name != "created":
            continue
        try:
            datetime.date.fromisoformat(str(value)[:10])
        except ValueError:
            raise InventoryError(f"{path}: entry {i + 1} ({entry.anchor}): {name} {value!r} "
                                 "is not a date (YYYY-MM-DD)") from None


def _parse(text: str, path: str) -> list[KeyEntry]:
    try:
        # The inventory is written without anchors: any alias is someone else's doing (an alias bomb).
        if any(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text, Loader=_Loader)):
            raise InventoryError(f"{path}: YAML aliases are not allowed here; restore the file from version control")
        data = yaml.load(text, Loader=_Loader) or {}
    except yaml.YAMLError as exc:
        raise InventoryError(f"{path}: not valid YAML ({exc.__class__.__name__}); fix or remove the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys") or [], list):
        raise InventoryError(f"{path}: expected a mapping with a 'keys' list; fix or remove the file")
    entries = []
    for i, item in enumerate(data.get("keys") or []):
        if not isinstance(item, dict):
            raise InventoryError(f"{path}: entry {i + 1} is not a mapping; fix or remove it")
        try:
            entry = KeyEntry(**{k: (str(v) if v is not None else None) for k, v in item.items()})
        except TypeError:
            raise InventoryError(f"{path}: entry {i + 1} has unknown or missing fields") from None
        _check_date(path, i, entry)
        entries.append(entry)
    return entries


def _check_public(anchor: str, kind: str, recipient: str) -> None:
    if kind not in KINDS:
        raise InventoryError(f"unknown key kind {kind!r} for {anchor}; use one of {', '.join(KINDS)}")
    try:
        check_anchor_name(anchor, "key inventory anchor")
    except ValueError as exc:
        raise InventoryError(str(exc)) from None
    if kind == "deploy":
        # Only a public key line may land in this committed, world-readable file.
        parse_ssh_public_key(recipient)
    else:
        validate_recipient(recipient)


class Inventory:
    """The inventory of one repository: read once, changed in memory, written once."""

    def __init__(self, repo: str, entries: list[KeyEntry], text: str) -> None:
        self.repo = repo
        self.path = inventory_file(repo)
        self.entries = entries
        self.original = text

    @classmethod
    def load(cls, repo: str) -> Inventory:
        """Read the inventory of ``repo``; a missing file is an empty inventory."""
        path = inventory_file(repo)
        try:
            text = read_regular(path, MAX_BYTES, "key inventory").decode("utf-8")
        except FileNotFoundError:
            return cls(repo, [], "")
        except UnsafePathError as exc:
            raise InventoryError(exc.message) from None
        except UnicodeDecodeError:
            raise InventoryError(f"{path}: not UTF-8 text; fix or remove the file") from None
        return cls(repo, _parse(text, path), text)

    def find(self, anchor: str, kind: str | None = None) -> KeyEntry | None:
        """The entry of ``anchor`` (of ``kind`` when given)."""
        return next((e for e in self.entries if e.anchor == anchor and (kind is None or e.kind == kind)), None)

    def record(self, anchor: str, kind: str, recipient: str, host: str | None = None, created: str | None = None,
               rotated: bool = False) -> bool:
        """Record a key; True when the inventory changed.

        The same anchor with the same recipient again changes nothing (the
        first creation date stays). A new recipient for a known anchor is a new
        key: its creation date is reset, and with ``rotated`` the day is kept
        as the anchor's last rotation.
        """
        _check_public(anchor, kind, recipient)
        today = created or _today()
        e = self.find(anchor, kind)
        if e is None:
            self.entries.append(KeyEntry(anchor=anchor, kind=kind, recipient=recipient, created=today, host=host))
            return True
        if e.recipient == recipient and e.host == host:
            return False
        if e.recipient != recipient:
            e.created = today
            if rotated:
                e.rotated = today
            e.drilled = None  # a drill proved the old key, not this one
        e.recipient, e.host = recipient, host
        return True

    def remove(self, anchor: str) -> bool:
        """Drop every entry for ``anchor``; True when something was removed."""
        kept = [e for e in self.entries if e.anchor != anchor]
        changed = len(kept) != len(self.entries)
        self.entries = kept
        return changed

    def mark_drilled(self, anchor: str, day: str | None = None) -> bool:
        """Record that a drill proved ``anchor``'s key today (or on ``day``)."""
        e = self.find(anchor)
        if e is None:
            raise InventoryError(f"{self.path}: no key {anchor!r} to record a drill for; register it first")
        day = day or _today()
        if e.drilled == day:
            return False
        e.drilled = day
        return True

    @property
    def text(self) -> str:
        """The inventory as it would be written."""
        if not self.entries and not self.original:
            return ""
        items = [{k: v for k, v in asdict(e).items() if v is not None}
                 for e in sorted(self.entries, key=lambda e: (e.kind, e.anchor))]
        return HEADER + yaml.safe_dump({"keys": items}, sort_keys=False, default_flow_style=False)

    @property
    def changed(self) -> bool:
        """Whether the text to write differs from what was read."""
        return self.text != self.original

    def save(self, check_mode: bool = False) -> bool:
        """Write the inventory atomically when it changed; True when it changed."""
        if not self.changed:
            return False
        if not check_mode:
            made = make_dirs(os.path.dirname(self.path), 0o755)
            try:
                atomic_write(self.path, self.text, default_mode=0o644)
            except BaseException:
                remove_made_dirs(made)
                raise
            self.original = self.text
        return True


def load(repo: str) -> list[KeyEntry]:
    """The entries of the inventory of ``repo`` (a missing file is an empty inventory)."""
    return Inventory.load(repo).entries


def record(repo: str, anchor: str, kind: str, recipient: str, host: str | None = None, created: str | None = None,
           check_mode: bool = False) -> bool:
    """Record one key and write the inventory (see Inventory.record); True when it changed."""
    inv = Inventory.load(repo)
    return inv.record(anchor, kind, recipient, host, created) and inv.save(check_mode)


def remove(repo: str, anchor: str, check_mode: bool = False) -> bool:
    """Drop every entry for ``anchor`` and write the inventory; True when something was removed."""
    inv = Inventory.load(repo)
    return inv.remove(anchor) and inv.save(check_mode)


def check_policy(max_age_days: Any, where: str = "max_age_days") -> dict[str, int]:
    """The key-age policy ``{kind: days}`` checked: known kinds, whole days of 1 or more."""
    if not isinstance(max_age_days, dict):
        raise InventoryError(f"{where}: give a mapping of key kind to days, e.g. {{host: 365, deploy: 180}}")
    out: dict[str, int] = {}
    for kind, days in max_age_days.items():
        if kind not in KINDS:
            raise InventoryError(f"{where}: unknown key kind {kind!r}; use {', '.join(KINDS)}")
        if isinstance(days, bool) or not isinstance(days, (int, str)) or not str(days).strip().isdigit() \
                or int(days) < 1:
            raise InventoryError(f"{where}.{kind}: {days!r} is not a number of days (1 or more)")
        out[kind] = int(days)
    return out


def overdue(entries: list[KeyEntry], max_age_days: dict[str, int], today: datetime.date | None = None) -> list[dict]:
    """Entries older than the policy allows for their kind (kinds without a limit never expire)."""
    max_age_days = check_policy(max_age_days)
    out = []
    for e in entries:
        limit = max_age_days.get(e.kind)
        if limit is None:
            continue
        age = e.age_days(today)
        if age > int(limit):
            out.append(
                {"anchor": e.anchor, "kind": e.kind, "host": e.host, "age_days": age, "max_age_days": int(limit)}
            )
    return out
