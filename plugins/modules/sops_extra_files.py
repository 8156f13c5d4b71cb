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
  - The caller removes O(dest) when done (the bootstrap playbook does, also when a later step fails).
  - Reports C(changed=false) - it fills a scratch directory and changes nothing the user manages.
  - Returns paths and modes only; file contents are never returned or shown.
options:
  repo:
    description: The secrets repository.
    type: path
    required: true
  host:
    description: The host (a DNS label).
    type: str
    required: true
  user:
    description: The host's primary user.
    type: str
    required: true
  dest:
    description: The staging directory (created C(0700) when missing).
    type: path
    required: true
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
extends_documentation_fragment:
  - nixfleet.sops.identities
attributes:
  check_mode:
    support: none
    description: Staging only writes into a private temporary directory; it does not run in check mode.
  diff_mode:
    support: none
author: nixfleet maintainers
"""

EXAMPLES = r"""
- name: Stage griefling's extra files
  nixfleet.sops.sops_extra_files:
    repo: ../nix-secrets
    host: griefling
    user: rain
    dest: "{{ staging.path }}"
    persist_prefix: /persist
  delegate_to: localhost
  register: staged
"""

RETURN = r"""
dest:
  description: The staging directory.
  returned: always
  type: str
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

from dataclasses import asdict

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nixfleet.sops.plugins.module_utils import bootstrap, fleet
from ansible_collections.nixfleet.sops.plugins.module_utils.module_support import (
    IDENTITY_ARGS,
    identity_options,
    run_guarded,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            repo=dict(type="path", required=True),
            host=dict(type="str", required=True),
            user=dict(type="str", required=True),
            dest=dict(type="path", required=True),
            persist_prefix=dict(type="str", default=""),
            nix_config=dict(type="path"),
            user_home=dict(type="str"),
            deploy_repos=dict(type="list", elements="str", default=[]),
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
        return bootstrap.stage_extra_files(p["repo"], p["host"], p["user"], p["dest"], persist, p["user_home"],
                                           p["deploy_repos"], ids)

    files, dirs = run_guarded(module, work, host=p["host"])
    # Staging fills a scratch directory the caller removes; it changes nothing the user manages.
    module.exit_json(changed=False, dest=p["dest"], files=[asdict(f) for f in files], dirs=[asdict(d) for d in dirs])


if __name__ == "__main__":
    main()
