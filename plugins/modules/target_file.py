#!/usr/bin/python
# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
module: target_file
short_description: Place a key file or a directory on a host without ever following a symlink
version_added: "0.1.0"
description:
  - Runs on the target with Python's standard library only (NixOS hosts have nothing from PyPI).
  - Makes O(path) under O(root) a directory (O(state=directory)) or a file (O(state=file)) with the given mode,
    owner and group, and for a file the given content. Made for key material in directories a user controls,
    where M(ansible.builtin.file) and M(ansible.builtin.copy) would follow a symlink the user planted (a
    C(~/.config) pointing at C(/etc) would get C(/etc) chowned to the user).
  - Every path component below O(root) is opened relative to its parent's descriptor with C(O_NOFOLLOW);
    a component that is a symlink is refused. Inside a directory a user controls (owned by someone other than
    root and the user running the module, or writable by group or others) every existing component must
    already belong to the expected owner (O(owner), else the user running the module), and the path never
    passes through a directory of a third user. A refusal fails the task naming the path; nothing is changed.
  - Owner, group and mode are only set with C(fchown)/C(fchmod) on descriptors the module opened. A new
    directory gets O(mode) explicitly (the umask plays no part). File content is written to a temp file in the
    same directory, fsynced and renamed into place; a file with other hard links is replaced, never chowned
    in place.
  - Missing parent directories are not created; place them first (parents before children), each with its
    own mode and owner.
  - Content reaches the module C(no_log) - from O(src) on the controller (read by the action plugin) or
    O(content) - and is never returned, logged or shown in a diff.
options:
  path:
    description: The path on the host (absolute, below O(root)); no C(.) or C(..) components.
    type: str
    required: true
  root:
    description:
      - Prefix the path is placed under (V(/) on a real host; a directory for an offline tree or the demo).
        The root itself must exist and is trusted as given.
    type: str
    default: /
  state:
    description: What O(path) should be.
    type: str
    choices: [file, directory]
    default: file
  mode:
    description: The mode, in octal (V(0600), V(0700)). Always explicit.
    type: raw
    required: true
  owner:
    description:
      - User name or uid that owns O(path). Omitted, a new object belongs to the user running the module and
        an existing one keeps its owner.
    type: str
  group:
    description: Group name or gid of O(path). Omitted, like O(owner).
    type: str
  src:
    description:
      - A file on the controller whose content to place (O(state=file)). Read by the action plugin, so the
        content never passes through templating or variables.
      - Mutually exclusive with O(content). Without either, O(state=file) sets the owner and mode of an
        existing file only.
    type: path
  content:
    description: The content to place (O(state=file)), at most 1 MiB. Never logged.
    type: str
attributes:
  action:
    support: full
    description: The action plugin reads O(src) on the controller and passes its content to the module.
  check_mode:
    support: full
    description: Every check runs; C(changed) is what a real run would report; nothing is written.
  diff_mode:
    support: full
    description: The diff shows path, state, mode, owner and group; content only as C((replaced, not shown)).
  idempotent:
    support: full
    description: A second run with the same arguments reports C(changed=false).
  platform:
    platforms: posix
    support: full
    description: POSIX hosts (file modes, owners and O_NOFOLLOW).
notes:
  - Refused, with a message naming the path - a symlink anywhere below O(root); an existing component owned by
    someone other than the expected owner inside a directory a user controls; a FIFO, device or directory
    where a file should be; a hard-linked file whose owner or mode would change without O(content).
seealso:
  - module: ansible.builtin.copy
  - module: ansible.builtin.file
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: The user's key directories, the user's own (0700)
  nixfleet.sops.target_file:
    path: "/home/rain/{{ item }}"
    state: directory
    owner: rain
    group: users
    mode: "0700"
  loop: [.config, .config/sops, .config/sops/age]

- name: The user's age key, from the staged tree on the controller
  nixfleet.sops.target_file:
    path: /home/rain/.config/sops/age/keys.txt
    src: "{{ staging_dir }}/home/rain/.config/sops/age/keys.txt"
    owner: rain
    group: users
    mode: "0600"
  no_log: true

- name: Only owner and mode of an existing file
  nixfleet.sops.target_file:
    path: /home/rain/.config/sops/age/keys.txt
    owner: rain
    mode: "0600"
"""

RETURN = r"""
path:
  description: The path on the host.
  returned: always
  type: str
state:
  description: What the path is now.
  returned: success
  type: str
mode:
  description: Its mode.
  returned: success
  type: str
  sample: "0600"
owner:
  description: Its owner (name when the host knows it).
  returned: success
  type: str
group:
  description: Its group (name when the host knows it).
  returned: success
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.nixfleet.sops.plugins.module_utils.module_support import run_guarded
from ansible_collections.nixfleet.sops.plugins.module_utils.target_file import (
    Spec,
    TargetFileError,
    gid_of,
    parse_mode,
    place,
    uid_of,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="str", required=True),
            root=dict(type="str", default="/"),
            state=dict(type="str", choices=["file", "directory"], default="file"),
            mode=dict(type="raw", required=True),
            owner=dict(type="str"),
            group=dict(type="str"),
            src=dict(type="path"),
            content=dict(type="str", no_log=True),
        ),
        mutually_exclusive=[("src", "content")],
        supports_check_mode=True,
    )
    p = module.params

    def work():
        if p["src"] is not None:  # the action plugin turns src into content; only a bypass lands here
            raise TargetFileError("src is read on the controller by the nixfleet.sops.target_file action plugin")
        content = p["content"].encode("utf-8") if p["content"] is not None else None
        spec = Spec(path=p["path"], state=p["state"], mode=parse_mode(p["mode"]), owner=uid_of(p["owner"]),
                    group=gid_of(p["group"]), content=content)
        return place(p["root"], spec, check_mode=module.check_mode)

    res = run_guarded(module, work, prefix=p["path"])
    for warning in res.warnings:
        module.warn(warning)
    out = dict(changed=res.changed, path=p["path"], **{k: v for k, v in res.after.items() if k != "path"})
    out.pop("content", None)
    if module._diff:
        out["diff"] = {"before": res.before, "after": res.after}
    module.exit_json(**out)


if __name__ == "__main__":
    main()
