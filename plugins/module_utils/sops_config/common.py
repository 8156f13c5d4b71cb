# Copyright: nixfleet.sops contributors
# MIT License
"""Names shared by every part of the ``.sops.yaml`` package: errors, anchor names, rule fields, paths."""

from __future__ import annotations

import os
import re

from ..errors import NixfleetError

ANCHOR_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
GROUP_ANCHOR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*:?$")
ANCHOR_RULE_TEXT = "a letter or digit, then letters, digits, '_', '.' or '-'"
# Fields of a creation rule that say how a file is encrypted (not who can read it).
RULE_FIELDS = (
    "encrypted_regex",
    "unencrypted_suffix",
    "encrypted_suffix",
    "unencrypted_regex",
    "encrypted_comment_regex",
    "unencrypted_comment_regex",
    "mac_only_encrypted",
)
# Key types other than age that can stand beside it; a rule holding any of them
# still has a recipient when its last age recipient goes.
OTHER_KEY_TYPES = ("pgp", "kms", "gcp_kms", "azure_keyvault", "hc_vault_transit_uri", "hc_vault", "hckms")


class SopsConfigError(NixfleetError, ValueError):
    """Bad input or a ``.sops.yaml`` this module cannot edit safely; the message says where."""


class NoMatchingRuleError(SopsConfigError):
    """No creation rule matches a path: sops would refuse to create it (not a broken config)."""


def relative_to_config(config_path: str, file_path: str) -> str:
    """The path sops matches ``path_regex`` against for ``file_path``.

    Like sops: the absolute, cleaned file path with the config directory's
    absolute path (plus ``/``) trimmed from its front; a file outside that
    directory keeps its absolute path. A relative ``file_path`` is taken
    relative to the config directory (sops takes it relative to its working
    directory; callers here mean the repository).
    """
    config_dir = os.path.abspath(os.path.dirname(os.path.abspath(config_path)))
    if not os.path.isabs(file_path):
        file_path = os.path.join(config_dir, file_path)
    file_path = os.path.abspath(file_path)
    prefix = config_dir.rstrip(os.sep) + os.sep
    return file_path[len(prefix) :] if file_path.startswith(prefix) else file_path


def check_anchor_name(name: str, what: str = "anchor", allow_group_colon: bool = False) -> str:
    """Return ``name`` if it is a safe anchor name, else raise SopsConfigError naming it and the rule."""
    pattern = GROUP_ANCHOR_RE if allow_group_colon else ANCHOR_NAME_RE
    if not isinstance(name, str) or not pattern.match(name):
        raise SopsConfigError(
            f"{what} name {name!r} is not allowed: use {ANCHOR_RULE_TEXT} (e.g. web-01, alice_griefling)"
        )
    return name
