# Copyright: nixfleet.sops contributors
# MIT License
"""A new secrets repository: what ``playbooks/init.yml`` makes (the ``sops_init`` module).

``init_repo`` makes, in a new or empty directory (an empty clone from a forge
will do):

- a git repository, or a colocated jj one;
- the admin key: the operator's age key file (sops' own default,
  ``$XDG_CONFIG_HOME/sops/age/keys.txt``, or another path) is reused when it
  exists and generated 0600 when it does not; or only its recipient is given;
- ``.sops.yaml`` in the layout the rest of the collection edits, each section
  documented in comments: ``keys:`` groups ``users`` (admins here; bootstrap
  adds the hosts' user keys), ``hosts`` (bootstrap adds them) and
  ``recovery`` (break_glass.yml adds the break-glass key), and the shared rule
  (bootstrap adds every host to it);
- ``sops/shared.yaml``, encrypted to the shared rule with the native engine;
- the admin key in the key inventory (``.nixfleet/keys.yaml``);
- one commit of those files.

A directory that holds anything else is refused with nothing changed, unless
``force``; even then an existing ``.sops.yaml``, sops file or key file is never
replaced: only what is missing is added. A second run finds everything in
place and changes nothing. Check mode decides the same and writes nothing; a
key it would generate is shown as such, never invented.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import age, keyinventory, vcs
from .errors import NixfleetError
from .fleet import CONFIG_NAME
from .fsutil import (
    LOCK_NAME,
    commit_all,
    discard_staged,
    exposed_mode,
    is_staged_temp,
    make_dirs,
    remove_made_dirs,
    resolve_write_target,
    stage_write,
)
from .keypairs import ensure_age_keypair, would_generate
from .secrets import new_file_for_rule
from .sops_config import SopsConfig, check_anchor_name

SHARED_FILE = "sops/shared.yaml"
SHARED_RULE = r"sops/shared\.yaml$"
DEFAULT_MESSAGE = "chore(sops): new secrets repository"
# What init itself makes (or other nixfleet.sops steps keep) at the top of the repository.
OWN_ENTRIES = frozenset({".git", ".jj", CONFIG_NAME, "sops", ".nixfleet", LOCK_NAME})


class InitError(NixfleetError, ValueError):
    """init refused: the message names the directory or option and what to do; nothing was changed."""


@dataclass
class InitResult:
    """What init_repo did, or would do in check mode. Public data only."""

    repo: str
    vcs: str = "git"
    changed: bool = False
    admin_anchor: str = "admin"
    admin_recipient: str = ""
    admin_key_file: str | None = None
    created: list[str] = field(default_factory=list)  # repository-relative paths, and the key file
    kept: list[str] = field(default_factory=list)  # what existed and was left as it was
    generated: list[str] = field(default_factory=list)
    commit: str | None = None
    commands: list[list[str]] = field(default_factory=list)
    config_before: str = ""
    config_after: str = ""
    msg: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The module's return values (no diff texts)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("config_before", "config_after")}


def default_key_file(env: Mapping[str, str] | None = None) -> str:
    """Where sops looks for age identities by default on Linux: ``$XDG_CONFIG_HOME/sops/age/keys.txt``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "sops", "age", "keys.txt")


def config_text(admin_anchor: str, recipient: str) -> str:
    """A new repository's ``.sops.yaml``: the sections the collection edits, documented for people.

    The section comments sit above ``keys:`` and above ``creation_rules:``
    because the editor appends new groups and rules at the end of those
    sections, where a comment would end up beside the wrong entry.
    """
    return f"""\
# sops configuration of this secrets repository (made by nixfleet.sops playbooks/init.yml).
# sops reads it to choose who can decrypt a new file; the nixfleet.sops playbooks edit it in
# place and keep comments, so edit it by hand as well if you like. Each key is a YAML anchor
# (`- &name age1...`) that the rules below name as `*name`. The groups of keys:
#   users:    admins (whose keys open every file), and each host's user key &<user>_<host>,
#             added by bootstrap.yml (it lives in the user's ~/.config/sops/age/keys.txt)
#   hosts:    each host's key &<host>, its SSH host key converted to age, added by bootstrap.yml
#   recovery: the break-glass key &break_glass, added by break_glass.yml --tags register; it
#             exists only on paper and is then a member of every rule
keys:
  users:
    - &{admin_anchor} {recipient}

# Creation rules: the first rule whose path_regex matches a file's path decides its recipients.
# bootstrap.yml adds sops/<host>.yaml (admins, the host and its user) and
# sops/host-keys/<host>.yaml (admins only) for each host; access.yml adds rules for secret
# categories of the inventory (marked "managed by nixfleet.sops access").
creation_rules:
  # Secrets every host reads: bootstrap.yml adds each new host to this rule.
  - path_regex: {SHARED_RULE}
    key_groups:
      - age:
          - *{admin_anchor}
"""


def _foreign_entries(repo: str) -> list[str]:
    """What the directory holds that init does not make (relative paths); [] for a missing directory."""
    if not os.path.lexists(repo):
        return []
    if os.path.islink(repo) or not os.path.isdir(repo):
        raise InitError(f"{repo} exists and is not a directory; give init a new or empty directory")
    out = []
    for name in sorted(os.listdir(repo)):
        full = os.path.join(repo, name)
        if is_staged_temp(name):
            continue  # a temp an interrupted write left: this run replaces it
        if name not in OWN_ENTRIES:
            out.append(name)
        elif name == "sops":
            if os.path.islink(full) or not os.path.isdir(full):
                out.append(name)
            else:
                out += [f"sops/{n}" for n in sorted(os.listdir(full))
                        if n != os.path.basename(SHARED_FILE) and not is_staged_temp(n)]
    return out


def _has_history(repo: str) -> bool:
    """True when ``repo`` is a git repository (or a colocated jj one) with at least one commit."""
    if not os.path.isdir(os.path.join(repo, ".git")) or shutil.which("git") is None:
        return False
    proc = subprocess.run(["git", "-C", repo, "rev-parse", "--verify", "-q", "HEAD"], capture_output=True,
                          stdin=subprocess.DEVNULL, check=False)
    return proc.returncode == 0


def _names_admin(config: SopsConfig | None, anchor: str, recipient: str | None) -> bool:
    """True when there is no .sops.yaml yet, or it holds ``&anchor`` with the admin's recipient."""
    if config is None:
        return True
    held = config.anchors().get(anchor)
    return recipient is not None and held is not None and held.recipient == recipient


def _refusal(repo: str, foreign: list[str], anchor: str, admin: str) -> InitError:
    if foreign:
        shown = foreign[:5] + ([f"{len(foreign) - 5} more"] if len(foreign) > 5 else [])
        listing = " and ".join([", ".join(shown[:-1]), shown[-1]] if len(shown) > 1 else shown)
        why = f"holds {listing}, which init did not make"
    else:
        why = f"has a {CONFIG_NAME} whose &{anchor} is not the admin key ({admin})"
    return InitError(
        f"{repo} {why}: init makes new secrets repositories, so nothing was changed. To add only what is missing "
        f"(an existing {CONFIG_NAME}, sops file or key is never replaced), set force (nixfleet_init_force=true)")


def _admin_key(key_file: str | None, recipient: str | None) -> tuple[Any, str | None]:
    """(the key file's KeyResult or None, the admin's recipient or None when a new key would be made).
    Reads only: the key is written after the directory has been accepted."""
    if recipient:
        try:
            return None, age.validate_recipient(recipient)
        except age.AgeKeyError as exc:
            raise InitError(f"admin_recipient: {exc} (give the admin's age1... recipient)") from None
    if key_file is None:
        raise AssertionError("admin key: neither a key file nor a recipient")
    mode = exposed_mode(key_file)
    if mode is not None:
        # Others may already hold a copy: such a key must not become the admin key of a new repository.
        raise InitError(f"admin_key_file {key_file} has mode {mode:04o} (others can read it): point admin_key_file "
                        "at a new file (it is created 0600), or chmod 600 it if nobody else can have read it")
    key = ensure_age_keypair(key_file, check_mode=True)
    return key, None if key.generated else key.public["recipient"]


def init_repo(
    repo: str,
    vcs_kind: str = "git",
    admin_key_file: str | None = None,
    admin_recipient: str | None = None,
    admin_anchor: str = "admin",
    force: bool = False,
    commit_message: str = DEFAULT_MESSAGE,
    check_mode: bool = False,
    runner: vcs.Runner | None = None,
) -> InitResult:
    """Make ``repo`` a new secrets repository (see the module docstring); idempotent.

    The admin key is ``admin_recipient`` when given, else the identity file
    ``admin_key_file`` (default: :func:`default_key_file`), reused or made.
    ``vcs_kind`` (git or jj) applies when ``repo`` is not a repository yet.
    """
    repo = os.path.abspath(repo)
    if vcs_kind not in ("git", "jj"):
        raise InitError(f"vcs must be git or jj, not {vcs_kind!r}")
    check_anchor_name(admin_anchor, "admin anchor")
    if not commit_message.strip():
        raise InitError("commit_message is empty; give the message of the repository's first commit")
    res = InitResult(repo=repo, admin_anchor=admin_anchor)
    if not admin_recipient:
        res.admin_key_file = admin_key_file or default_key_file()
    key, recipient = _admin_key(res.admin_key_file, admin_recipient)

    foreign = _foreign_entries(repo)
    config_path = os.path.join(repo, CONFIG_NAME)
    config = SopsConfig.load(config_path) if os.path.lexists(config_path) else None
    if config is None and _has_history(repo):
        foreign.append("a git history")  # a repository with commits is someone's, even when its tree is empty
    if not force and (foreign or not _names_admin(config, admin_anchor, recipient)):
        raise _refusal(repo, foreign, admin_anchor, recipient or f"a new key for {res.admin_key_file}")

    has_vcs = any(os.path.isdir(os.path.join(repo, d)) for d in (".jj", ".git"))
    res.vcs = vcs.detect(repo) if has_vcs else vcs_kind
    if not has_vcs:
        res.commands.append(vcs.init(repo, res.vcs, check_mode=True, runner=runner))  # the tool is installed

    # Everything is planned before anything is written; a key still to make is planned with a stand-in
    # recipient (check mode shows it masked), and the real run plans again once the key file is written.
    planned = recipient or age.recipient_from_identity(age.generate_identity())
    new_config, writes = _plan(repo, config, admin_anchor, planned)
    if key is not None:
        if key.generated:
            res.generated.append("admin key")
        if key.changed:
            res.created.append(res.admin_key_file)
            if not check_mode:
                # Before the repository names it: a run stopped later leaves a key the next run reuses.
                recipient = planned = ensure_age_keypair(res.admin_key_file).public["recipient"]
                new_config, writes = _plan(repo, config, admin_anchor, planned)
    res.admin_recipient = recipient or would_generate("admin key")
    res.config_before = config.text if config is not None else ""
    res.config_after = new_config.text.replace(planned, res.admin_recipient)
    res.kept = [rel for rel in (CONFIG_NAME, SHARED_FILE) if os.path.lexists(os.path.join(repo, rel))]
    res.created += [rel for rel, _unused, _unused2 in writes]

    if not check_mode:
        _write(repo, writes, None if has_vcs else res.vcs, runner)
    paths = [CONFIG_NAME, SHARED_FILE, keyinventory.INVENTORY_PATH]
    if check_mode and (writes or not has_vcs):
        res.commands += vcs.planned_commands(res.vcs, paths, commit_message)
        committed = True
    else:
        done = vcs.commit(repo, paths, commit_message, vcs=res.vcs, check_mode=check_mode, runner=runner)
        res.commands += done.commands
        res.commit, committed = done.commit, done.changed
    res.changed = bool(res.created) or not has_vcs or committed
    res.msg = _summary(res, check_mode)
    return res


def _plan(repo: str, config: SopsConfig | None, anchor: str, recipient: str
          ) -> tuple[SopsConfig, list[tuple[str, bytes, int]]]:
    """(the .sops.yaml, [(path, bytes, mode)] of each missing file): never a file that exists."""
    writes: list[tuple[str, bytes, int]] = []
    if config is None:
        config = SopsConfig(config_text(anchor, recipient), os.path.join(repo, CONFIG_NAME))
        writes.append((CONFIG_NAME, config.text.encode(), 0o644))
    if not os.path.lexists(os.path.join(repo, SHARED_FILE)):
        shared = new_file_for_rule(os.path.join(repo, SHARED_FILE), config, need_dir=False)
        shared.replace({})
        writes.append((SHARED_FILE, shared.encode(), 0o600))
    if _names_admin(config, anchor, recipient):
        inventory = keyinventory.Inventory.load(repo)
        inventory.record(anchor, "admin", recipient)
        if inventory.changed:
            writes.append((keyinventory.INVENTORY_PATH, inventory.text.encode(), 0o644))
    return config, writes


def _write(repo: str, writes: list[tuple[str, bytes, int]], new_vcs: str | None, runner: vcs.Runner | None) -> None:
    """Directories, the repository itself, then every file staged and renamed together."""
    made = make_dirs(os.path.join(repo, os.path.dirname(SHARED_FILE)), 0o755)
    staged: list[tuple[str, str]] = []
    try:
        if new_vcs:
            vcs.init(repo, new_vcs, runner=runner)
        for rel, data, mode in writes:
            path = os.path.join(repo, rel)
            made += make_dirs(os.path.dirname(path), 0o755)
            staged.append((stage_write(path, data, default_mode=mode), resolve_write_target(path)))
        commit_all(staged)
    except BaseException:
        discard_staged([tmp for tmp, _unused in staged])
        if new_vcs:
            made = [d for d in made if d != repo]  # the repository is there now; a next run goes on in it
        remove_made_dirs(made)
        raise


def _summary(res: InitResult, check_mode: bool) -> str:
    if not res.changed:
        return f"{res.repo} is already a secrets repository with &{res.admin_anchor}; nothing to do"
    would = "would be " if check_mode else ""
    made = ", ".join(res.created) or "nothing new"
    return (f"{res.repo}: {made} {would}created ({res.vcs}), &{res.admin_anchor} = {res.admin_recipient}"
            + (f"; kept as they were: {', '.join(res.kept)}" if res.kept else ""))


__all__ = ["DEFAULT_MESSAGE", "InitError", "InitResult", "config_text", "default_key_file", "init_repo"]
