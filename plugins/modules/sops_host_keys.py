#!/usr/bin/python
# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
module: sops_host_keys
short_description: Register a host's keys in the secrets repository (host key, user age key, deploy keys)
version_added: "0.1.0"
description:
  - Runs on the controller. For one host, reuses the keys the secrets repository already holds for it
    and generates only what is missing - the SSH host key (ed25519), a per-host user age key, and one
    deploy key per repository - so a reinstall keeps its host key and needs no rekey.
  - Registers C(&<host>) (the host key converted to age, as sops-nix derives it) and C(&<user>_<host>)
    in C(.sops.yaml), a creation rule for C(sops/<host>.yaml) (admins, host, host user), a rule for
    C(sops/host-keys/<host>.yaml) naming the admins only, and the host's membership of the shared rule.
  - Stores the user identity under C(keys/age) and the deploy keys under C(deploy-keys/<repo>) in
    C(sops/<host>.yaml), the SSH private key in C(sops/host-keys/<host>.yaml); rekeys every file whose
    rule changed; records the keys in the key inventory. Returns the touched paths for one commit.
  - A host name that is not a DNS label (for example C(../x), C(a b), C(*)) is refused before anything is written.
  - Returns public keys and recipients only; private keys never leave the encrypted files.
requirements:
  - PyYAML
options:
  repo:
    description: The secrets repository (the directory holding C(.sops.yaml)).
    type: path
    required: true
    aliases: [secrets_repo]
  host:
    description: The host's name (a DNS label); it becomes the anchor C(&<host>) and C(sops/<host>.yaml).
    type: str
    required: true
  user:
    description: The host's primary user; its age key is registered as C(&<user>_<host>).
    type: str
    required: true
  admins:
    description: Anchors of the operators' recipients; they can read every file of the host.
    type: list
    elements: str
    required: true
  deploy_repos:
    description: Repositories that get a per-host deploy key (for example C(nix-config), C(nix-secrets)).
    type: list
    elements: str
    default: []
  shared_rule:
    description: C(path_regex) of the shared rule the host joins (skipped when no such rule exists).
    type: str
    default: 'sops/shared\.yaml$'
  host_group:
    description: Group of C(keys:) for host anchors.
    type: str
    default: hosts
  user_group:
    description: Group of C(keys:) for user anchors.
    type: str
    default: users
  regenerate:
    description: Keys to replace even though the repository holds them (C(host), C(user), C(deploy)).
    type: list
    elements: str
    default: []
  adopt_stored_key:
    description:
      - Use the host key stored in C(sops/host-keys/<host>.yaml) even when its recipient is not the one
        C(.sops.yaml) registers for C(&<host>). Without it such a key is refused (someone may have planted it,
        or the registration is stale), with a message naming both recipients.
    type: bool
    default: false
  always_members:
    description:
      - Anchors that every rule created for the host names too, when they exist in C(.sops.yaml)
        (the break-glass key registered by C(playbooks/break_glass.yml)).
    type: list
    elements: str
    default: [break_glass]
  lock_timeout:
    description: Seconds to wait for the repository lock while another run (another host) holds it.
    type: int
    default: 600
  commit:
    description:
      - Commit the touched paths (git, or jj when the repository has C(.jj)) while still holding the
        repository lock, so each host's registration is one commit of its own, also when several hosts
        are bootstrapped in one run.
    type: bool
    default: false
  bookmark:
    description: jj bookmark to move to the commit (for git, ignored).
    type: str
    aliases: [vcs_bookmark]
extends_documentation_fragment:
  - nixfleet.sops.identities
attributes:
  check_mode:
    support: full
    description: Reports what would be generated, registered and written; writes nothing.
  diff_mode:
    support: full
    description: Shows the C(.sops.yaml) change (it holds public keys only).
  idempotent:
    support: full
    description: A second run reuses every key and changes nothing (unless O(regenerate) is given).
seealso:
  - module: nixfleet.sops.age_keypair
  - module: nixfleet.sops.ssh_keypair
  - module: nixfleet.sops.sops_recipient
  - module: nixfleet.sops.sops_rekey
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: Keys for griefling
  nixfleet.sops.sops_host_keys:
    repo: ../nix-secrets
    host: griefling
    user: rain
    admins: [ta]
    deploy_repos: [nix-config, nix-secrets]
  delegate_to: localhost
  register: keys
"""

RETURN = r"""
touched:
  description: Paths (relative to O(repo)) written, or that would be - commit exactly these.
  returned: always
  type: list
  elements: str
generated:
  description: Keys generated in this run.
  returned: always
  type: list
  elements: str
reused:
  description: Keys found in the repository and kept.
  returned: always
  type: list
  elements: str
rekeyed:
  description: Files rekeyed because a rule changed.
  returned: always
  type: list
  elements: str
host_public_key:
  description: The host's SSH public key line (for known_hosts).
  returned: always
  type: str
host_recipient:
  description: The host's age recipient (its SSH key converted).
  returned: always
  type: str
user_recipient:
  description: The recipient of the host user's age key.
  returned: always
  type: str
deploy_public_keys:
  description: Deploy public keys by repository, to add at the forge (read-only).
  returned: always
  type: dict
commit:
  description: The commit made (with O(commit=true), when something changed).
  returned: when a commit was made
  type: str
"""

from contextlib import nullcontext

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nixfleet.sops.plugins.module_utils import bootstrap, fleet, vcs
from ansible_collections.nixfleet.sops.plugins.module_utils.fsutil import repo_lock
from ansible_collections.nixfleet.sops.plugins.module_utils.module_support import (
    IDENTITY_ARGS,
    identity_options,
    run_guarded,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            repo=dict(type="path", required=True, aliases=["secrets_repo"]),
            host=dict(type="str", required=True),
            user=dict(type="str", required=True),
            admins=dict(type="list", elements="str", required=True),
            deploy_repos=dict(type="list", elements="str", default=[]),
            shared_rule=dict(type="str", default=r"sops/shared\.yaml$"),
            host_group=dict(type="str", default="hosts"),
            user_group=dict(type="str", default="users"),
            regenerate=dict(type="list", elements="str", default=[]),
            adopt_stored_key=dict(type="bool", default=False),
            always_members=dict(type="list", elements="str", default=["break_glass"]),
            lock_timeout=dict(type="int", default=600),
            **IDENTITY_ARGS,
            commit=dict(type="bool", default=False),
            bookmark=dict(type="str", aliases=["vcs_bookmark"]),
        ),
        supports_check_mode=True,
    )
    p = module.params

    def work():
        spec = bootstrap.HostSpec(
            host=p["host"], user=p["user"], admins=p["admins"], deploy_repos=p["deploy_repos"],
            host_group=p["host_group"], user_group=p["user_group"], shared_rule=p["shared_rule"] or None,
            regenerate=p["regenerate"], adopt_stored_key=p["adopt_stored_key"], always_members=p["always_members"],
        )
        ids = fleet.collect_identities(**identity_options(p, module.warn))
        lock = repo_lock(p["repo"], purpose=f"sops_host_keys {spec.host}", require=".sops.yaml",
                         wait=p["lock_timeout"])
        with lock if not module.check_mode else nullcontext():
            res = bootstrap.ensure_host_keys(p["repo"], spec, ids, module.check_mode)
            done = None
            if p["commit"]:
                # Also when nothing was touched now: what an interrupted run wrote is committed here.
                n = len(res.rekeyed)
                message = f"chore(sops): register {spec.host} keys" + (
                    f" and rekey {n} file{'' if n == 1 else 's'}" if n else "")
                done = vcs.commit(p["repo"], res.touched, message, bookmark=p["bookmark"] or None,
                                  check_mode=module.check_mode)
            return res, done

    res, done = run_guarded(module, work, host=p["host"])
    out = dict(changed=res.changed or bool(done and done.changed), touched=res.touched, generated=res.generated,
               reused=res.reused, rekeyed=res.rekeyed, **res.public)
    if done is not None and done.commit:
        out["commit"] = done.commit
    if module._diff:
        out["diff"] = {"before": res.config_before, "after": res.config_after,
                       "before_header": f"{p['repo']}/.sops.yaml", "after_header": f"{p['repo']}/.sops.yaml"}
    module.exit_json(**out)


if __name__ == "__main__":
    main()
