# Copyright: nixfleet.sops contributors
# MIT License
"""Binary store: the whole file is one string under ``data`` in a sops JSON document."""

from __future__ import annotations

from typing import Any

from ..errors import SopsFormatError
from . import json as _json

NAME = "binary"
FLOATS = True
load = _json.load
emit = _json.emit
find_metadata = _json.find_metadata
emit_metadata = _json.emit_metadata


def to_tree(content: bytes) -> list[dict]:
    """A plain file's bytes as sops' binary tree (raw bytes survive via surrogateescape)."""
    return [{"data": content.decode("utf-8", "surrogateescape")}]


def from_tree(docs: list[dict], path: str | None = None) -> bytes:
    """The file bytes held in a decrypted binary tree."""
    value = docs[0].get("data") if docs else None
    if not isinstance(value, str):
        raise SopsFormatError("no binary data found in the tree ('data' must be a string)", path)
    return value.encode("utf-8", "surrogateescape")


def emit_plain(docs: list[dict]) -> bytes:
    return from_tree(docs)


def check(docs: Any) -> None:
    return None
