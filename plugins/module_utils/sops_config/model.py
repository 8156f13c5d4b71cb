# Copyright: nixfleet.sops contributors
# MIT License
"""What one ``.sops.yaml`` text means: anchors and creation rules as sops reads them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .parse import Node, _scalar_data
from .regex import compile_path_regex


# ============================================================================ model
@dataclass(frozen=True)
class Anchor:
    """A recipient anchor: ``&name age1…`` somewhere in ``.sops.yaml``."""

    name: str
    recipient: str
    group: str | None
    line: int  # 1-based


@dataclass
class AgeField:
    """The ``age`` entry of a rule (no key_groups) or of one key group."""

    owner: Node  # the mapping that holds (or would hold) ``age``
    key: Node | None
    value: Node | None

    def tokens(self) -> list[str]:
        """Members in order: ``*name`` for an alias, the recipient text for a literal."""
        v = self.value
        if v is None:
            return []
        if v.kind == "alias":
            return ["*" + (v.value or "")]
        if v.kind == "scalar":
            return _split_recipients(v.value or "") if _scalar_data(v) is not None else []
        if v.kind == "seq":
            out: list[str] = []
            for item in v.items:
                if item.kind == "alias":
                    out.append("*" + (item.value or ""))
                elif item.kind == "scalar":
                    out.extend(_split_recipients(item.value or ""))
                else:
                    out.append("<" + item.kind + ">")
            return out
        return ["<" + v.kind + ">"]


def _split_recipients(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


@dataclass
class CreationRule:
    """One entry of ``creation_rules`` as sops reads it."""

    index: int
    line: int  # 1-based
    path_regex: str | None
    key_groups: list[list[str]]  # recipients (age) per key group; one group when the rule has no key_groups
    shamir_threshold: int | None
    fields: dict[str, Any]  # encrypted_regex, unencrypted_suffix, … when present
    other_keys: dict[str, Any]  # pgp, kms, … (the rule's or its groups'), untouched
    members: list[list[str]]  # age tokens per group: "*anchor" or literal recipient
    uses_key_groups: bool
    node: Node = field(repr=False)

    @property
    def recipients(self) -> list[str]:
        """Every age recipient the rule names, flattened over key groups, in order, no duplicates."""
        seen: list[str] = []
        for group in self.key_groups:
            for r in group:
                if r not in seen:
                    seen.append(r)
        return seen

    @property
    def anchors(self) -> list[str]:
        """Anchor names referred to (by alias) anywhere in the rule's age recipients."""
        out: list[str] = []
        for group in self.members:
            for t in group:
                if t.startswith("*") and t[1:] not in out:
                    out.append(t[1:])
        return out

    def matches(self, relative_path: str) -> bool:
        """True when sops would pick this rule for ``relative_path`` (ignoring earlier rules)."""
        if not self.path_regex:
            return True
        return bool(compile_path_regex(self.path_regex).search(relative_path))

    def describe(self) -> str:
        """Short human name: the path_regex, or 'the catch-all rule'."""
        return f"rule {self.path_regex!r}" if self.path_regex else "the catch-all rule (no path_regex)"


