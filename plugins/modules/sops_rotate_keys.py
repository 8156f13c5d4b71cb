#!/usr/bin/python
# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
module: sops_rotate_keys
short_description: Rotate a host's keys in two phases, with a resumable journal in the secrets repository
version_added: "0.1.0"
description:
  - Runs on the controller. The repository side of C(playbooks/rotate_keys.yml), which puts the keys on the host
    between the phases; one O(phase) per call.
  - V(1) generates a new key per kind (C(host) - the SSH host key and what sops-nix derives from it; C(user) - the
    primary user's age key; C(deploy) - the deploy keys), stores it encrypted beside the old one
    (C(ssh_host_ed25519_key.next) in C(sops/host-keys/<host>.yaml), C(keys/age-next) and C(deploy-keys-next/<repo>)
    in C(sops/<host>.yaml)), registers host and user keys as C(&<anchor>_next) in every key group of every rule that
    names C(*<anchor>), rekeys every affected file and writes the journal C(.nixfleet/rotations/<host>.yaml). A
    rotation already in progress is continued, not started again (RV(resumed)).
  - V(verify) proves that the new keys alone open what the host needs - every file the old key can read, and every
    C(sopsFile) of the host's sops-nix manifest with each key path its secrets read (O(secrets), O(sops_files), as
    M(nixfleet.sops.sops_nix_verify) reports them), in the repository and as the host's current system deploys
    them (O(deployed)) - decrypting in memory only.
  - V(2) gives C(&<anchor>) the new recipient, removes the C(_next) anchor and its aliases, rekeys every file the
    old key could read and gives it a new data key, moves the new keys into place in the repository and records the
    rotation in the key inventory. A deploy-key rotation needs O(forge_ready) (the new public keys are at the forge).
  - V(finish) removes the journal once the host holds only the new keys; V(abort) undoes phase 1 (refused after
    phase 2); V(status) reports the journal.
  - Every write holds the repository lock and is staged and renamed all at once; the paths are recorded as not yet
    committed, so the next commit takes them also after a kill. Commit once per phase (M(nixfleet.sops.vcs_commit)).
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
    description: The host (a DNS label; its anchor C(&<host>)).
    type: str
    required: true
  phase:
    description: The step to run.
    type: str
    choices: [status, "1", verify, "2", finish, abort]
    default: status
  kinds:
    description:
      - Keys to rotate in phase 1 - V(host), V(user), V(deploy), V(all), or V(due) (the keys the key inventory
        says are older than O(max_age_days)). Ignored when a rotation is in progress (its journal decides).
    type: list
    elements: str
    default: []
  user:
    description: The host's primary user; its key is C(&<user>_<host>).
    type: str
  deploy_repos:
    description: Repositories with a deploy key for the host.
    type: list
    elements: str
    default: []
  max_age_days:
    description: Key-age policy for O(kinds=due), maximum age in days per kind (host, user, deploy).
    type: dict
    default: {}
  forge_ready:
    description: The new deploy public keys are registered at the forge, so phase 2 may replace the old ones.
    type: bool
    default: false
  secrets:
    description:
      - The host's manifest secrets (C(sopsFile), C(key)) for O(phase=verify), as M(nixfleet.sops.sops_nix_verify)
        returns them.
    type: list
    elements: dict
    default: []
  sops_files:
    description: The host's manifest C(sopsFile) paths for O(phase=verify).
    type: list
    elements: str
    default: []
  deployed:
    description:
      - For O(phase=verify), the copies of the manifest's C(sopsFile) paths the host's current system deploys, read
        from the host (store path to base64 content, as M(ansible.builtin.slurp) returns it; encrypted files). Each
        must open with the new host key alone before phase 2 takes the old key off the host; a copy that does not
        means the rekeyed secrets are not deployed yet.
    type: dict
    default: {}
  lock_timeout:
    description: Seconds to wait for the repository lock while another run holds it.
    type: int
    default: 600
extends_documentation_fragment:
  - nixfleet.sops.identities
attributes:
  check_mode:
    support: full
    description: Reports what the phase would change; writes nothing; never shows a key the real run would generate.
  diff_mode:
    support: full
    description: Shows the C(.sops.yaml) change and the recipients (and data keys) each file gains and loses.
  idempotent:
    support: full
    description: A phase already done changes nothing; the journal says where a rotation stands.
seealso:
  - module: nixfleet.sops.sops_host_keys
  - module: nixfleet.sops.sops_revoke
  - module: nixfleet.sops.sops_key_inventory
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: Phase 1 - new host key beside the old one
  nixfleet.sops.sops_rotate_keys:
    repo: ../nix-secrets
    host: griefling
    user: rain
    kinds: [host]
    phase: "1"
  delegate_to: localhost
  register: rotation

- name: Phase 2 - the old key goes
  nixfleet.sops.sops_rotate_keys:
    repo: ../nix-secrets
    host: griefling
    phase: "2"
  delegate_to: localhost
"""

RETURN = r"""
state:
  description: Where the rotation stands afterwards - C(phase1), C(phase2), C(done), C(aborted), or empty (none).
  returned: always
  type: str
kinds:
  description: The keys being rotated.
  returned: always
  type: list
  elements: str
touched:
  description: Paths (relative to O(repo)) written or removed, or that would be; commit exactly these.
  returned: always
  type: list
  elements: str
rekeyed:
  description: Files (other than the host's own) whose recipients changed.
  returned: always
  type: list
  elements: str
rotated:
  description: Files that got a new data key (phase 2 - every file the old key could read).
  returned: always
  type: list
  elements: str
changes:
  description: Per file, the recipients added and removed (named by anchor) and whether the data key was rotated.
  returned: always
  type: list
  elements: dict
old:
  description: The old public keys and recipients (C(host), C(host_public_key), C(user), C(deploy/<repo>)).
  returned: always
  type: dict
new:
  description: The new public keys and recipients (same keys as RV(old)).
  returned: always
  type: dict
generated:
  description: Keys generated in this run (phase 1).
  returned: always
  type: list
  elements: str
resumed:
  description: Phase 1 found a rotation in progress and continued it.
  returned: always
  type: bool
checked:
  description: For O(phase=verify), each file checked with the new key alone (path, kind, key paths read, ok).
  returned: always
  type: list
  elements: dict
journal:
  description: The journal (public data) when a rotation is in progress.
  returned: always
  type: dict
"""

from contextlib import nullcontext

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nixfleet.sops.plugins.module_utils import fleet, rotation
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
            phase=dict(type="str", choices=["status", "1", "verify", "2", "finish", "abort"], default="status"),
            kinds=dict(type="list", elements="str", default=[]),
            user=dict(type="str"),
            deploy_repos=dict(type="list", elements="str", default=[]),
            max_age_days=dict(type="dict", default={}),
            forge_ready=dict(type="bool", default=False),
            secrets=dict(type="list", elements="dict", default=[], no_log=False),  # names and files, never values
            sops_files=dict(type="list", elements="str", default=[]),
            deployed=dict(type="dict", default={}),
            lock_timeout=dict(type="int", default=600),
            **IDENTITY_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    phase, repo, host, check = p["phase"], p["repo"], p["host"], module.check_mode

    def work() -> rotation.RotationResult:
        if phase == "status":
            return rotation.status(repo, host)
        ids = None if phase == "finish" else fleet.collect_identities(**identity_options(p, module.warn))
        lock = repo_lock(repo, purpose=f"sops_rotate_keys {host} {phase}", require=".sops.yaml",
                         wait=p["lock_timeout"])
        with lock if not check else nullcontext():
            if phase == "1":
                kinds, repos = rotation.resolve_kinds(repo, host, p["kinds"], p["deploy_repos"], p["max_age_days"])
                spec = rotation.RotationSpec(host=host, kinds=kinds, user=p["user"], deploy_repos=repos)
                return rotation.begin(repo, spec, ids, check)
            if phase == "verify":
                return rotation.verify(repo, host, ids, p["secrets"], p["sops_files"], p["deployed"])
            if phase == "2":
                return rotation.switch(repo, host, ids, check, p["forge_ready"])
            if phase == "finish":
                return rotation.finish(repo, host, check)
            return rotation.abort(repo, host, ids, check)

    res = run_guarded(module, work, host=host)
    out = dict(res.as_dict(), msg=res.msg)
    if module._diff and (res.config_before != res.config_after or res.changes):
        config_diff = {"before": res.config_before, "after": res.config_after,
                       "before_header": f"{repo}/.sops.yaml", "after_header": f"{repo}/.sops.yaml"}
        out["diff"] = [config_diff, fleet.changes_diff(res.changes, repo)]
    module.exit_json(**out)


if __name__ == "__main__":
    main()
