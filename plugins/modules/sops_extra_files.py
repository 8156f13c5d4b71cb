#!/usr/bin/python
# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
module: sops_extra_files
short_description: Stage a host's key files for nixos-anywhere --extra-files, decrypted from the secrets repo
version_added: "0.1.0"
description:
  - Runs on the controller. Writes into the private directory O(dest) (created C(0700)) the tree that
    nixos-anywhere's C(--extra-files) copies onto the new root, decrypted from the secrets repository -
    C(etc/ssh/ssh_host_ed25519_key) (0600) and C(.pub) (0644), C(var/lib/sops-nix/key.txt) (0600, derived
    from the host key as sops-nix's ssh-to-age does), the user's C(.config/sops/age/keys.txt) (0600) and
    C(root/.ssh/<repo>-deploy) (0600).
  - With impermanence (O(persist_prefix), for example C(/persist)) the host key and C(key.txt) are staged
    under the prefix too, and the user's key only under it.
  - Directories get the modes NixOS expects (0755; homes, C(.config) and C(.ssh) 0700).
  - Without O(dest), the tree goes into a new private staging directory under a per-user runtime location
    (C($XDG_RUNTIME_DIR) or C(/dev/shm), tmpfs, so a reboot clears it; else the temp directory), returned as
    RV(staging). Staging directories that an interrupted run left behind (its playbook process is gone)
    are removed first and listed in RV(stale_removed).
  - The caller removes the staging directory when done (the bootstrap playbook does, also when a later step
    fails; after a Ctrl-C or a kill, the next run does).
  - Reports C(changed=false) - it fills a scratch directory and changes nothing the user manages.
  - Returns paths and modes only; file contents are never returned or shown.
requirements:
  - PyYAML
options:
  repo:
    description: The secrets repository.
    type: path
    required: true
    aliases: [secrets_repo]
  host:
    description: The host (a DNS label).
    type: str
    required: true
  user:
    description: The host's primary user.
    type: str
    required: true
  dest:
    description:
      - Where to stage the tree (created C(0700) when missing; an existing directory must be yours or root's).
      - Omit it to stage into a new private directory (see RV(staging)).
    type: path
  persist_prefix:
    description:
      - Impermanence prefix such as C(/persist); empty for none.
      - V(auto) detects it from the host's configuration in O(nix_config) (an impermanence or encrypted
        bcachefs layout under C(hosts/<host>)), as the old install recipe grepped for it.
    type: str
    default: ""
  nix_config:
    description: The nix-config repository, for O(persist_prefix=auto).
    type: path
  user_home:
    description: The user's home on the target (default C(/home/<user>)).
    type: str
  deploy_repos:
    description: Repositories whose deploy keys to stage.
    type: list
    elements: str
    default: []
  next_keys:
    description:
      - Also stage the new keys a key rotation in progress keeps beside the current ones
        (C(playbooks/rotate_keys.yml), phase 1) - C(etc/ssh/ssh_host_ed25519_key.next) (and C(.pub)) with its
        identity as a second line of C(var/lib/sops-nix/key.txt), the new user identity as a second line of the
        user's C(keys.txt), C(root/.ssh/<repo>-deploy.next) - so sops-nix and the user decrypt with either key.
    type: bool
    default: false
extends_documentation_fragment:
  - nixfleet.sops.identities
attributes:
  check_mode:
    support: none
    description: Staging only writes into a private temporary directory; it does not run in check mode.
  diff_mode:
    support: none
    description: The staged files hold private keys; no diff of them is shown.
seealso:
  - module: nixfleet.sops.sops_host_keys
  - module: nixfleet.sops.target_file
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: Stage griefling's extra files
  nixfleet.sops.sops_extra_files:
    repo: ../nix-secrets
    host: griefling
    user: rain
    persist_prefix: /persist
  delegate_to: localhost
  register: staged
"""

RETURN = r"""
dest:
  description: The root of the staged tree (what C(--extra-files) takes).
  returned: always
  type: str
staging:
  description: The private staging directory this run created, to remove when done (absent with O(dest)).
  returned: when O(dest) is not given
  type: str
stale_removed:
  description: Staging directories of interrupted earlier runs that were removed (they held private keys).
  returned: always
  type: list
  elements: str
files:
  description: Staged files with C(path) (relative to the new root), C(mode) and C(owner).
  returned: always
  type: list
  elements: dict
dirs:
  description: Directories of the tree (parents first) with C(path), C(mode) and C(owner).
  returned: always
  type: list
  elements: dict
"""

import os
import shutil
from dataclasses import asdict

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nixfleet.sops.plugins.module_utils import bootstrap, fleet
from ansible_collections.nixfleet.sops.plugins.module_utils.fsutil import new_staging_dir
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
            dest=dict(type="path"),
            persist_prefix=dict(type="str", default=""),
            nix_config=dict(type="path"),
            user_home=dict(type="str"),
            deploy_repos=dict(type="list", elements="str", default=[]),
            next_keys=dict(type="bool", default=False),
            **IDENTITY_ARGS,
        ),
        supports_check_mode=False,
    )
    p = module.params

    def work():
        ids = fleet.collect_identities(**identity_options(p, module.warn))
        persist = p["persist_prefix"] or ""
        if persist == "auto":
            if not p["nix_config"]:
                raise bootstrap.BootstrapError(f"{p['host']}: persist_prefix=auto needs nix_config")
            persist = bootstrap.detect_persist_prefix(p["nix_config"], p["host"])
        staging, stale = (None, []) if p["dest"] else new_staging_dir(f"extra-files-{p['host']}")
        dest = p["dest"] or os.path.join(staging, "root")
        try:
            files, dirs = bootstrap.stage_extra_files(p["repo"], p["host"], p["user"], dest, persist, p["user_home"],
                                                      p["deploy_repos"], ids, next_keys=p["next_keys"])
        except BaseException:
            if staging:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        return dest, staging, stale, files, dirs

    dest, staging, stale, files, dirs = run_guarded(module, work, host=p["host"])
    out = dict(dest=dest, stale_removed=stale, files=[asdict(f) for f in files], dirs=[asdict(d) for d in dirs])
    if staging:
        out["staging"] = staging
    for path in stale:
        module.warn(f"removed {path}: staging of an interrupted earlier run (it held private keys)")
    # Staging fills a scratch directory the caller removes; it changes nothing the user manages.
    module.exit_json(changed=False, **out)


if __name__ == "__main__":
    main()
