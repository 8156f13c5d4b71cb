# Copyright: nixfleet.sops contributors
# MIT License
"""dotenv store: ``KEY=value`` lines, ``#`` comments, metadata as sorted ``sops_…`` lines."""

from __future__ import annotations

from typing import Any

from ..errors import SopsFormatError
from ..metadata import flatten, unflatten
from ..tree import Comment
from . import StructuredStore
from .goyaml import scalar_text

PREFIX = "sops_"


def _lines(data: bytes, path: str | None) -> list[str]:
    try:
        return data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise SopsFormatError("not UTF-8 text, cannot be a dotenv file", path) from None


def value_text(value: Any) -> str:
    """A scalar as sops writes it in a dotenv (and INI) file."""
    if isinstance(value, str):
        return value.replace("\n", "\\n")
    if isinstance(value, float):
        from ..aes import go_format_float

        return go_format_float(value)
    return "true" if value is True else "false" if value is False else scalar_text(value)


def _check_unique(key: str, number: int, first_line: dict[str, int], path: str | None) -> None:
    # sops keeps both lines, but whoever reads the file (a shell, sops-nix) sees only one of them,
    # and a tree of mappings cannot hold both: refuse rather than pick one silently.
    if key in first_line:
        raise SopsFormatError(
            f"line {number}: duplicate key {key!r} (first at line {first_line[key]}); sops keeps both, but "
            "programs reading the file see only one: remove one of them (sops edit)", path)
    first_line[key] = number


class DotenvStore(StructuredStore):
    """sops' dotenv store: one flat document of strings."""

    name = "dotenv"
    reserved_prefix = PREFIX

    def load(self, data: bytes, path: str | None = None) -> tuple[list[dict], dict | None]:
        """Parse a dotenv file (as sops' dotenv store does) into one flat document and its metadata."""
        doc: dict = {}
        flat: dict[str, str] = {}
        first_line: dict[str, int] = {}
        for number, line in enumerate(_lines(data, path), start=1):
            if not line:
                continue
            if line.startswith("#"):
                doc[Comment(line[1:])] = None
                continue
            pos = line.find("=")
            if pos < 0:
                raise SopsFormatError(f"line {number}: invalid dotenv line (no '=')", path)
            key, value = line[:pos], line[pos + 1 :].replace("\\n", "\n")
            _check_unique(key, number, first_line, path)
            if key.startswith(PREFIX):
                flat[key[len(PREFIX) :]] = value
            else:
                doc[key] = value
        return [doc], (unflatten(flat) if flat else None)

    def emit_plain(self, docs: list[dict]) -> bytes:
        """dotenv text of a flat document."""
        out = []
        for key, value in (docs[0] if docs else {}).items():
            if isinstance(key, Comment):
                out.append(f"#{key.text}\n")
                continue
            if isinstance(value, (dict, list)):
                raise SopsFormatError(f"cannot use complex value in dotenv file; offending key {key}")
            out.append(f"{key}={value_text(value)}\n")
        return "".join(out).encode("utf-8", "surrogateescape")

    def emit_metadata(self, metadata: dict[str, Any]) -> bytes:
        """The ``sops_…`` lines, sorted by key as sops writes them."""
        flat = flatten(metadata)
        return "".join(f"{PREFIX}{k}={flat[k]}\n" for k in sorted(flat)).encode("utf-8")

    def emit(self, docs: list[dict], metadata: dict[str, Any]) -> bytes:
        """The whole encrypted file: the values, then the ``sops_…`` lines."""
        return self.emit_plain(docs) + self.emit_metadata(metadata)

    def find_metadata(self, data: bytes, path: str | None = None) -> tuple[list[tuple[int, int]], dict | None]:
        """Spans of the ``sops_`` lines and the metadata they hold."""
        spans = []
        flat: dict[str, str] = {}
        first_line: dict[str, int] = {}
        pos = 0
        for number, line in enumerate(data.split(b"\n"), start=1):
            end = pos + len(line) + 1
            if line.startswith(PREFIX.encode()):
                text = line.decode("utf-8", "replace")
                key, _unused, value = text.partition("=")
                _check_unique(key, number, first_line, path)
                flat[key[len(PREFIX) :]] = value
                spans.append((pos, min(end, len(data))))
            pos = end
        if not flat:
            return [], None
        return spans, unflatten(flat)
