# Copyright: nixfleet.sops contributors
# MIT License
"""Where sops-nix's manifest is on a host, and loading it.

sops-nix runs ``sops-install-secrets <manifest.json>`` from the activation
script, or from the ``sops-install-secrets.service`` unit with
``sops.useSystemdActivation`` (see SOPS-NIX-CONTRACT.md); the verifier reads
the same manifest, so it checks exactly what the host's configuration asks for.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from typing import Any

from ansible_collections.nixfleet.sops.plugins.module_utils.errors import NixfleetError
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.report import VerifyError
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.rootfs import MANIFEST, RootedFS

ACTIVATE_SCRIPT = "/run/current-system/activate"
UNIT_NAME = "sops-install-secrets.service"
UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/current-system/etc/systemd/system",
    "/run/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
)


class ManifestError(VerifyError):
    """A manifest that cannot be used; ``fix`` says what to do."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


def manifest_from_command(line: str) -> list[str]:
    """Manifest paths in a shell line that runs sops-install-secrets (flags skipped)."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        tokens = line.split()
    found = []
    for i, token in enumerate(tokens):
        if posixpath.basename(token) != "sops-install-secrets":
            continue
        for arg in tokens[i + 1 :]:
            if arg.startswith("-"):
                continue
            found.append(arg)
            break
    return found


def _lines_running_sops(fs: RootedFS, path: str) -> list[str]:
    """Manifest paths on the lines of the script ``path`` that run sops-install-secrets ([] if unreadable)."""
    try:
        text = fs.read_text(path)
    except (OSError, UnicodeDecodeError):
        return []
    found: list[str] = []
    for line in text.splitlines():
        if "sops-install-secrets" in line:
            found.extend(manifest_from_command(line))
    return found


def _from_unit(fs: RootedFS, text: str) -> list[str]:
    """Manifest paths the unit's ExecStart runs, directly or through NixOS's unit script."""
    found: list[str] = []
    for line in text.splitlines():
        key, _unused, value = line.strip().partition("=")
        if key.strip() != "ExecStart" or not value.strip():
            continue
        command = value.strip().lstrip("-@:+!")
        direct = manifest_from_command(command)
        if direct:
            found.extend(direct)
            continue
        # NixOS wraps `script =` into a unit-script; look one level into it.
        try:
            script = shlex.split(command)[0]
        except (ValueError, IndexError):
            continue
        found.extend(_lines_running_sops(fs, script))
    return found


def find_manifests(fs: RootedFS) -> list[str]:
    """Manifest paths sops-nix runs with: the activation script first, then the systemd unit."""
    found = _lines_running_sops(fs, ACTIVATE_SCRIPT)
    for unit_dir in UNIT_DIRS:
        try:
            text = fs.read_text(posixpath.join(unit_dir, UNIT_NAME))
        except (OSError, UnicodeDecodeError):
            continue
        found.extend(_from_unit(fs, text))
        break
    return list(dict.fromkeys(found))


def load_manifest(fs: RootedFS, path: str) -> dict[str, Any]:
    """The manifest at ``path`` as a dict; raises ManifestError saying why it cannot be used."""
    try:
        data = json.loads(fs.read_text(path, MANIFEST))
    except FileNotFoundError:
        raise ManifestError("the sops-nix manifest named by the activation does not exist",
                            "switch to the configuration again (`nixos-rebuild switch`); the store path may have "
                            "been garbage-collected") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = exc.message if isinstance(exc, NixfleetError) else exc
        raise ManifestError(f"cannot read the sops-nix manifest ({why})",
                            "check the path given as `manifest`, or rebuild the system") from None
    if not isinstance(data, dict) or not isinstance(data.get("secrets", []), list):
        raise ManifestError("not a sops-nix manifest (no 'secrets' list)",
                            "pass the JSON manifest that `sops-install-secrets` runs with")
    return data
