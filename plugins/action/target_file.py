# Copyright: nixfleet.sops contributors
# MIT License
"""Action plugin of nixfleet.sops.target_file: reads ``src`` on the controller and hands the content over.

Why an action plugin rather than asking roles for ``content``: the key bytes go
straight from the staged file into the module's ``no_log`` argument, never
through Jinja templating, a variable, a fact or a lookup (``lookup('file')``
would also strip the trailing newline), and nothing is staged in a temp file on
the target besides the module itself.
"""

from __future__ import annotations

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase
from ansible_collections.nixfleet.sops.plugins.module_utils.action_support import MaskedArgs

MAX_SRC = 1024 * 1024  # as the module's content limit


class ActionModule(ActionBase):
    """Turn ``src`` (a controller file) into the module's ``content``; everything else goes through unchanged."""

    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        src = args.pop("src", None)
        if src is not None:
            if "content" in args:
                return dict(result, failed=True, msg="src and content are mutually exclusive")
            try:
                path = self._find_needle("files", src)
                with open(path, "rb") as fh:
                    data = fh.read(MAX_SRC + 1)
            except (AnsibleError, OSError) as exc:
                return dict(result, failed=True, msg=f"{src}: cannot read it on the controller ({exc})")
            if len(data) > MAX_SRC:
                return dict(result, failed=True, msg=f"{src}: larger than {MAX_SRC} bytes; not a key file")
            try:
                args["content"] = data.decode("utf-8")
            except UnicodeDecodeError:
                return dict(result, failed=True, msg=f"{src}: not UTF-8 text; not a key file")
        # Ansible's debug mode prints module arguments, no_log ones too: the content is masked there.
        result.update(self._execute_module(module_name="nixfleet.sops.target_file",
                                           module_args=MaskedArgs(args, ("content",)), task_vars=task_vars))
        return result
