"""Run a collection module through real Ansible (ad-hoc `ansible localhost -m`).

Modules are tested the way users run them: FQCN name, AnsiballZ, the venv's
Python, check and diff mode from the command line. The minimal callback prints
the task result as JSON, which is parsed back into a dict.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Result:
    """One task's result plus the whole process output (for leak checks)."""

    result: dict[str, Any]
    stdout: str
    stderr: str
    rc: int

    @property
    def changed(self) -> bool:
        return bool(self.result.get("changed"))

    @property
    def failed(self) -> bool:
        return bool(self.result.get("failed"))

    @property
    def msg(self) -> str:
        return str(self.result.get("msg", ""))


def ansible_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_CONFIG": os.path.join(REPO, "ansible.cfg"),
            "ANSIBLE_COLLECTIONS_PATH": os.path.join(REPO, ".collections"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_DEPRECATION_WARNINGS": "0",
            "ANSIBLE_LOCALHOST_WARNING": "0",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
            "SOPS_DISABLE_VERSION_CHECK": "1",
            "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        }
    )
    if extra:
        env.update(extra)
    return env


def run_module(
    module: str,
    args: dict[str, Any],
    check: bool = False,
    diff: bool = False,
    env: dict[str, str] | None = None,
    verbosity: int = 0,
) -> Result:
    """Run ``nixfleet.sops.<module>`` once with ``args`` and return its result."""
    name = module if "." in module else f"nixfleet.sops.{module}"
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "ansible"),
        "localhost",
        "-i", "localhost,",
        "-c", "local",
        "-e", json.dumps({"ansible_python_interpreter": sys.executable}),
        "-m", name,
        "-a", json.dumps(args),
    ]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    if verbosity:
        cmd.append("-" + "v" * verbosity)
    e = ansible_env({"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.minimal", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
                     **(env or {})})
    proc = subprocess.run(cmd, capture_output=True, text=True, env=e, stdin=subprocess.DEVNULL, check=False)
    marker = re.search(r"^localhost \| ([A-Z!]+) => ", proc.stdout, re.M)
    try:
        assert marker is not None
        result = json.JSONDecoder().raw_decode(proc.stdout[marker.end():])[0]
        # The minimal callback drops the failed flag; its status word carries it.
        result.setdefault("failed", marker.group(1) in ("FAILED!", "UNREACHABLE!"))
    except (AssertionError, ValueError) as exc:
        raise AssertionError(f"could not parse ansible output ({exc}):\n{proc.stdout}\n{proc.stderr}") from None
    return Result(result=result, stdout=proc.stdout, stderr=proc.stderr, rc=proc.returncode)


@dataclass
class PlaybookRun:
    """An ansible-playbook run: output, exit code and the PLAY RECAP counts per host."""

    stdout: str
    stderr: str
    rc: int
    recap: dict[str, dict[str, int]]

    def changed(self, host: str = "localhost") -> int:
        return self.recap.get(host, {}).get("changed", -1)


def run_playbook(
    playbook: str,
    extra_vars: dict[str, Any] | None = None,
    check: bool = False,
    diff: bool = False,
    env: dict[str, str] | None = None,
    verbosity: int = 0,
    inventory: str | None = None,
    limit: str | None = None,
    tags: str | None = None,
) -> PlaybookRun:
    """Run one of the collection's playbooks as a user would (default callback)."""
    path = playbook if os.path.isabs(playbook) else os.path.join(REPO, "playbooks", playbook)
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), path,
           "-i", inventory or os.path.join(REPO, "tests", "lib", "localhost.yml")]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    if limit:
        cmd += ["-l", limit]
    if tags:
        cmd += ["--tags", tags]
    if verbosity:
        cmd.append("-" + "v" * verbosity)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ansible_env(env),
                          stdin=subprocess.DEVNULL, check=False)
    recap: dict[str, dict[str, int]] = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", proc.stdout, re.M):
        recap[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return PlaybookRun(stdout=proc.stdout, stderr=proc.stderr, rc=proc.returncode, recap=recap)
