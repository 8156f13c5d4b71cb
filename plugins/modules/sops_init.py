#!/usr/bin/python
# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
module: sops_init
short_description: Make a new secrets repository (git or jj, admin key, documented .sops.yaml, sops/shared.yaml)
version_added: "0.1.0"
description:
  - Runs on the controller. Makes O(repo) a new secrets repository, in one commit, for the rest of the
    collection (C(playbooks/bootstrap.yml), C(access.yml), C(break_glass.yml)) to extend.
  - A git repository, or a colocated jj one with O(vcs=jj) (jj must be installed). An existing repository
    (an empty clone from a forge, say) is used as it is.
  - The admin key - the operator's age identity file O(admin_key_file) is reused when it exists and
    generated (mode C(0600), in a C(0700) directory it creates) when it does not; or only its recipient,
    O(admin_recipient). The identity is never returned, logged or shown in a diff.
  - C(.sops.yaml) with the admin as C(&<admin_anchor>) in the C(users) group and a rule for
    C(sops/shared.yaml), comments saying what each section is for (users and admins, hosts, the
    break-glass key, creation rules) and which playbook adds to it.
  - C(sops/shared.yaml), encrypted to that rule, and the admin key in the key inventory
    (C(.nixfleet/keys.yaml)).
  - A directory that holds anything else (or a C(.sops.yaml) naming another admin key) is refused with
    nothing changed, unless O(force). Even with O(force), an existing C(.sops.yaml), C(sops/shared.yaml) or
    key file is never replaced; only what is missing is added.
requirements:
  - cryptography >= 42
  - pyrage >= 1.2
  - ruamel.yaml >= 0.18
  - google-re2 >= 1.1
  - PyYAML
options:
  repo:
    description: The directory of the new secrets repository (created when missing).
    type: path
    required: true
    aliases: [secrets_repo]
  vcs:
    description: The version control of a new repository. An existing repository keeps its own.
    type: str
    choices: [git, jj]
    default: git
  admin_key_file:
    description:
      - The admin's age identity file, reused when it exists, generated when not.
      - Defaults to where sops looks itself, C($XDG_CONFIG_HOME/sops/age/keys.txt) (C(~/.config/sops/age/keys.txt)).
      - When the file holds several identities, the first one is the admin key.
    type: path
  admin_recipient:
    description: The admin's C(age1…) recipient, when the identity lives elsewhere (no key file is read or written).
    type: str
  admin_anchor:
    description: The anchor of the admin key in C(.sops.yaml) (what bootstrap's admins option names).
    type: str
    default: admin
  force:
    description:
      - Add what is missing to a directory that holds other files, or whose C(.sops.yaml) names another
        admin key. Nothing that exists is replaced.
    type: bool
    default: false
  commit_message:
    description: The message of the repository's first commit.
    type: str
    default: "chore(sops): new secrets repository"
attributes:
  check_mode:
    support: full
    description: Decides as a real run does and writes nothing; a key it would generate is reported as such
      (RV(generated), RV(admin_recipient)), never as a made-up key.
  diff_mode:
    support: full
    description: Shows C(.sops.yaml) before and after (public keys only).
  idempotent:
    support: full
    description: A second run finds everything in place and changes nothing.
seealso:
  - module: nixfleet.sops.age_keypair
  - module: nixfleet.sops.sops_host_keys
  - module: nixfleet.sops.vcs_commit
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: A new secrets repository, with a new admin key in ~/.config/sops/age/keys.txt
  nixfleet.sops.sops_init:
    repo: ~/src/nix-secrets

- name: With jj and an admin key kept on a hardware token (recipient only)
  nixfleet.sops.sops_init:
    repo: ~/src/nix-secrets
    vcs: jj
    admin_recipient: age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
"""

RETURN = r"""
repo:
  description: The repository (absolute path).
  returned: always
  type: str
vcs:
  description: C(git) or C(jj).
  returned: always
  type: str
admin_anchor:
  description: The admin's anchor in C(.sops.yaml).
  returned: always
  type: str
admin_recipient:
  description:
    - The admin's C(age1…) recipient.
    - In check mode, when the key would be generated, C((a new admin key would be generated)).
  returned: always
  type: str
admin_key_file:
  description: The admin's identity file (null with O(admin_recipient)).
  returned: always
  type: str
created:
  description: What was made (or would be) - paths relative to O(repo), and the key file.
  returned: always
  type: list
  elements: str
kept:
  description: Files of the repository that existed and were left as they were.
  returned: always
  type: list
  elements: str
generated:
  description: Keys generated (in check mode, that would be).
  returned: always
  type: list
  elements: str
commit:
  description: The commit made.
  returned: when a commit was made
  type: str
commands:
  description: The version-control commands run (or that would run in check mode).
  returned: always
  type: list
  elements: list
msg:
  description: One line saying what was done.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nixfleet.sops.plugins.module_utils.init import DEFAULT_MESSAGE, init_repo
from ansible_collections.nixfleet.sops.plugins.module_utils.module_support import run_guarded


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            repo=dict(type="path", required=True, aliases=["secrets_repo"]),
            vcs=dict(type="str", choices=["git", "jj"], default="git"),
            admin_key_file=dict(type="path"),
            admin_recipient=dict(type="str"),
            admin_anchor=dict(type="str", default="admin"),
            force=dict(type="bool", default=False),
            commit_message=dict(type="str", default=DEFAULT_MESSAGE),
        ),
        mutually_exclusive=[("admin_key_file", "admin_recipient")],
        supports_check_mode=True,
    )
    p = module.params

    def work():
        return init_repo(p["repo"], p["vcs"], p["admin_key_file"], p["admin_recipient"], p["admin_anchor"],
                         p["force"], p["commit_message"], module.check_mode)

    res = run_guarded(module, work)
    out = res.as_dict()
    if out["commit"] is None:
        del out["commit"]
    if module._diff:
        out["diff"] = {"before": res.config_before, "after": res.config_after,
                       "before_header": f"{res.repo}/.sops.yaml", "after_header": f"{res.repo}/.sops.yaml"}
    module.exit_json(**out)


if __name__ == "__main__":
    main()
