# Copyright: nixfleet.sops contributors
# MIT License
"""Run the collection's controller-side modules without AnsiballZ when their task runs on the controller.

The repository modules (``sops_rekey``, ``sops_access``, ``sops_recipient``, …) work on the secrets
repository on the controller: their tasks run on ``localhost`` or are delegated to it. Through
AnsiballZ, every such task pays for packing the module and its module_utils into a zip (Ansible
re-reads and parses each imported file with ``ast`` once per run), a new interpreter, and importing
~10,000 lines from the zip without byte-code caches: 1.5-2 s per task on a 2-core machine, most of a
no-op fleet rekey.

When the task's connection is ``local``, without ``become`` and not ``async``, this runs the same
module — its ``main()``, argument spec, check mode, ``no_log`` and exit path — in a child forked from
Ansible's worker process, and returns its result exactly as Ansible's own module execution does
(same decoder, same removal of internal keys). The child keeps what a separate module process gave:
a module that dies (out of memory, SIGKILL) fails the task with the signal named instead of taking
the worker with it, and nothing it changed in its process leaks into Ansible's.

Any other case (a remote connection, ``become``, ``async``, or ``nixfleet_in_process: false`` for
debugging with ``ANSIBLE_KEEP_REMOTE_FILES``) goes through Ansible's normal module execution. The
Python that runs the module is then the controller's own (the one running Ansible), which is where
the collection's requirements (pyrage, ruamel.yaml, cryptography) are installed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.util
import io
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from ansible.module_utils import _internal as module_internal
from ansible.module_utils import basic
from ansible.module_utils.common import warnings as module_warnings
from ansible.module_utils.common.json import Direction, get_module_encoder
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible.vars.clean import remove_internal_keys

PROFILE = "legacy"  # the serialization profile AnsiballZ uses for these modules
OPT_OUT = "nixfleet_in_process"
_PACKAGE = "ansible_collections.nixfleet.sops."
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the collection's directory


class ByteCodeFinder(importlib.abc.MetaPathFinder):
    """Import this collection's modules and module_utils with Python's own file loader.

    Ansible's collection loader compiles every file from source on every
    import and never keeps byte-code; a repository module imports about
    17,000 lines of module_utils, which cost 0.12-0.22 s of every task on a
    2-core machine. Python's loader reads (and, where allowed, writes) the
    compiled byte-code in ``__pycache__``, as for any installed package. Only
    plain files of this collection are taken; packages without an
    ``__init__.py`` and everything else stay with Ansible's loader.
    """

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if not fullname.startswith((_PACKAGE + "plugins.module_utils.", _PACKAGE + "plugins.modules.")):
            return None
        where = os.path.join(_ROOT, *fullname[len(_PACKAGE):].split("."))
        if os.path.isfile(where + ".py"):
            return importlib.util.spec_from_file_location(fullname, where + ".py")
        init = os.path.join(where, "__init__.py")
        if os.path.isfile(init):
            return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[where])
        return None


def import_module(name: str) -> Any:
    """``plugins/modules/<name>`` of this collection, imported with byte-code (ByteCodeFinder)."""
    if not any(isinstance(f, ByteCodeFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, ByteCodeFinder())
    return importlib.import_module(_PACKAGE + "plugins.modules." + name)


def call_main(fn: Callable[[], None]) -> tuple[int, str, str]:
    """Run ``fn`` (a module's ``main``) as its own process would end: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            fn()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def _reported(fn: Callable[[], None]) -> None:
    """``fn``, with an exception reported as AnsiballZ's wrapper reports a module that raised."""
    try:
        fn()
    except Exception as exc:  # pylint: disable=broad-except
        print(json.dumps({"failed": True, "msg": f"MODULE FAILURE: {type(exc).__name__}: {exc}"}))
        raise SystemExit(1) from None


def run_forked(fn: Callable[[], None]) -> dict[str, Any]:
    """Run ``fn`` (a module's ``main``) in a forked child; return ``rc``, ``stdout``, ``stderr`` and
    ``signal`` (the signal that ended the child, or None) as a module process would give them."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, send what it printed, and leave without the worker's exit handlers
        os.close(read_fd)
        # A module process starts with Python's own handlers; the worker's would kill the worker instead of
        # letting the module clean up after Ctrl-C (KeyboardInterrupt) as it does.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            code, out, err = call_main(lambda: _reported(fn))
            payload = json.dumps({"rc": code, "stdout": out, "stderr": err}).encode()
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(payload)
        finally:
            os._exit(0)  # pylint: disable=protected-access
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        payload = pipe.read()
    _unused, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return {"rc": -sig, "stdout": "", "stderr": "", "signal": signal.Signals(sig).name}
    if not payload:
        return {"rc": os.waitstatus_to_exitcode(status), "stdout": "", "stderr": "", "signal": None}
    return dict(json.loads(payload), signal=None)


class ControllerModuleAction(ActionBase):
    """Action plugin of a controller-side module: runs it in-process (forked) when the task is local."""

    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args, error = self.module_args()
        if error:
            return dict(result, failed=True, msg=error)
        result.update(self.run_module(args, task_vars or {}))
        return result

    def module_args(self) -> tuple[dict[str, Any], str | None]:
        """The module's arguments, or an error message; a subclass may rename or check options here."""
        return dict(self._task.args), None

    @property
    def module_name(self) -> str:
        """The module's short name: this action plugin's file name."""
        return type(self).__module__.rsplit(".", 1)[-1]

    @property
    def module_fqcn(self) -> str:
        return "nixfleet.sops." + self.module_name

    def runs_here(self, task_vars: dict[str, Any]) -> bool:
        """True when Ansible would run the module on this machine, as this user, and wait for it."""
        if not boolean(self._templar.template(task_vars.get(OPT_OUT, True)), strict=False):
            return False
        return (getattr(self._connection, "transport", None) == "local" and not self._play_context.become
                and not self._task.async_val)

    def run_module(self, args: dict[str, Any], task_vars: dict[str, Any]) -> dict[str, Any]:
        if not self.runs_here(task_vars):
            return self._execute_module(module_name=self.module_fqcn, module_args=args, task_vars=task_vars)
        self._update_module_args(self.module_fqcn, args, task_vars)
        environment: dict[str, str] = {}
        self._compute_environment_string(environment)
        module = import_module(self.module_name)
        encoder = get_module_encoder(PROFILE, Direction.CONTROLLER_TO_MODULE)
        params = json.dumps({"ANSIBLE_MODULE_ARGS": args}, cls=encoder).encode()

        def main() -> None:
            # Only the child changes these: the worker (and Ansible) keep theirs. Ansible's module_utils behave
            # as in a module process (warnings returned with the result, not printed by the controller).
            module_internal.is_controller = False
            os.environ.update({k: str(v) for k, v in environment.items()})
            basic._ANSIBLE_ARGS = params  # pylint: disable=protected-access
            basic._ANSIBLE_PROFILE = PROFILE  # pylint: disable=protected-access
            module_warnings._global_warnings.clear()  # pylint: disable=protected-access
            module_warnings._global_deprecations.clear()  # pylint: disable=protected-access
            module.main()

        res = run_forked(main)
        if res["signal"]:
            return {"failed": True, "rc": res["rc"],
                    "msg": f"MODULE FAILURE: {self.module_fqcn} was killed by {res['signal']} "
                           "(out of memory, or killed from outside); run the playbook again"}
        data = self._parse_returned_data(res, PROFILE)
        remove_internal_keys(data)
        return data
