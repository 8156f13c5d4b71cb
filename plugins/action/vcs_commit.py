# Copyright: nixfleet.sops contributors
# MIT License
"""Action plugin of nixfleet.sops.vcs_commit: accepts the option's old name ``message``.

``message`` is an argument name Ansible reserves for itself (validate-modules refuses it in a module's
argument_spec), so the module takes ``commit_message``. Playbooks written for earlier versions still pass
``message``: it is renamed here, on the controller, with a deprecation warning, before the module runs.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

OLD = "message"
NEW = "commit_message"


class ActionModule(ActionBase):
    """Rename ``message`` to ``commit_message``; everything else goes through unchanged."""

    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        if OLD in args:
            if NEW in args:
                return dict(result, failed=True,
                            msg=f"vcs_commit: give only {NEW} (the option's name); {OLD} is its deprecated old name")
            Display().deprecated(
                f"nixfleet.sops.vcs_commit: the option {OLD!r} is renamed {NEW!r} ({OLD!r} is reserved by Ansible)",
                version="1.0.0", collection_name="nixfleet.sops")
            args[NEW] = args.pop(OLD)
        result.update(self._execute_module(module_name="nixfleet.sops.vcs_commit", module_args=args,
                                           task_vars=task_vars))
        return result
