#!/usr/bin/python
# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
module: sops_break_glass
short_description: Break-glass recovery key - generate on paper, register, drill, recover
version_added: "0.1.0"
description:
  - One offline age key that opens every sops file of the fleet, kept on paper (or as SLIP-39 shares)
    and nowhere else. O(action) picks the step; C(playbooks/break_glass.yml) runs them by tag.
  - V(generate) (on the offline machine) makes a new X25519 identity and writes only its printable
    page(s) into O(output_dir) (created 0700; a directory others can write is refused), files 0600 - HTML
    with print styles, the key as a QR code and as lines of four-character groups, each line with a
    checksum a person can check with C(sha256sum). With O(shares) and O(threshold) the key is split into
    SLIP-39 mnemonic shares (one group, no passphrase), one page per share, and no page holds the whole
    key. Returns the recipient only. When pages of O(fleet) are already in O(output_dir) nothing is made
    and their recipient is returned (move them away to make a new key).
  - V(register) (on the admin machine, with the recipient only) puts C(&break_glass) in its own
    commented section of C(keys:) (a C(recovery) group; in a flat list, its own commented entry), makes
    it a member of every key group of every creation rule, rekeys every file (opened with the admin's
    identities) and records the key in the key inventory. A new recipient for an existing break-glass
    anchor replaces the old key everywhere.
  - V(test) is the drill. The key (O(break_glass_key)) or O(break_glass_shares) must open the data key of
    every sops file; only data keys are opened, in memory, no value is decrypted and nothing decrypted is
    written. Then the drill date is recorded in the key inventory. Files the key cannot open are listed
    and fail the drill; a wrong key, or fewer shares than needed, is refused with nothing recorded.
  - V(recover) (the day every admin key is lost) opens every file with the break-glass key alone,
    registers a new admin key as O(admin_anchor) in every rule and rekeys every file to it. The new key
    is generated into O(admin_key_file) (0600, never shown) unless that file exists (then its key is used)
    or O(admin_recipient) is given.
requirements:
  - PyYAML
  - segno >= 1.5 (paper backup)
  - shamir-mnemonic >= 0.3 (shares)
options:
  action:
    description: The step to run.
    type: str
    required: true
    choices: [generate, register, test, recover]
  repo:
    description: The secrets repository (the directory holding C(.sops.yaml)). Not used by V(generate).
    type: path
    aliases: [secrets_repo]
  output_dir:
    description: V(generate) - directory for the printable page(s); created 0700 when missing.
    type: path
  fleet:
    description: V(generate) - the fleet's name, printed on the page(s) and naming the files.
    type: str
    default: fleet
  shares:
    description: V(generate) - split the key into this many SLIP-39 shares (2-16), with O(threshold).
    type: int
  threshold:
    description: V(generate) - how many of the O(shares) recover the key (2 to O(shares)).
    type: int
  recipient:
    description: V(register) - the break-glass recipient (C(age1...)) that V(generate) printed.
    type: str
  anchor:
    description:
      - V(register), V(test) - the anchor of the break-glass key. Default - the one already in
        C(.sops.yaml) (the key inventory's break-glass entry, C(&break_glass) or C(&break-glass)), else
        C(break_glass).
    type: str
  break_glass_key:
    description:
      - V(test), V(recover) - the break-glass key as typed from the page (its lines, each optionally with
        its number and checksum, one per line or separated by C(/)) or as scanned from its QR code
        (C(AGE-SECRET-KEY-1...)). Never logged.
    type: str
  break_glass_shares:
    description:
      - V(test), V(recover) - SLIP-39 shares as typed, one string per share (the first four letters of a
        word are enough). Never logged.
    type: list
    elements: str
  admin_anchor:
    description: V(recover) - the anchor of the new admin key.
    type: str
    default: admin
  admin_key_file:
    description:
      - V(recover) - where the new admin identity is written (an age key file, 0600, in a directory only you
        can write, created 0700), for example C(~/.config/sops/age/keys.txt). When the file exists its key
        is used instead of a new one.
    type: path
  admin_recipient:
    description: V(recover) - register this existing recipient as the new admin key instead of generating one.
    type: str
  replace:
    description:
      - V(recover) - V(true) puts the new key into the existing O(admin_anchor) (the lost key leaves every
        rule); V(false) adds O(admin_anchor) as a new anchor beside the lost one (it must be a new name).
    type: bool
    default: true
  admin_group:
    description: V(recover) - group of C(keys:) for a new O(admin_anchor).
    type: str
    default: users
  lock_timeout:
    description: Seconds to wait for the repository lock when another run holds it.
    type: int
    default: 60
extends_documentation_fragment:
  - nixfleet.sops.identities
notes:
  - The identity options (O(identity_files), O(age_keys), ...) open the files for V(register) (the admin's
    keys). V(test) and V(recover) use only the break-glass key.
  - Run it with pipelining (C(ansible_pipelining=true), as the playbook does) so the module and its
    arguments are never written to a temporary file.
attributes:
  check_mode:
    support: full
    description: Says what would be generated, registered, rekeyed or recorded; writes nothing and makes no key.
  diff_mode:
    support: full
    description: V(register) and V(recover) show the C(.sops.yaml) change and the recipients per file.
  idempotent:
    support: full
    description: A second run finds the pages, the anchor, the rules and the files in step and changes nothing.
seealso:
  - module: nixfleet.sops.sops_recipient
  - module: nixfleet.sops.sops_rekey
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: Generate the key as 3-of-5 shares (offline machine)
  nixfleet.sops.sops_break_glass:
    action: generate
    output_dir: /media/usb/break-glass
    fleet: home
    shares: 5
    threshold: 3
  register: generated

- name: Register its recipient (admin machine)
  nixfleet.sops.sops_break_glass:
    action: register
    repo: "{{ nixfleet_secrets_repo }}"
    recipient: age1...

- name: Drill with three shares typed in
  nixfleet.sops.sops_break_glass:
    action: test
    repo: "{{ nixfleet_secrets_repo }}"
    break_glass_shares: "{{ typed_shares }}"
"""

RETURN = r"""
recipient:
  description: The break-glass recipient (generate, register, test), or the new admin recipient (recover).
  returned: when known
  type: str
pages:
  description: V(generate) - the page files written (or that would be).
  returned: action=generate
  type: list
  elements: str
anchor:
  description: The anchor registered, drilled, or of the new admin key.
  returned: action != generate
  type: str
changed_files:
  description: Files rekeyed (register, recover), relative to O(repo).
  returned: action in (register, recover)
  type: list
  elements: str
changes:
  description: Per rekeyed file, the recipients added and removed.
  returned: action in (register, recover)
  type: list
  elements: dict
touched:
  description: Every path written (C(.sops.yaml), rekeyed files, the key inventory) - what to commit.
  returned: action in (register, test, recover)
  type: list
  elements: str
opened:
  description: V(test) - the files whose data key the break-glass key opened; V(recover) - how many the new key opens.
  returned: action in (test, recover)
  type: raw
drilled:
  description: V(test) - the drill date recorded.
  returned: action=test
  type: str
not_opened:
  description: V(recover) - sops files the new admin key cannot open (no creation rule covers them).
  returned: action=recover
  type: list
  elements: dict
msg:
  description: One line saying what was done.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nixfleet.sops.plugins.module_utils import breakglass, fleet, keyinventory
from ansible_collections.nixfleet.sops.plugins.module_utils.module_support import (
    IDENTITY_ARGS,
    identity_options,
    run_guarded,
)

NEEDS = {"generate": ["output_dir"], "register": ["repo", "recipient"], "test": ["repo"], "recover": ["repo"]}


def _generate(module, p):
    res = breakglass.generate(p["output_dir"], p["fleet"], p["shares"], p["threshold"], module.check_mode)
    split = f" as {res.threshold}-of-{res.shares} shares" if res.shares else ""
    if not res.changed:
        msg = f"pages of fleet {p['fleet']} already in {p['output_dir']}: nothing generated"
    elif module.check_mode:
        msg = f"a new break-glass key would be generated{split} into {len(res.pages)} page(s)"
    else:
        msg = f"break-glass key generated{split}: {len(res.pages)} page(s) to print, then delete"
    return dict(changed=res.changed, recipient=res.recipient, pages=res.pages, shares=res.shares,
                threshold=res.threshold, msg=msg)


def _repo_result(module, res, p):
    out = dict(changed=res.changed, anchor=res.anchor, recipient=res.recipient, touched=res.touched,
               changed_files=res.changed_files, changes=res.changes, msg=res.msg)
    if p["action"] == "recover":
        out.update(opened=res.opened, not_opened=res.not_opened)
        for f in res.not_opened:
            module.warn(f"the new admin key cannot open {f['path']}: {f['error']}")
    if module._diff:
        out["diff"] = [
            {"before": res.config_before, "after": res.config_after or res.config_before,
             "before_header": ".sops.yaml", "after_header": ".sops.yaml"},
            fleet.changes_diff(res.changes, p["repo"]),
        ]
    return out


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", required=True, choices=["generate", "register", "test", "recover"]),
            repo=dict(type="path", aliases=["secrets_repo"]),
            output_dir=dict(type="path"),
            fleet=dict(type="str", default="fleet"),
            shares=dict(type="int"),
            threshold=dict(type="int"),
            recipient=dict(type="str"),
            anchor=dict(type="str"),
            break_glass_key=dict(type="str", no_log=True),
            break_glass_shares=dict(type="list", elements="str", no_log=True),
            admin_anchor=dict(type="str", default="admin"),
            admin_key_file=dict(type="path", no_log=False),
            admin_recipient=dict(type="str"),
            replace=dict(type="bool", default=True),
            admin_group=dict(type="str", default="users"),
            lock_timeout=dict(type="int", default=60),
            **IDENTITY_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    missing = [n for n in NEEDS[p["action"]] if not p[n]]
    if missing:
        module.fail_json(msg=f"action={p['action']} needs {', '.join(missing)}")
    wait = max(p["lock_timeout"], 0)

    def work():
        if p["action"] == "generate":
            return _generate(module, p)
        if p["action"] == "register":
            ids = fleet.collect_identities(**identity_options(p, module.warn))
            res = breakglass.register(p["repo"], p["recipient"], ids, p["anchor"], module.check_mode, wait)
            return _repo_result(module, res, p)
        key = breakglass.key_from_input(p["break_glass_key"], p["break_glass_shares"])
        if p["action"] == "test":
            res = breakglass.drill(p["repo"], key, p["anchor"], module.check_mode, lock_timeout=wait)
            touched = [keyinventory.INVENTORY_PATH] if res.changed else []
            return dict(changed=res.changed, anchor=res.anchor, recipient=res.recipient, opened=res.opened,
                        drilled=res.drilled, touched=touched, msg=res.msg)
        res = breakglass.recover(p["repo"], key, p["admin_anchor"], p["admin_key_file"], p["admin_recipient"],
                                 p["replace"], p["admin_group"], module.check_mode, wait)
        return _repo_result(module, res, p)

    module.exit_json(**run_guarded(module, work))


if __name__ == "__main__":
    main()
