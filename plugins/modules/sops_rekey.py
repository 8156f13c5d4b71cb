#!/usr/bin/python
# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
module: sops_rekey
short_description: Bring every sops file to the recipients its creation rule names
version_added: "0.1.0"
description:
  - The fleet-wide C(sops updatekeys -y), in one process and without the sops binary.
  - Finds every sops file under O(repo) (files that are not sops-encrypted are skipped and listed),
    matches each to its creation rule in C(.sops.yaml) exactly as sops does, and re-wraps the data
    key of only the files whose recipients differ. Values, C(mac) and C(lastmodified) stay as they
    were; files that need nothing are not touched (bytes and mtime unchanged).
  - Plans first. If any file that needs a change cannot be opened with the available identities,
    nothing is written and the error lists those files, unless O(continue_on_error=true).
  - Every write is atomic; a run killed at any moment leaves each file either old or new.
  - Holds a lock on the repository while writing; a second run fails with a message naming the holder.
options:
  repo:
    description: The secrets repository (the directory holding C(.sops.yaml)).
    type: path
    required: true
    aliases: [secrets_repo]
  include:
    description: Only consider files whose path (relative to O(repo)) matches one of these regexes.
    type: list
    elements: str
    default: []
  files:
    description:
      - Only these files (paths relative to O(repo), as RV(changed_files) lists them); each must exist.
      - For a large rekey done in batches, as C(playbooks/rekey.yml) does; only these files are read.
    type: list
    elements: str
  plan_only_above:
    description:
      - When more than this many files need a change, write nothing and return the plan (as check mode
        would, every file opened, RV(planned=true)); the caller then does RV(changed_files) in batches with
        O(files), showing progress between them, as C(playbooks/rekey.yml) does.
      - Unset, every file is done in this one run.
    type: int
  rewrap_all:
    description:
      - In a file that changes, wrap the data key afresh for every recipient, as C(sops updatekeys) does.
      - By default only the recipients added, and any whose stanza is structurally broken (bad armor, header,
        base64 or size), get a new stanza; the sound stanzas of recipients that stay are kept. That is one age
        encryption per recipient added instead of one per recipient, and no plugin (YubiKey) run for those kept.
      - What only V(true) repairs is a stanza that is well-formed but does not decrypt, which only its
        recipient's key could tell (C(playbooks/verify.yml) on the host does).
    type: bool
    default: false
  continue_on_error:
    description: Rekey the files that can be opened and list the others as failed, instead of writing nothing.
    type: bool
    default: false
  workers:
    description: Processes to use; default is one per core (used only when there are many files).
    type: int
extends_documentation_fragment:
  - nixfleet.sops.identities
attributes:
  check_mode:
    support: full
    description: Lists per file the recipients that would be added and removed; writes nothing.
  diff_mode:
    support: full
    description: Shows recipients removed (before) and added (after) per file.
  idempotent:
    support: full
    description: A second run finds every file in step and changes nothing.
seealso:
  - module: nixfleet.sops.sops_recipient
  - module: nixfleet.sops.sops_creation_rule
  - module: nixfleet.sops.sops_rotate
  - module: nixfleet.sops.vcs_commit
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: Rekey the whole secrets repository
  nixfleet.sops.sops_rekey:
    repo: "{{ nixfleet_secrets_repo }}"
  register: rekey

- name: Commit what changed
  nixfleet.sops.vcs_commit:
    repo: "{{ nixfleet_secrets_repo }}"
    paths: "{{ rekey.changed_files }}"
    message: "chore(sops): rekey {{ rekey.changed_files | length }} files"
  when: rekey.changed
"""

RETURN = r"""
msg:
  description: 'One line, for example C(3 of 2001 sops files rekeyed, 1998 unchanged; recipients added: laptop).'
  returned: always
  type: str
pending_commit:
  description:
    - Files an interrupted earlier run wrote and did not commit (recorded in C(.git)/C(.jj)); the playbook
      commits them with the next commit.
  returned: always
  type: list
  elements: str
planned:
  description:
    - True when O(plan_only_above) was exceeded. Nothing was written and RV(changed_files) are the files
      still to do (every one of them could be opened).
  returned: always
  type: bool
changed_files:
  description: Files rekeyed (or that would be, in check mode), relative to O(repo).
  returned: always
  type: list
  elements: str
changes:
  description: Per changed file, the rule and the recipients added and removed (with their anchor names).
  returned: always
  type: list
  elements: dict
failed_files:
  description: Files that could not be rekeyed, with the reason (only with O(continue_on_error)).
  returned: always
  type: list
  elements: dict
skipped_files:
  description: Files left alone and why (not sops-encrypted, no matching rule).
  returned: always
  type: list
  elements: dict
counts:
  description:
    - Numbers of sops files, changed, unchanged, failed, not_sops and no_rule files, and of distinct
      recipients_added and recipients_removed.
  returned: always
  type: dict
recipients:
  description: The recipients added to and removed from any file (anchor names where C(.sops.yaml) has one).
  returned: always
  type: dict
  sample: {"added": ["laptop"], "removed": []}
"""

from contextlib import nullcontext

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nixfleet.sops.plugins.module_utils import fleet
from ansible_collections.nixfleet.sops.plugins.module_utils.fsutil import repo_lock
from ansible_collections.nixfleet.sops.plugins.module_utils.module_support import (
    IDENTITY_ARGS,
    exit_fleet_op,
    identity_options,
    run_guarded,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            repo=dict(type="path", required=True, aliases=["secrets_repo"]),
            include=dict(type="list", elements="str", default=[]),
            files=dict(type="list", elements="str"),
            plan_only_above=dict(type="int"),
            **IDENTITY_ARGS,
            rewrap_all=dict(type="bool", default=False),
            continue_on_error=dict(type="bool", default=False),
            workers=dict(type="int"),
        ),
        supports_check_mode=True,
    )
    p = module.params

    def work():
        ids = fleet.collect_identities(**identity_options(p, module.warn))
        lock = repo_lock(p["repo"], purpose="sops_rekey", require=".sops.yaml")
        with lock if not module.check_mode else nullcontext():
            return fleet.rekey(p["repo"], ids, p["include"], module.check_mode, p["continue_on_error"], p["workers"],
                               files=p["files"], plan_only_above=p["plan_only_above"], rewrap_all=p["rewrap_all"])

    res = run_guarded(module, work)
    exit_fleet_op(module, res, "rekey", p["repo"], p["continue_on_error"])


if __name__ == "__main__":
    main()
