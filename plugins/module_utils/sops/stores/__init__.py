# Copyright: nixfleet.sops contributors
# MIT License
"""File formats, chosen by extension exactly as sops chooses them."""

from __future__ import annotations

from types import ModuleType


def format_for_path(path: str) -> str:
    """sops' FormatForPath: yaml, json, dotenv, ini, else binary."""
    if path.endswith(".yaml") or path.endswith(".yml"):
        return "yaml"
    if path.endswith(".json"):
        return "json"
    if path.endswith(".env"):
        return "dotenv"
    if path.endswith(".ini"):
        return "ini"
    return "binary"


def store_for(fmt: str) -> ModuleType:
    """The store module for a format name."""
    from . import binary, dotenv, ini, json, yaml

    stores = {"yaml": yaml, "json": json, "dotenv": dotenv, "ini": ini, "binary": binary}
    try:
        return stores[fmt]
    except KeyError:
        raise ValueError(f"unknown sops format {fmt!r} (expected one of {', '.join(stores)})") from None
