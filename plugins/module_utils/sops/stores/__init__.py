# Copyright: nixfleet.sops contributors
# MIT License
"""File formats, in the shape of sops' ``stores`` package: one class per format behind one protocol.

A store turns a file's bytes into documents plus the raw ``sops`` mapping and
back, lays out plain and encrypted files as sops 3.11 does, and finds the
metadata block without parsing the rest (the cheap path fleet scans use).
"""

from __future__ import annotations

from typing import Any, Protocol

from ..errors import SopsError


class Store(Protocol):
    """What every format implements (sops' ``sops.Store``, plus the metadata-only fast path)."""

    name: str
    floats: bool  # numbers are float64 in the tree (JSON, binary): ints hash and encrypt as floats
    structured: bool  # holds key paths (everything but binary)

    def load(self, data: bytes, path: str | None = None) -> tuple[list[dict], dict | None]:
        """Documents (values as written, comments kept) and the raw ``sops`` mapping (None: no metadata)."""

    def find_metadata(self, data: bytes, path: str | None = None) -> tuple[list[tuple[int, int]], dict | None]:
        """Byte spans of the metadata block(s) and the raw mapping, without parsing the documents."""

    def emit(self, docs: list[dict], metadata: dict[str, Any]) -> bytes:
        """The whole encrypted file (sops' EmitEncryptedFile)."""

    def emit_plain(self, docs: list[dict]) -> bytes:
        """The plaintext file (what ``sops decrypt`` prints)."""

    def emit_metadata(self, metadata: dict[str, Any]) -> bytes:
        """The metadata block alone, as it sits in an encrypted file (spliced in by updatekeys)."""

    def to_documents(self, data: Any, path: str | None = None) -> list[dict]:
        """User data (a mapping, a list of mappings for YAML, bytes for binary) as documents; checked."""

    def from_documents(self, docs: list[dict], path: str | None = None) -> Any:
        """The inverse of to_documents: the first document, or the bytes of a binary file."""


class StructuredStore:
    """What the four key-path formats share: checking user data on its way into documents."""

    name = ""
    floats = False
    structured = True
    multi_document = False
    reserved_prefix = ""  # dotenv keeps metadata as sops_… lines, so such keys are reserved too

    def to_documents(self, data: Any, path: str | None = None) -> list[dict]:
        """Mappings as documents: one (several for YAML), none using the reserved ``sops`` key."""
        docs = data if isinstance(data, list) else [data]
        if not all(isinstance(d, dict) for d in docs):
            raise SopsError(f"{self.name} files hold a mapping at the top level", path)
        if not self.multi_document and len(docs) != 1:
            raise SopsError(f"{self.name} files hold exactly one document", path)
        reserved = any("sops" in d for d in docs) or bool(self.reserved_prefix) and any(
            isinstance(k, str) and k.startswith(self.reserved_prefix) for k in docs[0])
        if reserved:
            raise SopsError("the data has a top-level 'sops' entry, which sops reserves for its metadata", path)
        return docs

    def from_documents(self, docs: list[dict], path: str | None = None) -> Any:
        """The first document."""
        return docs[0] if docs else {}


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


_STORES: dict[str, Store] = {}


def store_for(fmt: str) -> Store:
    """The store for a format name (yaml, json, dotenv, ini, binary); ValueError for any other."""
    if not _STORES:
        from .binary import BinaryStore
        from .dotenv import DotenvStore
        from .ini import IniStore
        from .json import JsonStore
        from .yaml import YamlStore

        for cls in (YamlStore, JsonStore, DotenvStore, IniStore, BinaryStore):
            _STORES[cls.name] = cls()
    try:
        return _STORES[fmt]
    except KeyError:
        raise ValueError(f"unknown sops format {fmt!r} (expected one of {', '.join(_STORES)})") from None


__all__ = ["Store", "StructuredStore", "format_for_path", "store_for"]
