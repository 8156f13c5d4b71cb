# Copyright: nixfleet.sops contributors
# MIT License
"""sops-nix on a host, checked against the host's own sops-nix manifest.

This module runs ON THE TARGET (NixOS hosts have Python's standard library and
nothing from PyPI): it and the ``sops_nix`` package it drives import only the
standard library and the pure parts of ``age.py``, ``openssh.py`` and ``x25519.py``.

Every check reports every fault it finds instead of stopping at the first one.
A fault names the host, the path and what to do about it. All paths are the
target's paths; ``root`` is a prefix under which the target's tree is found
(``/`` on the host itself, a temporary tree in tests, a mounted install
elsewhere), and symlinks are followed inside that root, as the host would.

:func:`verify` is the entry point; the names the verifier had before it was
split into ``sops_nix/`` stay importable from here.
"""

from __future__ import annotations

from typing import Any

from ansible_collections.nixfleet.sops.plugins.module_utils.age import ssh_seed_recipient
from ansible_collections.nixfleet.sops.plugins.module_utils.openssh import parse_private_key
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.generation import (
    DEFAULT_SYMLINK_PATH,
    check_generation,
    check_secret,
)
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.key_sources import (
    check_age_key_file,
    check_ssh_key,
    identity_recipient,
)
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.manifests import (
    ACTIVATE_SCRIPT,
    UNIT_NAME,
    ManifestError,
    load_manifest,
)
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.report import Fault, KeySource, VerifyError
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.sops_files import (
    check_sops_files,
    file_recipients,
    map_sops_file,
)
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.user_keys import (
    DEFAULT_SSH_CONFIG,
    check_deploy_key,
    check_ssh_config_permissions,
    check_user_key,
    parse_ssh_config,
)
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.verifier import Verifier

# The verifier's old name for the one OpenSSH parser.
parse_ssh_private_key = parse_private_key

__all__ = [
    "Fault", "KeySource", "Verifier", "VerifyError", "check_manifest", "file_recipients", "identity_recipient",
    "map_sops_file", "parse_ssh_config", "parse_ssh_private_key", "ssh_seed_recipient", "verify",
]


def check_manifest(v: Verifier, path: str, expected: list[str]) -> None:
    """Everything one manifest asks for: key sources, generation, secrets, templates."""
    try:
        manifest = load_manifest(v.fs, path)
    except ManifestError as exc:
        v.fault("manifest", path, exc.message, exc.fix)
        return
    v.report.manifests.append(path)
    key_file = manifest.get("ageKeyFile") or ""
    ssh_keys = [p for p in manifest.get("ageSshKeyPaths") or [] if p]
    if not key_file and not ssh_keys:
        v.fault("key_source", path, "the manifest names no age key (neither ageKeyFile nor ageSshKeyPaths)",
                "set sops.age.sshKeyPaths = [ \"/etc/ssh/ssh_host_ed25519_key\" ] (or sops.age.keyFile)")
    if key_file:
        check_age_key_file(v, key_file, expected)
    for ssh_key in ssh_keys:
        check_ssh_key(v, ssh_key, expected)
    link = manifest.get("symlinkPath") or DEFAULT_SYMLINK_PATH
    user_mode = bool(manifest.get("userMode"))
    generation = check_generation(v, manifest)
    for entry in manifest.get("secrets") or []:
        if isinstance(entry, dict):
            check_secret(v, entry, generation, link, "secret", user_mode)
            sops_file = entry.get("sopsFile")
            if sops_file and sops_file not in v.report.sops_files:
                v.report.sops_files.append(sops_file)
            if sops_file:
                # What a key rotation proves the new key opens: the file and the key path, never a value.
                v.report.secrets.append({k: str(entry.get(k) or "") for k in ("name", "key", "sopsFile", "format")})
    for entry in manifest.get("templates") or []:
        if isinstance(entry, dict):
            check_secret(v, entry, generation, link, "template", user_mode)


def _check_target(v: Verifier, manifests: list[str], expected: list[str], user_key: dict[str, Any] | None,
                  deploy_keys: list[dict[str, Any]], ssh_config: str) -> None:
    paths = list(manifests) or v.find_manifests()
    if not paths:
        v.fault("manifest", ACTIVATE_SCRIPT,
                f"no sops-nix manifest found: {ACTIVATE_SCRIPT} runs no sops-install-secrets and there "
                f"is no {UNIT_NAME}",
                "import sops-nix (sops-nix.nixosModules.sops), declare sops.secrets and switch to the "
                "configuration; or pass the manifest path as `manifest`")
    for path in paths:
        check_manifest(v, path, expected)
    if user_key and user_key.get("path"):
        check_user_key(v, user_key["path"], str(user_key.get("owner") or "root"), user_key.get("expected_recipient"))
    keys = [k for k in deploy_keys if k and k.get("path")]
    if any(k.get("alias") for k in keys):
        check_ssh_config_permissions(v, ssh_config)
    for key in keys:
        check_deploy_key(v, key["path"], str(key.get("alias") or ""), ssh_config)


def verify(
    root: str = "/",
    host: str | None = None,
    manifests: list[str] | None = None,
    expected_recipients: list[str] | None = None,
    user_key: dict[str, Any] | None = None,
    deploy_keys: list[dict[str, Any]] | None = None,
    ssh_config: str = DEFAULT_SSH_CONFIG,
    sops_files: list[str] | None = None,
    secrets_repo: str | None = None,
    recipients: list[str] | None = None,
    scope: str = "target",
) -> dict[str, Any]:
    """Run every check and return the result dict the module returns.

    ``scope='target'`` checks the host (manifests, keys, generation, secrets, user and deploy
    keys, and ``sops_files`` if given). ``scope='controller'`` checks only ``sops_files``
    (mapped into ``secrets_repo``) against ``recipients`` (the host's, from a target run)
    and ``expected_recipients``.
    """
    v = Verifier(root=root, host=host)
    expected = [r.strip() for r in expected_recipients or [] if r and r.strip()]
    if scope == "target":
        _check_target(v, manifests or [], expected, user_key, deploy_keys or [], ssh_config)
    host_recipients = list(dict.fromkeys([*(recipients or []), *v.report.recipients])) or expected
    if sops_files:
        check_sops_files(v, list(sops_files), secrets_repo, host_recipients)
    return v.report.result()
