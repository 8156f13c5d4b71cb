# Copyright: nixfleet.sops contributors
# MIT License
"""What every module of the collection does the same way: turn errors into one clear line.

Known errors carry messages written for the user (file, key or host, and what
to do). Anything else is reported by type and message, never as a traceback.
None of the collection's errors contain key material, so messages can be shown.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import NixfleetError

T = TypeVar("T")

# Third-party libraries (their PyPI names) that module_utils could not import, with the traceback. The imports
# are guarded so that a module without them says which library to install (missing_required_lib) instead of
# ending in "No module named ...".
MISSING_LIBS: dict[str, str] = {}


def note_missing_lib(name: str) -> None:
    """Record, from an ``except ImportError:`` block, that the library ``name`` (PyPI name) is not installed."""
    MISSING_LIBS.setdefault(name, traceback.format_exc())


def require_libs(module: Any) -> None:
    """Fail the module with Ansible's missing_required_lib message when a library the collection needs is missing."""
    if MISSING_LIBS:
        from ansible.module_utils.basic import missing_required_lib

        name, trace = next(iter(MISSING_LIBS.items()))
        module.fail_json(msg=missing_required_lib(name), exception=trace)


def one_line(exc: BaseException) -> str:
    """The error as a single line, with its path when the exception carries one separately.

    Anything that looks like a private key is redacted: messages may quote user
    input, and a key pasted into the wrong place must not reach task output.
    """
    from .age import redact

    msg = " ".join(redact(str(exc)).split())
    path = getattr(exc, "path", None)
    if path and path not in msg:
        msg = f"{path}: {msg}"
    return msg


def hide_key_material(module: Any) -> None:
    """Mask any parameter value that holds a private key, whatever the option (a key pasted as a
    recipient): Ansible echoes module arguments back in every result, and only no_log ones are masked."""
    from .age import redact

    def walk(value: Any) -> None:
        if isinstance(value, str):
            if redact(value) != value:
                module.no_log_values.add(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(getattr(module, "params", {}) or {})


def run_guarded(module: Any, work: Callable[[], T], prefix: str | None = None, **fail_extra: Any) -> T:
    """Run ``work``; on error call ``module.fail_json`` with one clear line (and ``fail_extra``).

    ``prefix`` (usually the file the module works on) starts the message when
    the error does not already name it.
    """

    def fail(msg: str, **extra: Any) -> None:
        if prefix and prefix not in msg:
            msg = f"{prefix}: {msg}"
        module.fail_json(msg=msg, **extra)

    hide_key_material(module)
    require_libs(module)
    try:
        return work()
    except KeyboardInterrupt:
        fail("interrupted (Ctrl-C): every file is as it was or whole and new; run again to finish", **fail_extra)
    except NixfleetError as exc:
        extra = dict(fail_extra)
        files = getattr(exc, "files", None)
        if files:
            extra["files"] = files
        fail(one_line(exc), **extra)
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        fail(one_line(Exception(f"{where}{exc.strerror or exc}")), **fail_extra)
    except Exception as exc:  # noqa: BLE001 - a module must never end in a traceback
        fail(f"unexpected {type(exc).__name__}: {one_line(exc)}", **fail_extra)
    raise AssertionError("fail_json returned")  # pragma: no cover


def exit_keypair(module: Any, res: Any, path: str, state: str) -> None:
    """Finish a keypair module: apply file attributes (mode 0600 by default), diff, exit.

    In check mode, attributes are only checked when the key itself would not
    change (a new file's attributes are decided when it is written).
    """
    changed = res.changed
    if state == "present" and (not module.check_mode or not res.changed):
        changed = module.set_fs_attributes_if_different(module.load_file_common_arguments(module.params), changed)
    out = dict(changed=changed, path=path, actions=res.actions, generated=res.generated, **res.public)
    if module._diff:
        out["diff"] = res.diff()
    module.exit_json(**out)


def exit_fleet_op(module: Any, res: Any, what: str, repo: str, continue_on_error: bool) -> None:
    """Finish a fleet module (rekey, rotate): results, per-file diff, fail when files failed."""
    from .fleet import changes_diff
    from .vcs import pending_paths

    # What an interrupted earlier run wrote and did not commit: the playbook commits it now.
    verb = {"rekey": "rekeyed", "rotate": "rotated"}.get(what, what)
    out = dict(changed=bool(res.changed_files) and not res.planned, pending_commit=pending_paths(repo),
               msg=res.summary(verb, module.check_mode), **res.as_dict())
    if module._diff and not res.planned:  # the batches that do the work show it
        out["diff"] = changes_diff(res.changes, repo)
    if res.failed and not continue_on_error:
        module.fail_json(msg=f"{what} failed for: " + ", ".join(f["path"] for f in res.failed), **out)
    module.exit_json(**out)


# The argument spec behind the nixfleet.sops.identities doc fragment.
IDENTITY_ARGS: dict[str, dict[str, Any]] = {
    # The aliases are community.sops's names for the same things.
    "identity_files": {"type": "list", "elements": "path", "default": [], "aliases": ["age_keyfile"]},
    "age_keys": {"type": "list", "elements": "str", "default": [], "no_log": True, "aliases": ["age_key"]},
    "identity_passphrase": {"type": "str", "no_log": True},
    # A command line is not a secret; saying so stops Ansible warning about a "pass…" option name.
    "identity_passphrase_command": {"type": "str", "no_log": False},
    "age_plugin_secret": {"type": "str", "no_log": True},
    "age_plugin_secret_command": {"type": "str", "no_log": False},
}


def identity_options(params: dict[str, Any], warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The IDENTITY_ARGS of a module's params as keyword arguments of ``fleet.collect_identities``.

    ``warn`` (``module.warn``) receives the key-file lines that were skipped.
    """
    return {
        "identity_files": params.get("identity_files") or [],
        "age_keys": params.get("age_keys") or [],
        "passphrase": params.get("identity_passphrase"),
        "passphrase_command": params.get("identity_passphrase_command"),
        "plugin_secret": params.get("age_plugin_secret"),
        "plugin_secret_command": params.get("age_plugin_secret_command"),
        "warn": warn,
    }
