#!/usr/bin/python
# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
module: sops_audit
short_description: Audit a secrets repository — who can decrypt what, and what is out of place
version_added: "0.1.0"
description:
  - Reads C(.sops.yaml), the sops metadata of every file (never a value) and the key inventory
    (C(.nixfleet/keys.yaml)). Needs no identity.
  - "Reports: the access matrix (file x anchor); drift between files and their creation rules; sops files
    no rule matches; anchors no rule uses; recipients in files that C(.sops.yaml) does not know; raw
    C(ssh-ed25519) recipients (sops-nix's converted host keys cannot open those); plaintext files under the
    secrets directory; inventory hosts without an anchor; keys older than the policy; break-glass coverage;
    recipients held by two anchors (both are credited: revoking one leaves the key working through the other);
    and the findings of C(.sops.yaml) validation (duplicate anchors, aliases to nothing, invalid recipients,
    unused rules)."
  - Each finding has an id, a severity, a message naming the file, anchor or host, the fix, and the row of the
    report it belongs to.
  - Optionally writes a JSON report (O(report_json)) and a self-contained HTML report (O(report_path)) for a fleet,
    with hosts grouped by inventory group (O(host_groups)), counts per group and severity, a filter, key ages
    from the key inventory and every finding linked to its host or file.
requirements:
  - cryptography >= 42
  - pyrage >= 1.2
  - ruamel.yaml >= 0.18
  - google-re2 >= 1.1
  - PyYAML
  - bcrypt >= 4 (passphrase-protected OpenSSH keys)
options:
  repo:
    description: The secrets repository (the directory holding C(.sops.yaml)).
    type: path
    required: true
    aliases: [secrets_repo]
  hosts:
    description: Inventory host names that should each have an anchor (enables the host-without-key check).
    type: list
    elements: str
    default: []
  max_age_days:
    description: Key-age policy, maximum age in days per kind (host, user, deploy, break-glass, admin).
    type: dict
    default: {}
  secrets_dirs:
    description: Directories (relative to O(repo)) where every file must be sops-encrypted.
    type: list
    elements: str
    default: [sops]
  break_glass_anchor:
    description: Anchor of the break-glass recipient; default is an anchor named C(break-glass) if present.
    type: str
  drill_max_age_days:
    description: A break-glass key whose last drill (C(playbooks/break_glass.yml --tags test)) is older is a finding.
    type: int
    default: 365
  host_groups:
    description:
      - Inventory host -> its groups (the hosts' C(group_names)), for grouping the reports; hosts that are
        only anchors of kind host are listed as C(ungrouped).
    type: dict
    default: {}
  report_path:
    description:
      - Write the HTML report here, one self-contained file (inline style and script, no network).
      - No timestamps in it, so an unchanged audit writes nothing (key ages change once a day).
    type: path
    aliases: [report_html]
  report_json:
    description:
      - Write the JSON report here (schema C(nixfleet.sops/audit-report/1)) with C(summary), C(hosts),
        C(files), C(anchors), C(duplicate_recipients) and C(findings); public data only.
    type: path
  fail_on:
    description: Fail the task when there are findings of at least this severity.
    type: str
    choices: [never, error, warning]
    default: never
attributes:
  check_mode:
    support: full
    description: The audit only reads; in check mode the reports are not written, and C(changed) says whether they
      would be.
  diff_mode:
    support: none
    description: Nothing is changed; the findings are the result.
  idempotent:
    support: full
    description: Read-only, apart from the reports, which are rewritten only when their content changes.
seealso:
  - module: nixfleet.sops.sops_key_inventory
  - module: nixfleet.sops.sops_access
  - module: nixfleet.sops.sops_rotate_keys
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: Audit the fleet's secrets
  nixfleet.sops.sops_audit:
    repo: "{{ nixfleet_secrets_repo }}"
    hosts: "{{ groups['nixos'] }}"
    max_age_days: {host: 365, user: 365, deploy: 180}
    host_groups: "{{ dict(groups['nixos'] | zip(groups['nixos'] | map('extract', hostvars, 'group_names'))) }}"
    report_path: ./nixfleet-audit.html
    report_json: ./nixfleet-audit.json
  register: audit
"""

RETURN = r"""
findings:
  description:
    - Each finding with C(id), C(kind), C(severity), C(message), C(fix), where it is (C(path), C(anchor), C(line),
      C(host), C(recipient)) and C(target), the id of its row in the reports.
  returned: always
  type: list
  elements: dict
matrix:
  description: C(files), C(anchors) and C(access) (file -> anchors that can decrypt it).
  returned: always
  type: dict
report:
  description: The matrix and the findings as lines of text, for task output.
  returned: always
  type: list
  elements: str
report_path:
  description: Where the HTML report was written (null when not asked for).
  returned: always
  type: str
report_json:
  description: Where the JSON report was written (null when not asked for).
  returned: always
  type: str
summary:
  description:
    - Fleet counts, as in the JSON report - hosts, hosts_with_findings, files, anchors, findings, errors, warnings,
      duplicate_recipients, keys_overdue, by_kind, and by_group (hosts, hosts_with_findings, error, warning).
  returned: always
  type: dict
duplicate_recipients:
  description: Recipients held by more than one anchor - C(recipient) and C(anchors).
  returned: always
  type: list
  elements: dict
counts:
  description: Numbers of files, anchors, errors and warnings.
  returned: always
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nixfleet.sops.plugins.module_utils import audit, audit_html, audit_report
from ansible_collections.nixfleet.sops.plugins.module_utils.module_support import run_guarded


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            repo=dict(type="path", required=True, aliases=["secrets_repo"]),
            hosts=dict(type="list", elements="str", default=[]),
            max_age_days=dict(type="dict", default={}),
            secrets_dirs=dict(type="list", elements="str", default=["sops"], no_log=False),
            break_glass_anchor=dict(type="str"),
            drill_max_age_days=dict(type="int", default=365),
            host_groups=dict(type="dict", default={}),
            report_path=dict(type="path", aliases=["report_html"]),
            report_json=dict(type="path"),
            fail_on=dict(type="str", choices=["never", "error", "warning"], default="never"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["report_json"] and p["report_path"] and os.path.abspath(p["report_json"]) == os.path.abspath(p["report_path"]):
        module.fail_json(msg=f"report_json and report_path are both {p['report_json']}: give the reports two paths")

    def work():
        res = audit.run(p["repo"], p["hosts"], p["max_age_days"], tuple(p["secrets_dirs"]), p["break_glass_anchor"],
                        p["drill_max_age_days"], host_groups=p["host_groups"])
        data = audit_report.build(res, f"nixfleet.sops audit of {p['repo']}")
        reports = [(p["report_json"], audit_report.to_json(data))] if p["report_json"] else []
        reports += [(p["report_path"], audit_html.render(data))] if p["report_path"] else []
        return res, data, audit_report.write(reports, module.check_mode)

    res, data, changed = run_guarded(module, work)
    out = dict(changed=changed, report=audit.text_table(res), report_path=p["report_path"],
               report_json=p["report_json"], **res.as_dict())
    out.update(findings=data["findings"], summary=data["summary"])
    levels = {"error": ("error",), "warning": ("error", "warning")}.get(p["fail_on"], ())
    bad = [f for f in res.findings if f["severity"] in levels]
    if bad:
        module.fail_json(msg=f"audit of {p['repo']}: {len(bad)} findings at or above {p['fail_on']}: "
                         + "; ".join(f["message"] for f in bad[:10]), **out)
    module.exit_json(**out)


if __name__ == "__main__":
    main()
