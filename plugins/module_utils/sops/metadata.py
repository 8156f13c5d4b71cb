# Copyright: nixfleet.sops contributors
# MIT License
"""The ``sops`` metadata block: parsing, and emitting it in sops' field order.

Field order and omission follow sops' ``stores.Metadata`` struct: one key group
is written as top-level ``age`` (and top-level ``pgp``, ``kms``, …); several as
``key_groups`` (with the ``hc_vault`` and ``age`` slots sops always writes)
plus ``shamir_threshold``. Master keys of other kinds are kept entry for entry
(see foreign.py).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from typing import Any

from . import foreign as fk
from .errors import SopsFormatError
from .stanzas import StanzaProblem, stanza_problem
from .stores.goyaml import NilList
from .tree import DEFAULT_UNENCRYPTED_SUFFIX, Rules

# The rule options sops writes into the metadata (mac_only_encrypted is a flag beside them).
RULE_FIELDS = (
    "unencrypted_suffix",
    "encrypted_suffix",
    "unencrypted_regex",
    "encrypted_regex",
    "unencrypted_comment_regex",
    "encrypted_comment_regex",
)


@dataclass
class AgeStanza:
    """One age master key of a file: the recipient and the armored age file holding the key."""

    recipient: str
    enc: str


@dataclass
class Metadata:
    """Parsed ``sops`` metadata."""

    key_groups: list[list[AgeStanza]]
    lastmodified: str = ""
    mac: str = ""
    version: str = ""
    shamir_threshold: int = 0
    rules: Rules = field(default_factory=Rules)
    # Master keys of other kinds per group ({kind: [entries as sops wrote them]}), kept as they are.
    foreign: list[fk.Foreign] = field(default_factory=list)
    # Explicit rule fields as written in the file (sops applies the default suffix only in memory).
    written_rules: dict[str, Any] = field(default_factory=dict)

    @property
    def recipients(self) -> list[list[str]]:
        """Age recipients per key group, in file order."""
        return [[s.recipient for s in g] for g in self.key_groups]

    def has_foreign_keys(self) -> bool:
        """Whether any key group also has master keys of another kind (pgp, kms, …)."""
        return any(v for g in self.foreign for v in g.values())

    @property
    def foreign_keys(self) -> list[dict[str, list[str]]]:
        """The other master keys per key group, as {kind: [identifier as .sops.yaml names it]}."""
        return [{k: [fk.entry_id(k, e) for e in entries] for k, entries in g.items()} for g in self.foreign]

    def stanza_problems(self) -> list[StanzaProblem]:
        """Age stanzas that are structurally broken (armor, header, one stanza of the recipient's type,
        base64, sizes): checked without any identity, so a plan or an audit can see that a file needs a
        rekey to repair them. Empty when all are sound."""
        # A plan and the rekey after it both ask: keep the answer for these exact stanzas.
        key = tuple((s.recipient, s.enc) for group in self.key_groups for s in group)
        cached = getattr(self, "_problems", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        found = [StanzaProblem(gi, s.recipient, problem)
                 for gi, group in enumerate(self.key_groups) for s in group
                 if (problem := stanza_problem(s.recipient, s.enc)) is not None]
        self._problems = (key, found)
        return found

    # ----------------------------------------------------------------- reading
    @classmethod
    def from_mapping(cls, raw: Any, path: str | None = None) -> Metadata:
        """Build from the parsed ``sops`` mapping (YAML/JSON, or unflattened dotenv/INI)."""
        if not isinstance(raw, dict):
            raise SopsFormatError("the 'sops' metadata is not a mapping", path)

        def stanzas(group: Any, where: str) -> list[AgeStanza]:
            out = []
            if group is not None and not isinstance(group, list):
                raise SopsFormatError(f"{where} is not a list of age entries", path)
            for entry in group or []:
                if not isinstance(entry, dict) or not isinstance(entry.get("recipient"), str):
                    raise SopsFormatError(f"{where}: an age entry without a recipient", path)
                enc = entry.get("enc")
                if not isinstance(enc, str):
                    raise SopsFormatError(f"{where}: age entry for {entry['recipient']} has no 'enc'", path)
                out.append(AgeStanza(entry["recipient"].strip(), enc))
            return out

        groups: list[list[AgeStanza]] = []
        foreign: list[fk.Foreign] = []
        top_foreign = fk.parse_group(raw, path, "sops")
        if raw.get("age") or top_foreign:
            groups.append(stanzas(raw.get("age"), "sops.age"))
            foreign.append(top_foreign)
        elif raw.get("key_groups"):
            if not isinstance(raw["key_groups"], list):
                raise SopsFormatError("sops.key_groups is not a list", path)
            for i, group in enumerate(raw["key_groups"]):
                if not isinstance(group, dict):
                    raise SopsFormatError(f"sops.key_groups[{i}] is not a mapping", path)
                groups.append(stanzas(group.get("age"), f"sops.key_groups[{i}].age"))
                foreign.append(fk.parse_group(group, path, f"sops.key_groups[{i}]"))
        else:
            raise SopsFormatError("no keys found in the 'sops' metadata", path)
        written = {k: raw[k] for k in RULE_FIELDS if raw.get(k)}
        rules = Rules(**{k: str(v) for k, v in written.items()})
        if rules.count() > 1:
            raise SopsFormatError(
                "more than one of encrypted_suffix, unencrypted_suffix, encrypted_regex, unencrypted_regex, "
                "encrypted_comment_regex, unencrypted_comment_regex is set",
                path,
            )
        if rules.count() == 0:
            rules.unencrypted_suffix = DEFAULT_UNENCRYPTED_SUFFIX
        mac_only = raw.get("mac_only_encrypted", False)
        rules.mac_only_encrypted = mac_only is True or mac_only == "true"
        threshold = raw.get("shamir_threshold") or 0
        try:
            threshold = int(threshold)
        except (TypeError, ValueError):
            raise SopsFormatError("shamir_threshold is not an integer", path) from None
        lastmodified = raw.get("lastmodified", "")
        if isinstance(lastmodified, (datetime.datetime, datetime.date)):
            from .aes import go_time_text

            lastmodified = go_time_text(lastmodified)
        return cls(
            key_groups=groups,
            lastmodified=str(lastmodified or ""),
            mac=str(raw.get("mac") or ""),
            version=str(raw.get("version") or ""),
            shamir_threshold=threshold,
            rules=rules,
            foreign=foreign,
            written_rules=written,
        )

    # ----------------------------------------------------------------- writing
    def to_mapping(self, nil_lists: bool = True) -> dict[str, Any]:
        """The metadata in sops' field order, with sops' omissions."""

        def age_list(group: list[AgeStanza]) -> list[dict[str, str]]:
            return [{"recipient": s.recipient, "enc": s.enc} for s in group]

        def kinds(group: fk.Foreign, order: tuple[str, ...]) -> dict[str, Any]:
            return {k: [fk.layout(k, e) for e in group[k]] for k in order if group.get(k)}

        out: dict[str, Any] = {}
        if self.shamir_threshold:
            out["shamir_threshold"] = self.shamir_threshold
        foreign = list(self.foreign) + [{}] * (len(self.key_groups) - len(self.foreign))
        if len(self.key_groups) > 1:
            groups = []
            for g, other in zip(self.key_groups, foreign, strict=False):
                entry = kinds(other, fk.GROUP_ORDER)
                entry.setdefault("hc_vault", NilList())
                entry["age"] = age_list(g) if g else NilList()
                groups.append(entry)
            out["key_groups"] = groups
        elif self.key_groups:
            out.update(kinds(foreign[0], fk.TOP_ORDER))
            if self.key_groups[0]:
                out["age"] = age_list(self.key_groups[0])
        out["lastmodified"] = normalize_lastmodified(self.lastmodified)
        out["mac"] = self.mac
        if len(self.key_groups) == 1:
            out.update(kinds(foreign[0], ("pgp",)))
        for name in RULE_FIELDS:
            value = getattr(self.rules, name)
            if value:
                out[name] = value
        if self.rules.mac_only_encrypted:
            out["mac_only_encrypted"] = True
        out["version"] = self.version
        return out


_LM_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def normalize_lastmodified(text: str) -> str:
    """time.Parse(RFC3339) then Format(RFC3339): what sops uses as MAC additional data."""
    m = _LM_RE.match(text.strip())
    if not m:
        return text
    zone = m.group(3)
    if zone in ("+00:00", "-00:00"):
        zone = "Z"
    return m.group(1) + zone


def now_lastmodified() -> str:
    """Current time as sops writes ``lastmodified``."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- flat formats
_MAP_SEP = "__map_"
_LIST_SEP = "__list_"


def flatten(mapping: dict[str, Any]) -> dict[str, str]:
    """sops' FlattenMetadata + EncodeNonStrings + EncodeNewLines for dotenv and INI.

    Go nil slices (hc_vault) vanish, as in sops.
    """
    out: dict[str, str] = {}

    def rec(prefix: str, value: Any) -> None:
        if isinstance(value, NilList):
            return
        if isinstance(value, dict):
            for k, v in value.items():
                rec(prefix + _MAP_SEP + k if prefix else k, v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                rec(f"{prefix}{_LIST_SEP}{i}", v)
        elif value is None:
            return
        elif isinstance(value, bool):
            out[prefix] = "true" if value else "false"
        else:
            out[prefix] = str(value).replace("\n", "\\n")

    for key, value in mapping.items():
        rec(key, value)
    return out


def _tokens(key: str) -> list[str | int]:
    parts = re.split(r"(__map_|__list_)", key)
    tokens: list[str | int] = [parts[0]]
    for i in range(1, len(parts), 2):
        sep, name = parts[i], parts[i + 1]
        tokens.append(name if sep == _MAP_SEP else int(name) if name.isdigit() else 0)
    return tokens


def unflatten(flat: dict[str, str]) -> dict[str, Any]:
    """Inverse of flatten: ``age__list_0__map_enc`` → {"age": [{"enc": …}]} (newlines decoded)."""
    root: dict[str, Any] = {}
    for key, raw in flat.items():
        value: Any = raw.replace("\\n", "\n") if isinstance(raw, str) else raw
        tokens = _tokens(key)
        cur: Any = root
        for i, tok in enumerate(tokens):
            last = i == len(tokens) - 1
            nxt = None if last else tokens[i + 1]
            if isinstance(cur, dict):
                if last:
                    cur[tok] = value
                else:
                    cur = cur.setdefault(tok, [] if isinstance(nxt, int) else {})
            else:
                if not isinstance(tok, int):
                    raise AssertionError("internal error: isinstance(tok, int) does not hold")
                while len(cur) <= tok:
                    cur.append(None)
                if last:
                    cur[tok] = value
                else:
                    if cur[tok] is None:
                        cur[tok] = [] if isinstance(nxt, int) else {}
                    cur = cur[tok]
    return root
