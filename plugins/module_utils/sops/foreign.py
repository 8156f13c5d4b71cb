# Copyright: nixfleet.sops contributors
# MIT License
"""Master keys of other kinds (pgp, kms, gcp_kms, hckms, azure_kv, hc_vault): kept, never made.

The native engine cannot wrap a data key for them, but it need not: updatekeys
keeps the data key (and, with the same key groups and threshold, every group's
Shamir share), so their entries stay valid as sops wrote them. This module
keeps each entry field for field, lays it out in sops' struct order, names it
by the identifier ``.sops.yaml`` uses for it, and decides which entries a rule
keeps, drops or would add.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import SopsError, SopsFormatError

# sops' order of the kinds: in a key group, and at the top of the metadata (single group; the
# top-level ``pgp`` sits after ``mac`` there, see metadata.to_mapping).
GROUP_ORDER = ("pgp", "kms", "gcp_kms", "hckms", "azure_kv", "hc_vault")
TOP_ORDER = ("kms", "gcp_kms", "hckms", "azure_kv", "hc_vault")
# Field order of each entry, as sops' stores.go structs declare it.
FIELDS = {
    "pgp": ("created_at", "enc", "fp"),
    "kms": ("arn", "role", "context", "created_at", "enc", "aws_profile"),
    "gcp_kms": ("resource_id", "created_at", "enc"),
    "hckms": ("key_id", "created_at", "enc"),
    "azure_kv": ("vault_url", "name", "version", "created_at", "enc"),
    "hc_vault": ("vault_address", "engine_path", "key_name", "created_at", "enc"),
}
# .sops.yaml spells two kinds differently from the metadata.
CONFIG_NAMES = {"azure_keyvault": "azure_kv", "hc_vault_transit_uri": "hc_vault"}

Foreign = dict[str, list[dict[str, Any]]]  # kind -> entries, for one key group


def parse_group(raw: dict[str, Any], path: str | None, where: str) -> Foreign:
    """The foreign entries of one key group (or of the top level), as written."""
    out: Foreign = {}
    for kind in GROUP_ORDER:
        entries = raw.get(kind)
        if not entries:
            continue
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise SopsFormatError(f"{where}.{kind} is not a list of {kind} entries", path)
        out[kind] = copy.deepcopy(entries)
    return out


def layout(kind: str, entry: dict[str, Any]) -> dict[str, Any]:
    """An entry in sops' field order (fields sops does not know keep their place after them)."""
    order = FIELDS[kind]
    out = {k: entry[k] for k in order if k in entry}
    out.update((k, v) for k, v in entry.items() if k not in out)
    return out


def entry_id(kind: str, entry: dict[str, Any]) -> str:
    """The identifier ``.sops.yaml`` uses for an entry (a PGP fingerprint, a KMS ARN, a Vault URI, …)."""
    def field(name: str) -> str:
        value = entry.get(name)
        return "" if value is None else str(value).strip()

    if kind == "pgp":
        return _norm("pgp", field("fp"))
    if kind == "kms":
        return field("arn") + (f"+{field('role')}" if field("role") else "")
    if kind == "azure_kv":
        version = field("version")
        return f"{field('vault_url').rstrip('/')}/keys/{field('name')}" + (f"/{version}" if version else "")
    if kind == "hc_vault":
        return f"{field('vault_address').rstrip('/')}/v1/{field('engine_path')}/keys/{field('key_name')}"
    return field({"gcp_kms": "resource_id", "hckms": "key_id"}[kind])


def _norm(kind: str, ident: str) -> str:
    ident = ident.strip()
    if kind == "pgp":
        return ident.replace(" ", "").upper()
    if kind in ("azure_kv", "hc_vault"):
        return ident.rstrip("/")
    return ident


def _wanted_ids(kind: str, value: Any, path: str | None) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise SopsError(f"foreign keys of kind {kind} must be a list of identifiers", path)
    out = []
    for item in items:
        if isinstance(item, dict):  # .sops.yaml's mapping forms of kms and azure_keyvault
            if kind == "kms":
                item = str(item.get("arn", "")) + (f"+{item['role']}" if item.get("role") else "")
            elif kind == "azure_kv":
                parts = (item.get("vaultUrl") or item.get("vault_url", ""), "keys",
                         item.get("key") or item.get("name", ""), item.get("version", ""))
                item = "/".join(str(x) for x in parts if x)
            else:
                raise SopsError(f"foreign keys of kind {kind} are given as strings", path)
        ident = _norm(kind, str(item))
        if ident and ident not in out:
            out.append(ident)
    return out


def normalize(foreign: list[dict[str, Any]] | None, groups: int, path: str | None) -> list[dict[str, list[str]]] | None:
    """Wanted foreign keys per key group as {kind: [identifiers]} (kinds in either spelling)."""
    if foreign is None:
        return None
    if len(foreign) > groups:
        raise SopsError(f"foreign keys are given for {len(foreign)} key groups, the rule has {groups}", path)
    out: list[dict[str, list[str]]] = []
    for g in list(foreign) + [{}] * (groups - len(foreign)):
        wanted: dict[str, list[str]] = {}
        for name, value in (g or {}).items():
            kind = CONFIG_NAMES.get(name, name)
            if kind not in FIELDS:
                raise SopsError(f"unknown kind of master key {name!r} (known: {', '.join(FIELDS)})", path)
            ids = _wanted_ids(kind, value, path)
            if ids:
                wanted.setdefault(kind, []).extend(i for i in ids if i not in wanted.get(kind, []))
        out.append(wanted)
    return out


def plan(
    current: list[Foreign], groups: int, wanted: list[dict[str, list[str]]] | None
) -> tuple[list[Foreign], list[str], list[str]]:
    """(entries kept per new group, dropped ``kind:id``, missing ``kind:id`` the file does not have).

    ``wanted`` None keeps each group's entries as they are (groups that go
    away lose theirs). Kept entries are the file's own, unchanged, in order.
    """
    kept: list[Foreign] = []
    dropped: list[str] = []
    missing: list[str] = []
    for gi in range(max(groups, len(current))):
        have = current[gi] if gi < len(current) else {}
        if gi >= groups:
            dropped += [f"{k}:{entry_id(k, e)}" for k, entries in have.items() for e in entries]
            continue
        if wanted is None:
            kept.append(copy.deepcopy(have))
            continue
        want = wanted[gi]
        group: Foreign = {}
        for kind, entries in have.items():
            for e in entries:
                if entry_id(kind, e) in want.get(kind, []):
                    group.setdefault(kind, []).append(copy.deepcopy(e))
                else:
                    dropped.append(f"{kind}:{entry_id(kind, e)}")
        for kind, ids in want.items():
            have_ids = [entry_id(kind, e) for e in have.get(kind, [])]
            missing += [f"{kind}:{i}" for i in ids if i not in have_ids]
        kept.append(group)
    return kept, dropped, missing


def describe(foreign: list[Foreign]) -> str:
    """``pgp key(s) FP1, FP2; kms key(s) …`` for messages (identifiers are public)."""
    by_kind: dict[str, list[str]] = {}
    for group in foreign:
        for kind, entries in group.items():
            by_kind.setdefault(kind, []).extend(entry_id(kind, e) for e in entries)
    return "; ".join(f"{kind} key(s) {', '.join(ids)}" for kind, ids in by_kind.items())
