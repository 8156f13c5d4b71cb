# Copyright: nixfleet.sops contributors
# MIT License
"""What the verifier found on one host: faults, key sources, and the result the module returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ansible_collections.nixfleet.sops.plugins.module_utils.errors import NixfleetError


class VerifyError(NixfleetError):
    """A problem with the verifier's own input (not a fault on the host)."""


@dataclass
class Fault:
    """One thing wrong on a host: which check, where, what, and what to do."""

    check: str
    path: str
    message: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        """The fault as the module returns it."""
        return asdict(self)


@dataclass
class KeySource:
    """A key sops-nix decrypts with: the ``ageKeyFile`` or one of the ``ageSshKeyPaths``."""

    kind: str  # age_key_file | ssh_key
    path: str
    recipients: list[str] = field(default_factory=list)
    usable: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The key source as the module returns it."""
        return asdict(self)


@dataclass
class Report:
    """Everything found on one host, in the order the checks found it."""

    host: str
    faults: list[Fault] = field(default_factory=list)
    key_sources: list[KeySource] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    sops_files: list[str] = field(default_factory=list)
    secrets: list[dict[str, str]] = field(default_factory=list)  # name, key, sopsFile, format (no values)

    def fault(self, check: str, path: str, what: str, fix: str) -> None:
        """Record a fault; its message names the host and the path."""
        self.faults.append(Fault(check=check, path=path, message=f"{self.host}: {path}: {what}", fix=fix))

    @property
    def recipients(self) -> list[str]:
        """Recipients of the key sources sops-nix can actually use on the host."""
        return list(dict.fromkeys(r for s in self.key_sources if s.usable for r in s.recipients))

    def result(self) -> dict[str, Any]:
        """The module's result: every fault, the host's recipients, and a one-line summary."""
        faults = [f.to_dict() for f in self.faults]
        if faults:
            # One line: the first fault in full (what and where), then where the others are.
            n = len(faults)
            first = faults[0]["message"].removeprefix(f"{self.host}: ")
            rest = list(dict.fromkeys(f"{f['check']} {f['path']}" for f in faults[1:]))
            summary = (f"{self.host}: {n} fault{'s' if n != 1 else ''}: {faults[0]['check']} {first}"
                       + (f"; also {', '.join(rest)}" if rest else ""))
        else:
            summary = f"{self.host}: ok"
        return {
            "host": self.host,
            "ok": not faults,
            "faults": faults,
            "recipients": self.recipients,
            "key_sources": [s.to_dict() for s in self.key_sources],
            "manifests": self.manifests,
            "sops_files": self.sops_files,
            "secrets": self.secrets,
            "summary": summary,
        }
