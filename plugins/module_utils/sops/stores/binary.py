# Copyright: nixfleet.sops contributors
# MIT License
"""Binary store: the whole file is one string under ``data`` in a sops JSON document."""

from __future__ import annotations

from typing import Any

from ..errors import SopsError, SopsFormatError
from .json import JsonStore


class BinaryStore(JsonStore):
    """sops' binary store: JSON on disk, one ``data`` string in the tree, no key paths."""

    name = "binary"
    floats = True
    structured = False

    def to_documents(self, data: Any, path: str | None = None) -> list[dict]:
        """A plain file's bytes as sops' binary tree (raw bytes survive via surrogateescape)."""
        if not isinstance(data, (bytes, bytearray)):
            raise SopsError("binary files take bytes as data", path)
        return [{"data": bytes(data).decode("utf-8", "surrogateescape")}]

    def from_documents(self, docs: list[dict], path: str | None = None) -> bytes:
        """The file bytes held in a decrypted binary tree."""
        value = docs[0].get("data") if docs else None
        if not isinstance(value, str):
            raise SopsFormatError("no binary data found in the tree ('data' must be a string)", path)
        return value.encode("utf-8", "surrogateescape")

    def emit_plain(self, docs: list[dict]) -> bytes:
        """The file's own bytes."""
        return self.from_documents(docs)
