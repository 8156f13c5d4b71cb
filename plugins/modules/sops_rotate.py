#!/usr/bin/python
# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
module: sops_rotate
short_description: Rotate the data key of sops files (sops rotate semantics)
version_added: "0.1.0"
description:
  - Gives each selected file a new data key, re-encrypts every value under it and writes a new
    C(mac) and C(lastmodified), keeping the file's recipients. Without the sops binary.
  - Selects all sops files under O(repo), those whose path matches O(path_regex), or those a given
    O(recipient) (or the recipient of O(anchor)) can read; the selectors combine.
  - Use it after removing a recipient (M(nixfleet.sops.sops_rekey)), so that a copy of an old file
    plus the removed key no longer opens the current one.
  - Plans first; if a selected file cannot be opened nothing is written, unless O(continue_on_error=true).
  - Rotation is not idempotent by nature; the module changes exactly the selected files on every run.
options:
  repo:
    description: The secrets repository (the directory holding C(.sops.yaml)).
    type: path
    required: true
    aliases: [secrets_repo]
  path_regex:
    description: Only files whose path relative to O(repo) matches this regex.
    type: str
  recipient:
    description: Only files that this C(age1…) recipient can read.
    type: str
  anchor:
    description: Only files that the recipient of this C(.sops.yaml) anchor can read.
    type: str
  files:
    description:
      - Only these files (paths relative to O(repo), as RV(changed_files) lists them); each must exist.
        Combines with the other selectors.
      - For a large rotation done in batches, as C(playbooks/rotate.yml) does; only these files are read.
    type: list
    elements: str
  plan_only_above:
    description:
      - When more than this many files need a change, write nothing and return the plan (as check mode
        would, every file opened, RV(planned=true)); the caller then does RV(changed_files) in batches with
        O(files), showing progress between them, as C(playbooks/rotate.yml) does.
      - Unset, every file is done in this one run.
    type: int
  continue_on_error:
    description: Rotate what can be opened and list the rest as failed.
    type: bool
    default: false
  workers:
    description: Processes to use; default is one per core.
    type: int
extends_documentation_fragment:
  - nixfleet.sops.identities
attributes:
  check_mode:
    support: full
    description: Lists the files that would be rotated; writes nothing.
  diff_mode:
    support: full
    description: Names the files whose data key changes (never a key).
  idempotent:
    support: none
    description: Every run rotates the selected files again.
seealso:
  - module: nixfleet.sops.sops_rekey
  - module: nixfleet.sops.sops_revoke
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: Rotate the data keys of every file griefling could read
  nixfleet.sops.sops_rotate:
    repo: "{{ nixfleet_secrets_repo }}"
    anchor: griefling
"""

RETURN = r"""
msg:
  description: One line, for example C(3 of 2001 sops files rotated, 1998 unchanged).
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
  description: Files rotated (or that would be), relative to O(repo).
  returned: always
  type: list
  elements: str
failed_files:
  description: Files that could not be rotated, with the reason.
  returned: always
  type: list
  elements: dict
skipped_files:
  description: Files left alone and why.
  returned: always
  type: list
  elements: dict
counts:
  description: Numbers of sops files, changed, unchanged, failed and not_sops files.
  returned: always
  type: dict
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
            path_regex=dict(type="str"),
            recipient=dict(type="str"),
            anchor=dict(type="str"),
            files=dict(type="list", elements="str"),
            plan_only_above=dict(type="int"),
            **IDENTITY_ARGS,
            continue_on_error=dict(type="bool", default=False),
            workers=dict(type="int"),
        ),
        mutually_exclusive=[("recipient", "anchor")],
        supports_check_mode=True,
    )
    p = module.params

    def work():
        ids = fleet.collect_identities(**identity_options(p, module.warn))
        lock = repo_lock(p["repo"], purpose="sops_rotate", require=".sops.yaml")
        with lock if not module.check_mode else nullcontext():
            return fleet.rotate(p["repo"], ids, p["path_regex"], p["recipient"], p["anchor"], module.check_mode,
                                p["continue_on_error"], p["workers"], files=p["files"],
                                plan_only_above=p["plan_only_above"])

    res = run_guarded(module, work)
    exit_fleet_op(module, res, "rotate", p["repo"], p["continue_on_error"])


if __name__ == "__main__":
    main()
