#!/usr/bin/python
# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
module: sops_secret
short_description: Set or remove one value in a sops file
version_added: "0.1.0"
description:
  - "The idempotent C(sops set) / C(sops unset): brings the value at one key path of a sops file to what
    is asked, or removes it, without the sops binary."
  - Setting the value the key path already holds changes nothing and leaves the file untouched (bytes and
    mtime). Values that do not change keep their ciphertexts, as sops does.
  - "When the file does not exist and O(create=true), it is created for the recipients, key groups,
    C(shamir_threshold) and encryption options (C(encrypted_regex), C(unencrypted_suffix), …) of the
    creation rule in C(.sops.yaml) that matches it, exactly as C(sops) would pick the rule."
  - "Runs where the secrets repository is (the controller); use it in a play against C(localhost) or with
    C(delegate_to: localhost). All paths are on that machine."
  - Never shows a value. The diff names the key paths that change; return values and errors carry no secret.
options:
  path:
    description: The sops file (YAML, JSON, dotenv or INI, by extension as sops decides).
    type: path
    required: true
  key:
    description:
      - "The key path. A list of keys, with integers indexing lists: V([\"deploy-keys\", \"nix-config\"])."
      - "Or a string split on C(/), as sops-nix splits its C(key) option: V(deploy-keys/nix-config).
        Use the list form when a key itself contains C(/)."
      - "Or sops' own syntax: V([\"keys\"][\"age\"]) or V([\"hosts\"][0])."
      - The path must start with a key, and the top-level key C(sops) is reserved.
    type: raw
    required: true
  value:
    description:
      - The value to set, as is (string, number, boolean, mapping or list). Never logged.
      - Mutually exclusive with O(value_file). One of them is required with O(state=present).
    type: raw
  value_file:
    description:
      - Read the value from this file (for example a private key), exactly as stored, trailing newline
        included. Must be UTF-8 text. The content is never logged.
    type: path
  state:
    description:
      - V(present) sets the value.
      - V(absent) removes the key path; nothing to do when it, or the file, is not there.
    type: str
    choices: [present, absent]
    default: present
  config:
    description:
      - The C(.sops.yaml) whose creation rule is used when the file is created.
      - Default is the nearest C(.sops.yaml) in the file's directory or one of its parents. (sops itself
        searches upward from its working directory; the two agree when it runs from the repository.)
      - C(config_path) (community.sops's name) is an alias.
    type: path
    aliases: [config_path]
  create:
    description:
      - Create the file when it does not exist, for its matching creation rule.
      - When no rule matches, the task fails with an error naming the file and the C(.sops.yaml).
    type: bool
    default: true
extends_documentation_fragment:
  - nixfleet.sops.identities
attributes:
  check_mode:
    support: full
    description: Decides C(changed) exactly as a real run does, encrypting in memory; writes nothing.
  diff_mode:
    support: full
    description:
      - "Shows the key paths that change, never values: before, each one that had a value as 'keys/age: (set)';
        after, each one as 'keys/age: (changed)', '(added)' or '(removed)'."
  idempotent:
    support: full
    description: The same value again changes nothing; the file keeps its bytes and mtime.
notes:
  - The file is replaced atomically; a failed run leaves it as it was.
seealso:
  - plugin: nixfleet.sops.secret
    plugin_type: lookup
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: Store the host's user age key in its secrets file (created for its .sops.yaml rule if needed)
  nixfleet.sops.sops_secret:
    path: "{{ nixfleet_secrets_repo }}/sops/griefling.yaml"
    key: keys/age
    value_file: "{{ keydir }}/griefling-age.txt"

- name: Store a deploy key (the key contains a dash, the path a slash-free list)
  nixfleet.sops.sops_secret:
    path: "{{ nixfleet_secrets_repo }}/sops/griefling.yaml"
    key: ["deploy-keys", "nix-config"]
    value: "{{ deploy_key.private_key }}"

- name: Remove a value
  nixfleet.sops.sops_secret:
    path: "{{ nixfleet_secrets_repo }}/sops/griefling.yaml"
    key: wifi/old-network
    state: absent
    identity_files: ["~/.config/sops/age/keys.txt"]
"""

RETURN = r"""
path:
  description: The sops file.
  returned: always
  type: str
key:
  description: The key path, as a list (keys and list indexes).
  returned: always
  type: list
  sample: ["keys", "age"]
created:
  description: Whether the file was created (or would be, in check mode).
  returned: always
  type: bool
"""

import os
from contextlib import nullcontext

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nixfleet.sops.plugins.module_utils import fleet, secrets
from ansible_collections.nixfleet.sops.plugins.module_utils.fsutil import repo_lock
from ansible_collections.nixfleet.sops.plugins.module_utils.module_support import (
    IDENTITY_ARGS,
    identity_options,
    run_guarded,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            key=dict(type="raw", required=True, no_log=False),
            value=dict(type="raw", no_log=True),
            value_file=dict(type="path"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            config=dict(type="path", aliases=["config_path"]),
            create=dict(type="bool", default=True),
            **IDENTITY_ARGS,
        ),
        mutually_exclusive=[("value", "value_file")],
        required_if=[("state", "present", ("value", "value_file"), True)],
        supports_check_mode=True,
    )
    p = module.params

    def work():
        keypath = secrets.parse_key_path(p["key"], p["path"])
        value = p["value"]
        if p["state"] == "present" and p["value_file"]:
            value = secrets.read_value_file(p["value_file"])
            module.no_log_values.update(v for v in (value, value.strip()) if v)
        ids = fleet.collect_identities(**identity_options(p, module.warn))
        # The repository (where .sops.yaml is) is locked across the read-modify-write: parallel writers
        # queue, and a rekey of it waits. A file outside any repository has no lock to take (and none
        # is left in an arbitrary directory).
        config = p["config"] or secrets.find_config(os.path.dirname(os.path.abspath(p["path"])))
        lock = nullcontext()
        if config and os.path.isfile(config) and not module.check_mode:
            lock = repo_lock(os.path.dirname(os.path.abspath(config)), purpose="sops_secret",
                             require=os.path.basename(config), wait=60)
        with lock:
            return secrets.ensure_secret(p["path"], keypath, value, p["state"], ids, p["config"], p["create"],
                                         dry_run=module.check_mode)

    res = run_guarded(module, work, path=p["path"])
    out = res.as_dict()
    if module._diff:
        out["diff"] = res.diff()
    module.exit_json(**out)


if __name__ == "__main__":
    main()
