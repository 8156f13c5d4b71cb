# Copyright: nixfleet.sops contributors
# MIT License
"""Named points where a test makes a run fail or die, to prove an interrupted run loses nothing.

Tests set ``NIXFLEET_FAILPOINTS`` to a comma-separated list of ``point[#n]:action``:

- ``point`` is a name passed to :func:`hit` (``write``, ``rename``, ``rekey.staged``,
  ``bootstrap.config_saved``, …); ``#n`` fires on the n-th hit only (1-based),
  otherwise on the first;
- ``action`` is ``kill`` (SIGKILL this process), ``killpg`` (SIGKILL its whole process group:
  the run and its workers), ``killplaybook`` (SIGKILL the ansible-playbook process that runs this module, and
  its process group: the whole run dies as an OOM kill or a closed terminal would end it),
  ``int`` (SIGINT, as a Ctrl-C),
  ``enospc``, ``erofs``, ``eacces`` (an OSError as the filesystem would raise it).

Without the variable, :func:`hit` is a dictionary lookup: nothing else happens.
Deterministic kills replace killing at random moments from outside.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "NIXFLEET_FAILPOINTS"
_ERRORS = {"enospc": errno.ENOSPC, "erofs": errno.EROFS, "eacces": errno.EACCES}
_plan: dict[str, tuple[int, str]] | None = None
_counts: dict[str, int] = {}


def _load() -> dict[str, tuple[int, str]]:
    global _plan
    if _plan is None:
        _plan = {}
        for item in filter(None, (s.strip() for s in os.environ.get(ENV, "").split(","))):
            point, _unused, action = item.partition(":")
            name, _unused, nth = point.partition("#")
            _plan[name] = (int(nth) if nth.isdigit() else 1, action or "kill")
    return _plan


def hit(point: str, path: str | None = None) -> None:
    """Pass the point ``point`` (about ``path``); a test may have asked to fail or die here."""
    plan = _load()
    if not plan or point not in plan:
        return
    _counts[point] = _counts.get(point, 0) + 1
    nth, action = plan[point]
    if _counts[point] != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "killpg":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    if action == "killplaybook":
        from .fsutil import _playbook_process  # fsutil passes failpoints: imported here, not at the top

        # Ansible runs each task's worker (and so this module) in a process group of its own.
        os.killpg(os.getpgid(_playbook_process()[0]), signal.SIGKILL)
        os.killpg(os.getpgid(0), signal.SIGKILL)
    if action == "int":
        os.kill(os.getpid(), signal.SIGINT)
        return
    code = _ERRORS.get(action)
    if code is not None:
        raise OSError(code, os.strerror(code), path)
    raise RuntimeError(f"failpoint {point}: unknown action {action!r}")


def reset() -> None:
    """Forget the plan and the counts (tests that change the variable in-process)."""
    global _plan
    _plan = None
    _counts.clear()
