#!/usr/bin/python
# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
module: vcs_commit
short_description: Commit exactly the paths an operation touched (git or jj)
version_added: "0.1.0"
description:
  - Commits the given O(paths) of the secrets repository with one message, and nothing else that
    may be pending in the working copy.
  - Uses jj when the repository has a C(.jj) directory (C(jj commit -m MSG -- PATHS), then moves
    O(bookmark) to the new commit), else git (C(git add -A -- PATHS), C(git commit -m MSG -- PATHS)).
  - Does nothing, and reports no change, when none of the paths changed.
  - Files an earlier run of the collection wrote but did not commit (it was killed, or a pre-commit
    hook refused the commit) are recorded inside C(.git)/C(.jj) and committed by the next run, with a
    note in the message. When a commit fails, the paths are unstaged again and stay recorded, so the
    user's own next commit does not sweep them in.
  - No jj binary exists on the collection's build machine, so the jj path is tested against a
    recorded command contract, not a real jj; git is tested for real.
requirements:
  - git, or jj for a jj repository (on the controller)
options:
  repo:
    description: The repository (the directory holding C(.git) or C(.jj)).
    type: path
    required: true
    aliases: [secrets_repo]
  paths:
    description:
      - Files to commit, absolute or relative to O(repo). Paths outside O(repo) are refused.
      - Recorded uncommitted files of earlier runs are added to them.
    type: list
    elements: path
    default: []
  commit_message:
    description:
      - "The commit message, for example C(chore(sops): rekey 12 files for griefling)."
      - Earlier versions called it C(message), a name Ansible reserves for itself; C(message) is still
        accepted (by the module's action plugin, with a deprecation warning) and will be removed in 1.0.0.
    type: str
    required: true
  vcs:
    description: Force a VCS instead of detecting it.
    type: str
    choices: [auto, git, jj]
    default: auto
  bookmark:
    description: jj bookmark to move to the new commit (and to push); for git, the branch to push.
    type: str
  push:
    description: Push after committing.
    type: bool
    default: false
  remote:
    description: Remote to push to (default of the VCS when omitted).
    type: str
attributes:
  check_mode:
    support: full
    description: Reports whether a commit would be made and the commands it would run; runs none that write.
  diff_mode:
    support: none
    description: The paths committed and the commands run are returned; no diff is shown.
  idempotent:
    support: full
    description: A second run finds nothing changed and makes no commit.
seealso:
  - module: nixfleet.sops.sops_rekey
  - module: nixfleet.sops.sops_host_keys
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: Commit the rekeyed files
  nixfleet.sops.vcs_commit:
    repo: "{{ secrets_repo }}"
    paths: "{{ rekey.changed_files }}"
    commit_message: "chore(sops): rekey {{ rekey.changed_files | length }} files for griefling"
    bookmark: simple
"""

RETURN = r"""
vcs:
  description: The VCS used.
  returned: always
  type: str
  sample: git
commit:
  description: The new commit id (absent in check mode and when nothing changed).
  returned: when a commit was made
  type: str
paths:
  description: The paths considered, relative to the repository.
  returned: always
  type: list
  elements: str
commands:
  description: The commands run (or, in check mode, that would run) to commit and push.
  returned: always
  type: list
  elements: list
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nixfleet.sops.plugins.module_utils.module_support import run_guarded
from ansible_collections.nixfleet.sops.plugins.module_utils.vcs import commit


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            repo=dict(type="path", required=True, aliases=["secrets_repo"]),
            paths=dict(type="list", elements="path", default=[]),
            commit_message=dict(type="str", required=True),
            vcs=dict(type="str", choices=["auto", "git", "jj"], default="auto"),
            bookmark=dict(type="str"),
            push=dict(type="bool", default=False),
            remote=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    p = module.params

    def work():
        return commit(p["repo"], p["paths"], p["commit_message"], vcs=p["vcs"], bookmark=p["bookmark"], push=p["push"],
                      remote=p["remote"], check_mode=module.check_mode)

    res = run_guarded(module, work)
    out = dict(changed=res.changed, vcs=res.vcs, paths=res.paths, commands=res.commands)
    if res.commit:
        out["commit"] = res.commit
    module.exit_json(**out)


if __name__ == "__main__":
    main()
