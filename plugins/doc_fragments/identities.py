# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations


class ModuleDocFragment:
    """The identity options every module that opens sops files takes."""

    DOCUMENTATION = r"""
options:
  identity_files:
    description:
      - Files with identities that can open the sops files - age key files, or ed25519 OpenSSH private keys,
        which open both C(ssh-ed25519) stanzas (as sops uses them) and the C(age1…) recipient ssh-to-age
        derives from them (as sops-nix uses them).
      - When neither this nor O(age_keys) is given, identities are searched as sops does
        (C(SOPS_AGE_KEY), C(SOPS_AGE_KEY_FILE), C(SOPS_AGE_KEY_CMD), C(SOPS_AGE_SSH_PRIVATE_KEY_FILE),
        C(~/.ssh/id_ed25519), C($XDG_CONFIG_HOME/sops/age/keys.txt) or C(~/.config/sops/age/keys.txt)).
    type: list
    elements: path
    default: []
  age_keys:
    description: Literal C(AGE-SECRET-KEY-1…) identities. Never logged.
    type: list
    elements: str
    default: []
"""
