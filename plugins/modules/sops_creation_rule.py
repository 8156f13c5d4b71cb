#!/usr/bin/python
# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
module: sops_creation_rule
short_description: Declare a creation rule of .sops.yaml
version_added: "0.1.0"
description:
  - Ensures the creation rule for a C(path_regex) exists in a C(.sops.yaml) and names the given anchors
    as age recipients, or that it is gone.
  - A new rule is inserted before the first catch-all rule (one without C(path_regex)), since sops uses
    the first rule that matches; otherwise it is appended. It copies the layout of the existing rules
    (plain C(age:) list or C(key_groups:), indentation, quoting).
  - Edits are surgical; comments, blank lines, key order, quoting and other rule fields such as
    C(encrypted_regex) or C(pgp) are kept. Files encrypted before the change are not rekeyed.
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
  path_regex:
    description:
      - The rule's C(path_regex), exactly as written in the file; it identifies the rule.
      - Go RE2 syntax, matched (unanchored) against the file path relative to the directory of O(path).
        Patterns RE2 rejects or that Python would read differently (lookarounds, backreferences, C(\Z)) fail.
    type: str
    required: true
  anchors:
    description:
      - Anchors (defined with M(nixfleet.sops.sops_recipient)) that must be age recipients of the rule.
      - Required to create a rule. New members go to the first key group.
    type: list
    elements: str
    default: []
  exclusive:
    description:
      - If V(true), the rule's age recipients become exactly O(anchors) (others are removed).
        If V(false), O(anchors) are only added.
    type: bool
    default: false
  key_groups:
    description:
      - Anchors per key group, for rules that use several key groups (with O(shamir_threshold)).
        Members of each group become exactly these anchors. The number of groups of an existing rule
        cannot be changed. Mutually exclusive with O(anchors).
      - Left untouched when not given.
    type: list
    elements: list
  shamir_threshold:
    description: Number of key groups needed to decrypt. Left untouched when not given.
    type: int
  state:
    description: Whether the rule should exist.
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
  - module: nixfleet.sops.sops_recipient
  - module: nixfleet.sops.sops_rekey
  - name: sops creation rules
    description: How sops picks the recipients of a new file.
    link: https://github.com/getsops/sops#using-sops-yaml-conf-to-select-kms-pgp-and-age-for-new-files
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: Secrets of griefling are readable by the admin, its user key and its host key
  nixfleet.sops.sops_creation_rule:
    config: "{{ nix_secrets_dir }}/.sops.yaml"
    path_regex: 'sops/griefling\.yaml$'
    anchors: [ta, ta_griefling, griefling]
    exclusive: true

- name: Vault secrets need two of three key groups
  nixfleet.sops.sops_creation_rule:
    config: "{{ nix_secrets_dir }}/.sops.yaml"
    path_regex: 'secrets/vault/.*\.yaml$'
    key_groups: [[alice, bob], [vault], [break-glass]]
    shamir_threshold: 2

- name: Drop the rule of a decommissioned host
  nixfleet.sops.sops_creation_rule:
    config: "{{ nix_secrets_dir }}/.sops.yaml"
    path_regex: 'sops/ghost\.yaml$'
    state: absent
"""

RETURN = r"""
path:
  description: The edited file.
  returned: always
  type: str
rule:
  description: The rule afterwards (absent when removed).
  returned: success and state=present
  type: dict
  contains:
    path_regex:
      description: The rule's path_regex.
      type: str
    anchors:
      description: Anchors the rule refers to.
      type: list
      elements: str
    recipients:
      description: Age recipients, flattened over key groups.
      type: list
      elements: str
    key_groups:
      description: Age recipients per key group.
      type: list
      elements: list
    shamir_threshold:
      description: The rule's shamir_threshold, if set.
      type: int
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
            "path_regex": {"type": "str", "required": True},
            "anchors": {"type": "list", "elements": "str", "default": []},
            "exclusive": {"type": "bool", "default": False},
            "key_groups": {"type": "list", "elements": "list", "no_log": False},  # anchor names
            "shamir_threshold": {"type": "int"},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "create": {"type": "bool", "default": False},
            "lock_timeout": {"type": "int", "default": 60},
        },
        mutually_exclusive=[("anchors", "key_groups")],
        supports_check_mode=True,
    )
    p = module.params
    path = p["config"]

    def work():
        config = SopsConfig.load(path, missing_ok=p["create"] and p["state"] == "present")
        before = config.text
        key_groups = [[str(a) for a in g] for g in p["key_groups"]] if p["key_groups"] is not None else None
        config.ensure_rule(
            p["path_regex"],
            p["anchors"],
            state=p["state"],
            exclusive=p["exclusive"],
            shamir_threshold=p["shamir_threshold"],
            key_groups=key_groups,
        )
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

    config, before, changed = run_guarded(module, locked_work, prefix=path, path=path, path_regex=p["path_regex"])
    rule = config.find_rule(p["path_regex"])
    result = {"changed": changed, "path": path}
    if rule is not None:
        result["rule"] = {
            "path_regex": rule.path_regex,
            "anchors": rule.anchors,
            "recipients": rule.recipients,
            "key_groups": rule.key_groups,
            "shamir_threshold": rule.shamir_threshold,
        }
    if module._diff:
        result["diff"] = {"before": before, "after": config.text, "before_header": path, "after_header": path}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
