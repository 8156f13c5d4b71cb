# Copyright: nixfleet.sops contributors
# MIT License
"""Action plugin of nixfleet.sops.vcs_commit: accepts the option's old name ``message``.

``message`` is an argument name Ansible reserves for itself (validate-modules refuses it in a module's
argument_spec), so the module takes ``commit_message``. Playbooks written for earlier versions still pass
``message``: it is renamed here, on the controller, with a deprecation warning, before the module runs.
"""

from __future__ import annotations

from ansible.utils.display import Display
from ansible_collections.nixfleet.sops.plugins.plugin_utils.controller_module import ControllerModuleAction

OLD = "message"
NEW = "commit_message"


class ActionModule(ControllerModuleAction):
    """Rename ``message`` to ``commit_message``; everything else goes through unchanged (and, on the
    controller, without AnsiballZ: see plugins/plugin_utils/controller_module.py)."""

    def module_args(self):
        args = dict(self._task.args)
        if OLD in args:
            if NEW in args:
                return args, f"vcs_commit: give only {NEW} (the option's name); {OLD} is its deprecated old name"
            Display().deprecated(
                f"nixfleet.sops.vcs_commit: the option {OLD!r} is renamed {NEW!r} ({OLD!r} is reserved by Ansible)",
                version="1.0.0", collection_name="nixfleet.sops")
            args[NEW] = args.pop(OLD)
        return args, None
