#!/usr/bin/python
# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
module: sops_access
short_description: Keep .sops.yaml in step with the inventory's secret categories; rekey and rotate what changed
version_added: "0.1.0"
description:
  - Computes from a declarative model (secret categories, inventory groups, per-host additions and removals)
    the recipients every managed creation rule should have, and reconciles C(.sops.yaml) with it.
  - "A managed rule is marked by the comment line
    C(# managed by nixfleet.sops access: category NAME (edit the inventory, not this rule)) directly above it.
    Only rules so marked are changed or removed; hand-written rules and comments stay byte for byte. Writing
    that line above an existing rule hands it over to this module."
  - Members of a managed rule are the O(admin_anchors), the break-glass anchor (see O(break_glass_anchor)),
    and per host its C(&<host>) anchor, plus C(&<user>_<host>) with O(user_keys). A host whose anchor is not in
    C(.sops.yaml) yet is left out and listed in RV(hosts_without_anchor) (bootstrap registers it).
  - Then rekeys the sops files whose recipients changed (same data key), and rotates the data key of every
    file that lost a recipient (a host that could read it may keep the old data key). C(.sops.yaml) is written
    last. The repository lock is held across the whole read-modify-write.
  - Refuses, with nothing written, a category whose path_regex is the path_regex of a hand-written rule, and
    the removal of a managed rule (its category left the inventory) that would leave sops files without any
    rule.
  - The caller commits RV(changed_files) once (playbooks/access.yml does, with M(nixfleet.sops.vcs_commit)).
requirements:
  - PyYAML
options:
  repo:
    description: The secrets repository (the directory holding C(.sops.yaml)).
    type: path
    required: true
    aliases: [secrets_repo]
  categories:
    description:
      - "The secret categories (C(nixfleet_secret_categories)): C({name: {path_regex: REGEX | path: FILE,
        groups: [inventory groups], hosts: [host names]}}). C(path) is a file relative to O(repo), turned into
        C(^FILE$) (quoted)."
      - A category is read by the hosts of its groups (child groups included, as Ansible's C(groups) lists
        them) and the hosts it names; then each host's O(host_categories) add or remove categories.
    type: dict
    required: true
  groups:
    description: The inventory's groups, group name to host names (Ansible's C(groups) variable).
    type: dict
    required: true
  host_categories:
    description:
      - "Per host its C(nixfleet_categories): C({host: {add: [categories], remove: [categories]}}). Hosts that
        set nothing may be left out. A category named here must exist."
    type: dict
    default: {}
  host_users:
    description:
      - Per host its primary user (C(nixfleet_primary_user)), for the C(&<user>_<host>) members with O(user_keys).
    type: dict
    default: {}
  admin_anchors:
    description: Anchors of the operators; members of every managed rule.
    type: list
    elements: str
    required: true
  break_glass_anchor:
    description:
      - Anchor of the break-glass recovery key, member of every managed rule. When unset, C(break_glass) is
        used if C(.sops.yaml) has it. An empty string uses none; any other name must exist.
    type: str
  user_keys:
    description:
      - Also make each host's user key C(&<user>_<host>) a member of the categories the host reads (for
        home-manager secrets in shared files). By default user keys read only the host's own file.
    type: bool
    default: false
  drift_only:
    description:
      - Only report drift between the model and C(.sops.yaml) and the files (RV(findings)), as the audit does.
        Changes nothing, needs no identity, never reports changed.
    type: bool
    default: false
  workers:
    description: Processes for the rekey and rotation; default is one per core (used only for many files).
    type: int
  lock_timeout:
    description:
      - Seconds to wait for the repository lock when another run holds it. Check mode takes no lock.
    type: int
    default: 60
extends_documentation_fragment:
  - nixfleet.sops.identities
attributes:
  check_mode:
    support: full
    description: Plans the same edits, rekeys and rotations (proving the identities open those files); writes nothing.
  diff_mode:
    support: full
    description: The C(.sops.yaml) text before and after, then per file the recipients removed and added and the
      data keys rotated.
  idempotent:
    support: full
    description: A second run finds every managed rule and file in step and changes nothing.
seealso:
  - module: nixfleet.sops.sops_recipient
  - module: nixfleet.sops.sops_creation_rule
  - module: nixfleet.sops.sops_rekey
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: Access from the inventory
  nixfleet.sops.sops_access:
    repo: "{{ nixfleet_secrets_repo }}"
    categories:
      base: {path: sops/shared.yaml, groups: [nixos]}
      desktop: {path_regex: 'sops/desktop\.yaml$', groups: [desktops]}
      server: {path_regex: 'sops/server\.yaml$', groups: [servers]}
    groups: "{{ groups }}"
    host_categories:
      ghost: {add: [server]}
    admin_anchors: [ta]
  register: access
"""

RETURN = r"""
rules:
  description: Per managed rule, its category, path_regex, action (created, updated, renamed, removed, unchanged)
    and the members added and removed.
  returned: unless drift_only
  type: list
  elements: dict
changes:
  description: Per sops file under a managed rule that changes, the recipients added and removed (anchor names),
    whether it is rekeyed and whether its data key is rotated (and which recipients it lost).
  returned: unless drift_only
  type: list
  elements: dict
changed_files:
  description: Files written (or that would be, in check mode), relative to O(repo), C(.sops.yaml) first.
  returned: unless drift_only
  type: list
  elements: str
rotated_files:
  description: Files whose data key was (or would be) rotated.
  returned: unless drift_only
  type: list
  elements: str
config_changed:
  description: Whether C(.sops.yaml) is (or would be) rewritten.
  returned: unless drift_only
  type: bool
hosts_without_anchor:
  description: Hosts of a category left out because their anchor is not in C(.sops.yaml), and why.
  returned: unless drift_only
  type: list
  elements: dict
access_warnings:
  description: Managed rules sops never reaches for some file (an earlier rule takes it), files left alone.
  returned: unless drift_only
  type: list
  elements: str
findings:
  description: With O(drift_only), the drift as audit findings (kind, severity, message, fix).
  returned: when drift_only
  type: list
  elements: dict
counts:
  description: Numbers of categories, managed rules changed, files rekeyed and rotated, hosts left out.
  returned: unless drift_only
  type: dict
msg:
  description: One-line summary.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nixfleet.sops.plugins.module_utils import access, fleet
from ansible_collections.nixfleet.sops.plugins.module_utils.module_support import (
    IDENTITY_ARGS,
    identity_options,
    run_guarded,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            repo=dict(type="path", required=True, aliases=["secrets_repo"]),
            categories=dict(type="dict", required=True),
            groups=dict(type="dict", required=True),
            host_categories=dict(type="dict", default={}),
            host_users=dict(type="dict", default={}),
            admin_anchors=dict(type="list", elements="str", required=True),
            break_glass_anchor=dict(type="str"),
            user_keys=dict(type="bool", default=False),
            drift_only=dict(type="bool", default=False),
            workers=dict(type="int"),
            lock_timeout=dict(type="int", default=60),
            **IDENTITY_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params

    def model():
        return access.build_model(p["categories"], p["groups"], p["host_categories"], p["admin_anchors"],
                                  p["break_glass_anchor"], p["user_keys"], p["host_users"])

    if p["drift_only"]:
        def drift():
            sc = fleet.scan(p["repo"], strict=False)
            return access.drift_findings(sc.config, model(), sc.files)

        findings = run_guarded(module, drift, **_invocation(p))
        module.exit_json(changed=False, findings=findings, **_invocation(p),
                         msg=f"{len(findings)} access findings" if findings else "access in step with the inventory")

    def work():
        ids = fleet.collect_identities(**identity_options(p, module.warn))
        return access.run(p["repo"], model(), ids, module.check_mode, p["workers"], max(p["lock_timeout"], 0))

    res = run_guarded(module, work, **_invocation(p))
    out = dict(changed=res.changed, msg=res.summary(module.check_mode), **res.as_dict())
    if module._diff:
        out["diff"] = res.diff(p["repo"])
    for w in res.warnings:
        module.warn(w)
    module.exit_json(**out, **_invocation(p))


def _invocation(params: dict) -> dict:
    """The invocation echo, with the inventory-sized inputs (groups, per-host settings) summarised:
    Ansible returns every parameter with the result, and for 2,000 hosts carrying them back costs seconds."""
    big = ("groups", "host_categories", "host_users")
    args = {k: v for k, v in params.items() if k not in big}
    args.update({k: f"<{len(params[k] or {})} entries>" for k in big})
    return {"invocation": {"module_args": args}}


if __name__ == "__main__":
    main()
