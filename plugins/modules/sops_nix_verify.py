#!/usr/bin/python
# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
module: sops_nix_verify
short_description: Check sops-nix on a host against the host's own sops-nix manifest
version_added: "0.1.0"
description:
  - Runs on the target and needs only Python's standard library (NixOS hosts have nothing from PyPI).
  - Finds the manifest sops-nix installs secrets from, the way sops-nix runs it - the
    C(sops-install-secrets <manifest.json>) line in C(/run/current-system/activate), or the C(ExecStart)
    of C(sops-install-secrets.service) with C(sops.useSystemdActivation) - unless O(manifest) names it.
  - "Checks, and reports every fault found, not only the first: each key source the manifest names
    (C(ageKeyFile), C(ageSshKeyPaths)) exists, is C(0600) root-owned and parses, and its recipient is one
    of O(expected_recipients); C(symlinkPath) points at an existing generation C(secretsMountPoint/N);
    every secret and template is at its C(path) in the current generation with the owner, group and mode
    the manifest asks for; the user's age key (O(user_key)); deploy keys (O(deploy_keys)) and their
    C(Host) blocks in O(ssh_config); and the sops files of O(sops_files) list one of the host's recipients."
  - The converted C(age1…) recipients of the host's keys are returned (derived with a pure-Python X25519,
    and from the public half of the SSH host key) so the controller can compare them with C(.sops.yaml).
  - With O(scope=controller) (run it with C(delegate_to=localhost)) only O(sops_files) are checked, against
    O(recipients) reported by an earlier run on the host.
  - The module only reads. Faults do not fail the task unless O(fail_on_faults=true); the role decides.
options:
  host:
    description: Name of the host used in every message. Defaults to the machine's hostname.
    type: str
  manifest:
    description: Manifest paths to check instead of discovering them.
    type: list
    elements: path
    default: []
  expected_recipients:
    description:
      - The C(age1…) recipients C(.sops.yaml) lists for this host (its anchor). Each key source must have
        one of them; a source that has none is a fault (a changed host key, or a C(generateKey) key).
    type: list
    elements: str
    default: []
  user_key:
    description: The primary user's age key for running C(sops) on the host.
    type: dict
    suboptions:
      path:
        description: Path of the key file, for example C(/home/rain/.config/sops/age/keys.txt).
        type: path
        required: true
      owner:
        description: The user who must own it.
        type: str
        required: true
      expected_recipient:
        description: The recipient registered for this user's key in C(.sops.yaml).
        type: str
  deploy_keys:
    description: Deploy keys that must be in place, each used by a C(Host <alias>) block of O(ssh_config).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Path of the private key, for example C(/root/.ssh/nix-secrets-deploy).
        type: path
        required: true
      alias:
        description: The C(Host) alias whose C(IdentityFile) must be O(deploy_keys[].path).
        type: str
  ssh_config:
    description: The ssh client configuration that must name the deploy keys.
    type: path
    default: /root/.ssh/config
  sops_files:
    description:
      - sops files that must list one of the host's recipients. Nix store paths (as a manifest's C(sopsFile)
        names them) are mapped into O(repo).
      - A raw C(ssh-ed25519) recipient for the host is reported as a fault of its own, since sops-nix needs
        the converted C(age1…) recipient.
    type: list
    elements: path
    default: []
  repo:
    description: Local checkout of the secrets repository the O(sops_files) store paths are mapped into.
    type: path
    aliases: [secrets_repo]
  recipients:
    description:
      - The host's recipients to look for in O(sops_files), in addition to those found on the machine the
        module runs on (the usual input for O(scope=controller)). Without any, O(expected_recipients) is used.
    type: list
    elements: str
    default: []
  scope:
    description:
      - V(target) runs every check on the machine the module runs on.
      - V(controller) checks only O(sops_files).
    type: str
    choices: [target, controller]
    default: target
  root:
    description:
      - Prefix under which the host's tree is found, for checking an offline tree (a mounted install,
        a staging directory). Symlinks are followed inside it.
    type: path
    default: /
  fail_on_faults:
    description: Fail the task when there are faults (the result still lists all of them).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: The module only reads, so it runs fully in check mode.
  diff_mode:
    support: none
    description: Only checks; nothing is changed.
  idempotent:
    support: full
    description: Never changes anything; always returns C(changed=false).
notes:
  - Reads private keys to derive their recipients; no key material is returned or logged.
  - The host's files are treated as hostile input - only regular files are read (a FIFO, socket or device in place
    of a key, a manifest or a configuration file is a fault, never waited on), and at most what the kind of file can
    hold (64 KiB for a key file, 8 MiB for a manifest, 4 MiB for other files).
  - With O(repo), a C(sopsFile) that leads out of the repository (C(..), or a symlink inside it pointing
    out) is a fault; no file outside the repository is read.
seealso:
  - name: sops-nix
    description: The NixOS module whose activation this checks.
    link: https://github.com/Mic92/sops-nix
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: Check sops-nix on the host
  nixfleet.sops.sops_nix_verify:
    host: "{{ inventory_hostname }}"
    expected_recipients: ["{{ host_recipient }}"]
    user_key:
      path: /home/rain/.config/sops/age/keys.txt
      owner: rain
      expected_recipient: "{{ rain_recipient }}"
    deploy_keys:
      - path: /root/.ssh/nix-secrets-deploy
        alias: nix-secrets
  register: sops_nix

- name: The host's sops files, checked on the controller against the recipients found on the host
  nixfleet.sops.sops_nix_verify:
    host: "{{ inventory_hostname }}"
    scope: controller
    sops_files: "{{ sops_nix.sops_files }}"
    repo: "{{ playbook_dir }}/../nix-secrets"
    recipients: "{{ sops_nix.recipients }}"
  delegate_to: localhost

- name: An explicit manifest, failing on any fault
  nixfleet.sops.sops_nix_verify:
    manifest: [/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-manifest.json]
    fail_on_faults: true
"""

RETURN = r"""
ok:
  description: True when no fault was found.
  returned: always
  type: bool
faults:
  description: Every fault found.
  returned: always
  type: list
  elements: dict
  contains:
    check:
      description: >-
        Which check: manifest, key_source, recipient, generation, secret, template, user_key,
        deploy_key, ssh_config, sops_file.
      type: str
    path:
      description: The file or path at fault.
      type: str
    message:
      description: What is wrong, naming the host and the path.
      type: str
    fix:
      description: What to do about it.
      type: str
  sample:
    - check: secret
      path: /run/secrets/wifi-psk
      message: "griefling: /run/secrets/wifi-psk: secret 'wifi-psk' has mode 0644, the manifest asks for 0400"
      fix: chmod 0400 /run/secrets.d/3/wifi-psk (or re-run the activation, which resets it)
recipients:
  description: The C(age1…) recipients of the key sources sops-nix can use on the host.
  returned: always
  type: list
  elements: str
key_sources:
  description: Each key source with its kind (C(age_key_file), C(ssh_key)), path, recipients and whether it is usable.
  returned: always
  type: list
  elements: dict
manifests:
  description: The manifests checked.
  returned: always
  type: list
  elements: str
sops_files:
  description: The distinct C(sopsFile) paths the manifests name (input for a controller-side run).
  returned: always
  type: list
  elements: str
secrets:
  description: >-
    Each secret of the manifests with its C(name), C(key) (path in the sops file), C(sopsFile) and C(format) - what
    a key rotation checks the new key opens (O(nixfleet.sops.sops_rotate_keys#module:phase=verify)). Never a value.
  returned: always
  type: list
  elements: dict
summary:
  description: "One line: C(<host>: ok) or C(<host>: N faults: …)."
  returned: always
  type: str
  sample: "griefling: 2 faults: key_source /etc/ssh/ssh_host_ed25519_key; secret /run/secrets/wifi-psk"
host:
  description: The host name used in the messages.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix_check import verify


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            host=dict(type="str"),
            manifest=dict(type="list", elements="path", default=[]),
            expected_recipients=dict(type="list", elements="str", default=[]),
            # Paths and owners of key files, not the keys themselves.
            user_key=dict(type="dict", no_log=False, options=dict(
                path=dict(type="path", required=True),
                owner=dict(type="str", required=True),
                expected_recipient=dict(type="str"),
            )),
            deploy_keys=dict(type="list", elements="dict", default=[], no_log=False, options=dict(
                path=dict(type="path", required=True),
                alias=dict(type="str"),
            )),
            ssh_config=dict(type="path", default="/root/.ssh/config"),
            sops_files=dict(type="list", elements="path", default=[]),
            repo=dict(type="path", aliases=["secrets_repo"]),
            recipients=dict(type="list", elements="str", default=[]),
            scope=dict(type="str", choices=["target", "controller"], default="target"),
            root=dict(type="path", default="/"),
            fail_on_faults=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = verify(
            root=p["root"], host=p["host"], manifests=p["manifest"], expected_recipients=p["expected_recipients"],
            user_key=p["user_key"], deploy_keys=p["deploy_keys"], ssh_config=p["ssh_config"],
            sops_files=p["sops_files"], secrets_repo=p["repo"], recipients=p["recipients"], scope=p["scope"],
        )
    except Exception as exc:  # a bug in a check must still name the host, not dump a trace
        module.fail_json(msg=f"{p['host'] or 'host'}: sops_nix_verify could not complete: {exc}")
    if p["fail_on_faults"] and not result["ok"]:
        module.fail_json(msg=result["summary"], changed=False, **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
