# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
name: ssh_to_age
short_description: Convert an ed25519 SSH public key to its age recipient
version_added: "0.1.0"
description:
  - The ssh-to-age conversion sops-nix relies on, without the ssh-to-age binary.
  - Accepts a bare C(ssh-ed25519 AAAA…) key, an authorized_keys line (options allowed) or a known_hosts line.
  - RSA, ECDSA, DSA and FIDO keys are refused with an error, since sops-nix cannot use them as age keys.
options:
  _input:
    description: The SSH public key line.
    type: str
    required: true
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: Register a host's recipient from its public host key
  ansible.builtin.debug:
    msg: "{{ lookup('ansible.builtin.file', 'keys/griefling.pub') | nixfleet.sops.ssh_to_age }}"
"""

RETURN = r"""
_value:
  description: The C(age1…) recipient.
  type: str
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.nixfleet.sops.plugins.module_utils.age import AgeKeyError, ssh_public_key_to_recipient


def ssh_to_age(public_key: str) -> str:
    """Convert an ed25519 SSH public key line to an ``age1…`` recipient."""
    try:
        return ssh_public_key_to_recipient(public_key)
    except AgeKeyError as exc:
        raise AnsibleFilterError(f"ssh_to_age: {exc}") from None


class FilterModule:
    """nixfleet.sops filters."""

    def filters(self) -> dict:
        return {"ssh_to_age": ssh_to_age}
