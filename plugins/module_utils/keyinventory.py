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

import yaml

from .age import parse_ssh_public_key, validate_recipient
from .errors import NixfleetError
from .fsutil import atomic_write, make_dirs
from .sops_config import check_anchor_name

INVENTORY_PATH = os.path.join(".nixfleet", "keys.yaml")
KINDS = ("host", "user", "deploy", "break-glass", "admin")
HEADER = (
    "# Key inventory kept by nixfleet.sops: which keys it created and when.\n"
    "# Public data only. The audit compares `created` with the key-age policy.\n"
)


class InventoryError(NixfleetError, ValueError):
    """Malformed inventory or entry; the message names the file and entry."""


@dataclass
class KeyEntry:
    """One key: its anchor in .sops.yaml (or a deploy key's name), kind, public part, creation date."""

    anchor: str
    kind: str
    recipient: str
    created: str
    host: str | None = None

    def age_days(self, today: datetime.date | None = None) -> int:
        """Days since the key was created."""
        today = today or datetime.datetime.now(datetime.UTC).date()
        return (today - datetime.date.fromisoformat(self.created[:10])).days


def inventory_file(repo: str) -> str:
    """Path of the inventory in the secrets repository ``repo``."""
    return os.path.join(repo, INVENTORY_PATH)


def load(repo: str) -> list[KeyEntry]:
    """Read the inventory; a missing file is an empty inventory."""
    path = inventory_file(repo)
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
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
        try:
            datetime.date.fromisoformat(entry.created[:10])
        except ValueError:
            raise InventoryError(f"{path}: entry {i + 1} ({entry.anchor}): created {entry.created!r} "
                                 "is not a date (YYYY-MM-DD)") from None
        entries.append(entry)
    return entries


def _render(entries: list[KeyEntry]) -> str:
    items = []
    for e in sorted(entries, key=lambda e: (e.kind, e.anchor)):
        d = {k: v for k, v in asdict(e).items() if v is not None}
        items.append(d)
    return HEADER + yaml.safe_dump({"keys": items}, sort_keys=False, default_flow_style=False)


def record(
    repo: str,
    anchor: str,
    kind: str,
    recipient: str,
    host: str | None = None,
    created: str | None = None,
    check_mode: bool = False,
) -> bool:
    """Record a key; return True when the inventory changed.

    Recording the same anchor with the same recipient again changes nothing
    (the first creation date stays). A new recipient for a known anchor is a
    new key: its date is reset.
    """
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
    entries = load(repo)
    today = created or datetime.datetime.now(datetime.UTC).date().isoformat()
    for e in entries:
        if e.anchor == anchor and e.kind == kind:
            if e.recipient == recipient and e.host == host:
                return False
            if e.recipient != recipient:
                e.created = today
            e.recipient, e.host = recipient, host
            break
    else:
        entries.append(KeyEntry(anchor=anchor, kind=kind, recipient=recipient, created=today, host=host))
    if not check_mode:
        make_dirs(os.path.dirname(inventory_file(repo)), 0o755)
        atomic_write(inventory_file(repo), _render(entries), default_mode=0o644)
    return True


def remove(repo: str, anchor: str, check_mode: bool = False) -> bool:
    """Drop every entry for ``anchor``; return True when something was removed."""
    entries = load(repo)
    kept = [e for e in entries if e.anchor != anchor]
    if len(kept) == len(entries):
        return False
    if not check_mode:
        atomic_write(inventory_file(repo), _render(kept), default_mode=0o644)
    return True


def overdue(entries: list[KeyEntry], max_age_days: dict[str, int], today: datetime.date | None = None) -> list[dict]:
    """Entries older than the policy allows for their kind (kinds without a limit never expire)."""
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
