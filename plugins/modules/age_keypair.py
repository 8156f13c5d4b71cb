#!/usr/bin/python
# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
module: age_keypair
short_description: Ensure an age identity file (age-keygen format) and return its recipient
version_added: "0.1.0"
description:
  - Creates an X25519 age identity file at O(path) in the layout C(age-keygen) writes
    (comment lines with the creation date and public key, then the C(AGE-SECRET-KEY-1…) line).
  - An existing valid file is kept; the module returns its recipient. An existing file that does
    not parse is reported and left untouched unless O(regenerate=always).
  - With O(ssh_key_path), the identity is derived from an ed25519 SSH private key with the
    ssh-to-age conversion, as sops-nix does for C(/var/lib/sops-nix/key.txt).
  - The file is written atomically with mode C(0600); a parent directory the module creates gets C(0700).
  - The identity is never returned, logged or shown in a diff.
requirements:
  - cryptography >= 42
options:
  path:
    description: Path of the identity file.
    type: path
    required: true
  state:
    description: Whether the file should exist.
    type: str
    choices: [present, absent]
    default: present
  regenerate:
    description:
      - V(never) keeps an existing identity. V(always) writes a new one on every run
        (not idempotent; use it for deliberate rotation).
    type: str
    choices: [never, always]
    default: never
  ssh_key_path:
    description:
      - Derive the identity from this unencrypted ed25519 OpenSSH private key instead of generating one.
      - RSA, ECDSA and DSA keys are refused, since sops-nix cannot convert them.
    type: path
  mode:
    description: Mode of the identity file. Defaults to C(0600) and is enforced.
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
    description: Shows the recipient before and after; never the identity.
  idempotent:
    support: full
    description: Idempotent unless O(regenerate=always).
seealso:
  - module: nixfleet.sops.ssh_keypair
  - module: nixfleet.sops.sops_host_keys
  - name: age
    description: The age file encryption tool and its key format.
    link: https://age-encryption.org/v1
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: Per-host user age key
  nixfleet.sops.age_keypair:
    path: "{{ staging }}/home/rain/.config/sops/age/keys.txt"
  register: user_key

- name: sops-nix key derived from the host's SSH key
  nixfleet.sops.age_keypair:
    path: /var/lib/sops-nix/key.txt
    ssh_key_path: /etc/ssh/ssh_host_ed25519_key
"""

RETURN = r"""
recipient:
  description:
    - The C(age1…) recipient of the identity (absent when O(state=absent)).
    - In check mode, when a new identity would be generated, the text C((a new age identity would be generated))
      instead, since the real run makes another key than any check mode could show.
  returned: when state is present
  type: str
  sample: age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
generated:
  description: The keys generated at random (in check mode, that would be); empty when the file was kept or derived.
  returned: always
  type: list
  elements: str
  sample: [age identity]
path:
  description: The identity file.
  returned: always
  type: str
actions:
  description: What the module did or, in check mode, would do (paths only).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nixfleet.sops.plugins.module_utils.keypairs import ensure_age_keypair
from ansible_collections.nixfleet.sops.plugins.module_utils.module_support import exit_keypair, run_guarded


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            regenerate=dict(type="str", choices=["never", "always"], default="never"),
            ssh_key_path=dict(type="path"),
            mode=dict(type="raw", default="0600"),
        ),
        supports_check_mode=True,
        add_file_common_args=True,
    )
    p = module.params

    def work():
        return ensure_age_keypair(p["path"], p["state"], p["regenerate"], p["ssh_key_path"], module.check_mode)

    res = run_guarded(module, work, path=p["path"])
    exit_keypair(module, res, p["path"], p["state"])


if __name__ == "__main__":
    main()
