"""Run a collection module in this process: the module's own main(), argument spec and exit path (the
exit taken as the controller-side action plugins take it, controller_module.call_main).

For tests where the Ansible CLI is not the point (argument handling, results,
errors, files on disk), this is ~50x faster than `ansible localhost -m`: no
AnsiballZ, no fork, no interpreter start. What it does not cover, the CLI
tests in tests/lib/runner.py do (AnsiballZ packaging, -vvv output, callbacks).
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any
from unittest import mock

from ansible.module_utils.common import warnings
from ansible.module_utils.testing import patch_module_args
from ansible_collections.nixfleet.sops.plugins.plugin_utils.controller_module import call_main

from tests.lib.runner import Result


def run_module_inproc(module: str, args: dict[str, Any], check: bool = False, diff: bool = False,
                      env: dict[str, str] | None = None) -> Result:
    """Run ``nixfleet.sops.<module>`` with ``args`` (and ``env`` set meanwhile); return its result like
    runner.run_module."""
    name = module.rsplit(".", 1)[-1]
    mod = importlib.import_module(f"ansible_collections.nixfleet.sops.plugins.modules.{name}")
    full = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
    # Warnings and deprecations are process-wide in Ansible: without this, a run reports the last one's.
    warnings._global_warnings.clear()
    warnings._global_deprecations.clear()
    # A module process starts with empty caches: the keyring found "like sops" depends on the environment,
    # and a file opened by an earlier run may have been replaced since.
    from ansible_collections.nixfleet.sops.plugins.module_utils import fleet

    fleet._KEYRINGS.clear()
    fleet._OPENED.clear()
    with patch_module_args(full), mock.patch.dict(os.environ, env or {}):
        rc, text, err = call_main(mod.main)
    try:
        result = json.JSONDecoder().raw_decode(text[text.index("{"):])[0]
    except ValueError as exc:
        raise AssertionError(f"could not parse the module's output ({exc}):\n{text}\n{err}") from None
    result.setdefault("failed", rc != 0)
    return Result(result=result, stdout=text, stderr=err, rc=rc)
