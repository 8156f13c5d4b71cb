# Copyright: nixfleet.sops contributors
# MIT License
"""One host being checked: the context every check receives."""

from __future__ import annotations

import socket

from ansible_collections.nixfleet.sops.plugins.module_utils.errors import NixfleetError
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.accounts import Accounts
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.manifests import find_manifests
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.report import Report
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.rootfs import KEY, FileKind, RootedFS


class Verifier:
    """The host's tree (``fs``), its accounts, and the report the checks fill. Checks add faults, never raise."""

    def __init__(self, root: str = "/", host: str | None = None) -> None:
        self.fs = RootedFS(root)
        self.accounts = Accounts(self.fs)
        self.report = Report(host or socket.gethostname())
        # A key file named by two manifests (the users' and the system's) is checked once.
        self.checked_key_paths: set[str] = set()

    @property
    def host(self) -> str:
        """The host name every message starts with."""
        return self.report.host

    def fault(self, check: str, path: str, what: str, fix: str) -> None:
        """Record a fault on the host (see Report.fault)."""
        self.report.fault(check, path, what, fix)

    def find_manifests(self) -> list[str]:
        """The manifests the host's activation runs (see manifests.find_manifests)."""
        return find_manifests(self.fs)

    def read(self, check: str, path: str, what: str, fix: str, kind: FileKind = KEY) -> str | None:
        """The text of the host's file ``path``; None, with a fault naming the path, when it cannot be read.

        A FIFO, a device, an oversized file or bytes that are not UTF-8 are each such a fault.
        """
        try:
            return self.fs.read_text(path, kind)
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.message if isinstance(exc, NixfleetError) else (
                "it is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.strerror or str(exc))
            self.fault(check, path, f"{what} cannot be read: {why}", fix)
            return None
