#!/usr/bin/python
# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
module: ssh_keypair
short_description: Ensure an ed25519 SSH keypair and return its public key and age recipient
version_added: "0.1.0"
description:
  - Ensures an ed25519 private key at O(path) (OpenSSH format, mode C(0600)) and its public key at
    C(path.pub) (C(0644)), as C(ssh-keygen -t ed25519 -N '') writes them. Used for host keys and deploy keys.
  - An existing key is kept. A missing or stale C(.pub) is rewritten from the private key; a new
    O(comment) is applied to both files without changing the key.
  - Returns the public key and the C(age1…) recipient sops-nix derives from it (ssh-to-age).
  - An existing key of another type (RSA, ECDSA, DSA) is refused unless O(regenerate=always).
  - The private key is never returned, logged or shown in a diff.
requirements:
  - cryptography >= 42
options:
  path:
    description: Path of the private key; the public key goes to C(path.pub).
    type: path
    required: true
  comment:
    description: Comment stored in both files (for example C(root@griefling)).
    type: str
    default: ""
  state:
    description: Whether the keypair should exist.
    type: str
    choices: [present, absent]
    default: present
  regenerate:
    description: V(never) keeps an existing key; V(always) replaces it on every run.
    type: str
    choices: [never, always]
    default: never
  mode:
    description: Mode of the private key file. Defaults to C(0600) and is enforced.
    type: raw
    default: "0600"
extends_documentation_fragment:
  - ansible.builtin.files
attributes:
  check_mode:
    support: full
    description: Reports the same C(changed) as a real run and writes nothing; a key it would generate is
      reported as such (RV(generated)), never as a made-up key.
  diff_mode:
    support: full
    description: Shows the public key and recipient before and after.
  idempotent:
    support: full
    description: Idempotent unless O(regenerate=always).
seealso:
  - module: nixfleet.sops.age_keypair
  - module: nixfleet.sops.sops_host_keys
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: Host key for griefling, generated on the controller
  nixfleet.sops.ssh_keypair:
    path: "{{ keydir }}/ssh_host_ed25519_key"
    comment: root@griefling
  register: host_key

- name: Show the host's age recipient
  ansible.builtin.debug:
    msg: "{{ host_key.age_recipient }}"
"""

RETURN = r"""
public_key:
  description:
    - The public key line.
    - In check mode, when a new key would be generated, the text C((a new ssh key would be generated)) instead
      (also for RV(age_recipient)), since the real run makes another key than any check mode could show.
  returned: when state is present
  type: str
  sample: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG… root@griefling
age_recipient:
  description: The C(age1…) recipient of the key (ssh-to-age conversion).
  returned: when state is present
  type: str
path:
  description: The private key path.
  returned: always
  type: str
generated:
  description: The keys generated at random (in check mode, that would be); empty when the key was kept.
  returned: always
  type: list
  elements: str
  sample: [ssh key]
actions:
  description: What the module did or, in check mode, would do (paths only).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nixfleet.sops.plugins.module_utils.keypairs import ensure_ssh_keypair
from ansible_collections.nixfleet.sops.plugins.module_utils.module_support import exit_keypair, run_guarded


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            comment=dict(type="str", default=""),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            regenerate=dict(type="str", choices=["never", "always"], default="never"),
            mode=dict(type="raw", default="0600"),
        ),
        supports_check_mode=True,
        add_file_common_args=True,
    )
    p = module.params

    def work():
        return ensure_ssh_keypair(p["path"], p["comment"], p["state"], p["regenerate"], module.check_mode)

    res = run_guarded(module, work, path=p["path"])
    exit_keypair(module, res, p["path"], p["state"])


if __name__ == "__main__":
    main()
