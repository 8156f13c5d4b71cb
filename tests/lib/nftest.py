"""The toy age plugin tests/plugins/age-plugin-nftest: keys, PATH set-up and run counting."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ansible_collections.nixfleet.sops.plugins.module_utils import age
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

PLUGIN_DIR = str(Path(__file__).resolve().parent.parent / "plugins")


def keypair() -> tuple[str, str]:
    """(recipient age1nftest1…, identity AGE-PLUGIN-NFTEST-1…) of a fresh toy key."""
    scalar = os.urandom(32)
    public = X25519PrivateKey.from_private_bytes(scalar).public_key().public_bytes_raw()
    return age.encode_plugin_recipient("nftest", public), age.encode_plugin_identity("nftest", scalar)


@dataclass
class Nftest:
    """The plugin on PATH for one test, with its run log."""

    log: Path

    def runs(self, machine: str | None = None) -> int:
        """How many times the plugin ran (for one state machine, or all)."""
        if not self.log.exists():
            return 0
        lines = self.log.read_text().split()
        return len([ln for ln in lines if machine is None or ln == machine])


def install(monkeypatch, tmp_path) -> Nftest:
    """Put age-plugin-nftest first on PATH and log its runs under ``tmp_path``."""
    os.chmod(os.path.join(PLUGIN_DIR, "age-plugin-nftest"), 0o755)
    monkeypatch.setenv("PATH", PLUGIN_DIR + os.pathsep + os.environ["PATH"])
    log = tmp_path / "nftest.log"
    monkeypatch.setenv("NFTEST_LOG", str(log))
    for var in ("NFTEST_PIN", "NFTEST_MSG", "NFTEST_FAIL"):
        monkeypatch.delenv(var, raising=False)
    return Nftest(log)
