#!/usr/bin/python
# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
module: sops_recipient
short_description: Declare an age recipient anchor in .sops.yaml
version_added: "0.1.0"
description:
  - Ensures a YAML anchor such as C(&griefling age1...) exists in the C(keys:) section of a C(.sops.yaml)
    with the given age recipient, and optionally that the anchor is a member of some creation rules.
  - Changing the recipient of an existing anchor updates every rule that refers to it, since the rules
    hold aliases to the anchor.
  - With O(state=absent) the anchor and every alias to it are removed (a revoked host). The module
    refuses to leave a creation rule without any recipient.
  - Edits are surgical; comments, blank lines, key order, quoting, anchors and the file's own
    indentation are kept. Files encrypted before the change are not rekeyed; run the rekey playbook.
  - Supports every C(keys:) layout in use, a mapping of groups (C(hosts:), C(users:)), a list of
    anchored group lists (C(- &hosts:)), or a flat list.
requirements:
  - ruamel.yaml >= 0.18
  - google-re2 >= 1.1
options:
  config:
    description:
      - Path of the C(.sops.yaml) to edit.
      - C(path) is the name of earlier versions; C(config_path) is community.sops's name for it.
    type: path
    required: true
    aliases: [path, config_path]
  name:
    description:
      - Anchor name, for example the host name or C(<user>_<host>).
      - A letter or digit first, then letters, digits, C(_), C(.) or C(-).
    type: str
    required: true
    aliases: [anchor]
  recipient:
    description: The age recipient (C(age1...)) the anchor holds. Required with O(state=present).
    type: str
  group:
    description:
      - Group of C(keys:) the anchor belongs to, for example C(hosts) or C(users). Created when missing.
      - Ignored for a flat C(keys:) list. Required when C(keys:) is a mapping of groups and the anchor is new.
    type: str
  rules:
    description:
      - C(path_regex) of creation rules the anchor must be a member of (for example the shared rule).
        Each rule must exist. Only used with O(state=present); the anchor is added, never removed.
    type: list
    elements: str
    default: []
  state:
    description: Whether the anchor should exist.
    type: str
    choices: [present, absent]
    default: present
  create:
    description: Create O(path) when it does not exist (O(state=present) only).
    type: bool
    default: false
  lock_timeout:
    description:
      - Seconds to wait for the repository lock when another run (a rekey, a bootstrap, another edit of
        this file) holds it. The file is read, edited and written under the lock, so parallel runs queue
        up and none loses another's change. Check mode takes no lock.
    type: int
    default: 60
attributes:
  check_mode:
    support: full
    description: Computes the same C(changed) as a real run and writes nothing.
  diff_mode:
    support: full
    description: Returns the whole C(.sops.yaml) before and after (it holds only public keys).
seealso:
  - module: nixfleet.sops.sops_creation_rule
  - module: nixfleet.sops.sops_rekey
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: Register the host key of griefling and share the common secrets with it
  nixfleet.sops.sops_recipient:
    config: "{{ nix_secrets_dir }}/.sops.yaml"
    group: hosts
    name: griefling
    recipient: "{{ griefling_age_recipient }}"
    rules:
      - 'sops/shared\.yaml$'

- name: Revoke a host everywhere
  nixfleet.sops.sops_recipient:
    config: "{{ nix_secrets_dir }}/.sops.yaml"
    name: ghost
    state: absent
"""

RETURN = r"""
path:
  description: The edited file.
  returned: always
  type: str
anchor:
  description: The anchor name.
  returned: always
  type: str
recipient:
  description: The recipient the anchor holds afterwards (absent when removed).
  returned: success
  type: str
  sample: age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
rules:
  description: C(path_regex) of every creation rule that names the anchor afterwards.
  returned: success
  type: list
  elements: str
diff:
  description: Whole file before and after, in diff mode.
  returned: in diff mode
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nixfleet.sops.plugins.module_utils.fsutil import repo_lock
from ansible_collections.nixfleet.sops.plugins.module_utils.module_support import run_guarded
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "config": {"type": "path", "required": True, "aliases": ["path", "config_path"]},
            "name": {"type": "str", "required": True, "aliases": ["anchor"]},
            "recipient": {"type": "str"},
            "group": {"type": "str"},
            "rules": {"type": "list", "elements": "str", "default": []},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "create": {"type": "bool", "default": False},
            "lock_timeout": {"type": "int", "default": 60},
        },
        required_if=[("state", "present", ["recipient"])],
        supports_check_mode=True,
    )
    p = module.params
    path = p["config"]

    def work():
        config = SopsConfig.load(path, missing_ok=p["create"] and p["state"] == "present")
        before = config.text
        config.ensure_recipient(p["name"], p["recipient"], p["group"], p["state"])
        if p["state"] == "present":
            for path_regex in p["rules"]:
                config.ensure_rule_member(path_regex, p["name"])
        changed = config.changed  # save() makes the saved text the new original
        if changed and not module.check_mode:
            config.save()
        return config, before, changed

    def locked_work():
        if module.check_mode:
            return work()
        # Read, edit and write under one lock: a parallel run, rekey or bootstrap waits instead of
        # losing this change or having its own lost.
        directory = os.path.dirname(os.path.abspath(path))
        with repo_lock(directory, purpose="editing .sops.yaml", wait=max(p["lock_timeout"], 0)):
            return work()

    config, before, changed = run_guarded(module, locked_work, prefix=path, path=path, anchor=p["name"])
    anchor = config.anchors().get(p["name"])
    members = [r.path_regex or "" for r in config.rules if p["name"] in r.anchors]
    result = {
        "changed": changed,
        "path": path,
        "anchor": p["name"],
        "rules": members,
    }
    if anchor is not None:
        result["recipient"] = anchor.recipient
    if module._diff:
        result["diff"] = {"before": before, "after": config.text, "before_header": path, "after_header": path}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
