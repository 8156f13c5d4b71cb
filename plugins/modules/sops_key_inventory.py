#!/usr/bin/python
# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
module: sops_key_inventory
short_description: Record a key in the secrets repository's key inventory
version_added: "0.1.0"
description:
  - "Keeps C(.nixfleet/keys.yaml) in the secrets repository: for each key the collection created, its
    anchor, kind (host, user, deploy, break-glass, admin), public part and creation date."
  - The audit (M(nixfleet.sops.sops_audit)) compares the dates with a policy of maximum ages.
  - Public data only. Recording the same key again changes nothing; a new recipient for a known
    anchor resets its date.
requirements:
  - ruamel.yaml >= 0.18
  - google-re2 >= 1.1
  - PyYAML
options:
  repo:
    description: The secrets repository.
    type: path
    required: true
    aliases: [secrets_repo]
  anchor:
    description: The key's anchor in C(.sops.yaml) (for deploy keys, C(<host>-<repo>)).
    type: str
    required: true
  kind:
    description: What the key is for.
    type: str
    choices: [host, user, deploy, break-glass, admin]
  recipient:
    description: The C(age1…) recipient, or for deploy keys the SSH public key line.
    type: str
  host:
    description: The host the key belongs to.
    type: str
  state:
    description: V(absent) removes every entry for O(anchor).
    type: str
    choices: [present, absent]
    default: present
  lock_timeout:
    description:
      - Seconds to wait for the repository lock when another run holds it (parallel runs queue up; the lock
        covers the whole read-modify-write, so none loses another's entry).
    type: int
    default: 60
attributes:
  check_mode:
    support: full
    description: Reports the same C(changed) and writes nothing.
  diff_mode:
    support: none
    description: The inventory entry is returned; no diff is shown.
  idempotent:
    support: full
    description: Recording the same key twice changes nothing.
seealso:
  - module: nixfleet.sops.sops_audit
  - module: nixfleet.sops.sops_rotate_keys
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: Record griefling's host key
  nixfleet.sops.sops_key_inventory:
    repo: "{{ secrets_repo }}"
    anchor: griefling
    kind: host
    recipient: "{{ host_key.age_recipient }}"
    host: griefling
"""

RETURN = r"""
path:
  description: The inventory file.
  returned: always
  type: str
"""

from contextlib import nullcontext

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nixfleet.sops.plugins.module_utils.fsutil import repo_lock
from ansible_collections.nixfleet.sops.plugins.module_utils.keyinventory import inventory_file, record, remove
from ansible_collections.nixfleet.sops.plugins.module_utils.module_support import run_guarded


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            repo=dict(type="path", required=True, aliases=["secrets_repo"]),
            anchor=dict(type="str", required=True),
            kind=dict(type="str", choices=["host", "user", "deploy", "break-glass", "admin"]),
            recipient=dict(type="str"),
            host=dict(type="str"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            lock_timeout=dict(type="int", default=60),
        ),
        required_if=[("state", "present", ("kind", "recipient"))],
        supports_check_mode=True,
    )
    p = module.params

    def work():
        # The lock covers the whole read-modify-write: parallel runs queue, none loses another's entry.
        lock = repo_lock(p["repo"], purpose="sops_key_inventory", wait=p["lock_timeout"])
        with lock if not module.check_mode else nullcontext():
            if p["state"] == "absent":
                return remove(p["repo"], p["anchor"], module.check_mode)
            return record(p["repo"], p["anchor"], p["kind"], p["recipient"], p["host"], check_mode=module.check_mode)

    changed = run_guarded(module, work, prefix=inventory_file(p["repo"]))
    module.exit_json(changed=changed, path=inventory_file(p["repo"]))


if __name__ == "__main__":
    main()
