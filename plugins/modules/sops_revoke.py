#!/usr/bin/python
# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
module: sops_revoke
short_description: Revoke a host in the secrets repository and report everything it could ever read
version_added: "0.1.0"
description:
  - Runs on the controller. Removes the host's own creation rules (C(sops/<host>.yaml), C(sops/host-keys/<host>.yaml)),
    then its anchors (C(&<host>), C(&<user>_<host>) and the C(_next) anchors of an unfinished key rotation) from every
    rule - refused, naming the rule, when a rule would be left without a recipient, or when a rule still lists one of
    the host's recipients under another name.
  - The host's own files are removed, or archived under O(archive_dir) re-encrypted for the admins with a new data
    key (O(own_files)). Every other file the host could read is rekeyed B(and) gets a new data key, since the host
    holds the old one. Its key-inventory entries and rotation journal go. One change, staged and renamed all at once,
    under the repository lock; commit it once (M(nixfleet.sops.vcs_commit) with RV(touched)).
  - The blast-radius report (RV(exposure), and with O(report_dir) a JSON and a text file) lists every file and key
    path the host's keys could read now and at any commit of the repository's git history, with the first commit at
    which they could, and the deploy keys to delete at the forge. Git history keeps the old ciphertexts, which the
    host's key still opens - change those credentials at their source.
  - Returns public data only (paths, key paths, commits, public keys, recipients).
requirements:
  - PyYAML
options:
  repo:
    description: The secrets repository (the directory holding C(.sops.yaml)).
    type: path
    required: true
    aliases: [secrets_repo]
  host:
    description: The host to revoke.
    type: str
    required: true
  user:
    description: Its primary user (C(&<user>_<host>)); default - from the key inventory, else anchors named so.
    type: str
  own_files:
    description: What becomes of the files of the host's own rules.
    type: str
    choices: [remove, archive]
    default: remove
  archive_dir:
    description: Where O(own_files=archive) puts them, relative to O(repo) (as C(<archive_dir>/<host>/<path>)).
    type: str
    default: .nixfleet/archive
  report_dir:
    description: Write C(nixfleet-revoke-<host>.json) and C(.txt) here (not in check mode).
    type: path
  lock_timeout:
    description: Seconds to wait for the repository lock while another run holds it.
    type: int
    default: 600
extends_documentation_fragment:
  - nixfleet.sops.identities
attributes:
  check_mode:
    support: full
    description: Reports the whole revocation and its blast radius; writes nothing (no report files either).
  diff_mode:
    support: full
    description: Shows the C(.sops.yaml) change and the recipients (and data keys) each file loses.
  idempotent:
    support: full
    description: A host already revoked has no anchor left; a second run changes nothing.
seealso:
  - module: nixfleet.sops.sops_rotate_keys
  - module: nixfleet.sops.sops_rekey
  - module: nixfleet.sops.sops_rotate
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: Revoke a stolen laptop
  nixfleet.sops.sops_revoke:
    repo: ../nix-secrets
    host: griefling
    report_dir: "{{ playbook_dir }}"
  delegate_to: localhost
  register: revoked
"""

RETURN = r"""
anchors:
  description: The anchors removed, with their recipients.
  returned: always
  type: dict
rules_removed:
  description: The host's own creation rules removed (their path_regex).
  returned: always
  type: list
  elements: str
own_files:
  description: The host's own files and what became of them (C(path), C(action), C(to)).
  returned: always
  type: list
  elements: dict
touched:
  description: Paths (relative to O(repo)) written or removed, or that would be; commit exactly these.
  returned: always
  type: list
  elements: str
rotated:
  description: Files rekeyed with a new data key (every file the host could read).
  returned: always
  type: list
  elements: str
changes:
  description: Per file, the recipients removed (named by anchor) and the data-key rotation.
  returned: always
  type: list
  elements: dict
deploy_keys:
  description: The host's deploy public keys, to delete at the forge (C(name), C(public_key)).
  returned: always
  type: list
  elements: dict
exposure:
  description:
    - Every file the host could read now or at any commit - C(path), C(first_commit), C(readable_now), and
      C(key_paths) (each C(key) with the first commit at which it was readable). Change these at their source.
  returned: always
  type: list
  elements: dict
report:
  description: The text report, line by line.
  returned: always
  type: list
  elements: str
report_paths:
  description: The JSON and text report files written (with O(report_dir)).
  returned: always
  type: list
  elements: str
"""

from contextlib import nullcontext

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nixfleet.sops.plugins.module_utils import fleet, revoke
from ansible_collections.nixfleet.sops.plugins.module_utils.fsutil import check_output_dir, repo_lock
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
            user=dict(type="str"),
            own_files=dict(type="str", choices=["remove", "archive"], default="remove"),
            archive_dir=dict(type="str", default=".nixfleet/archive"),
            report_dir=dict(type="path"),
            lock_timeout=dict(type="int", default=600),
            **IDENTITY_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params

    def work() -> tuple[revoke.RevokeResult, list[str]]:
        spec = revoke.RevokeSpec(host=p["host"], user=p["user"], own_files=p["own_files"],
                                 archive_dir=p["archive_dir"])
        if p["report_dir"]:
            check_output_dir(p["report_dir"], "the revocation report")
        ids = fleet.collect_identities(**identity_options(p, module.warn))
        lock = repo_lock(p["repo"], purpose=f"sops_revoke {spec.host}", require=".sops.yaml", wait=p["lock_timeout"])
        with lock if not module.check_mode else nullcontext():
            res = revoke.revoke(p["repo"], spec, ids, module.check_mode)
        # A second run (nothing left to revoke) keeps the first run's report.
        write = p["report_dir"] and res.changed and not module.check_mode
        written = revoke.write_report(res, p["report_dir"]) if write else []
        return res, written

    res, written = run_guarded(module, work, host=p["host"])
    for warning in res.warnings:
        module.warn(warning)
    out = dict(res.as_dict(), report=revoke.report_text(res).splitlines(), report_paths=written)
    if module._diff and res.changed:
        out["diff"] = [{"before": res.config_before, "after": res.config_after,
                        "before_header": f"{p['repo']}/.sops.yaml", "after_header": f"{p['repo']}/.sops.yaml"},
                       fleet.changes_diff(res.changes, p["repo"])]
    module.exit_json(**out)


if __name__ == "__main__":
    main()
