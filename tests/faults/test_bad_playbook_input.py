"""Bad and hostile input to every playbook, through ansible-playbook as a user runs it.

Each case gives one ``-e`` variable or one inventory value a bad value (a host named ``../x``, a missing
repository, a repository that is a file, a FIFO, a symlink or garbage as ``.sops.yaml``, an unknown rotate
kind, impossible break-glass shares, a key file that is a directory or readable by others, ...) and keeps
the rest valid. The run must exit non-zero, the failing task's message must be one line that names what
was wrong and where, no key material may be printed, and the secrets repository (its commits too), the
hostile directory and the home directory must be byte-identical afterwards (content, mode, owner).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from ansible_collections.nixfleet.sops.plugins.module_utils import age

from tests.faults.lib import SECRET_RE, World, flip, make_world
from tests.lib.runner import REPO, PlaybookRun, run_playbook

PLAYBOOKS = os.path.join(REPO, "playbooks")


@dataclass
class Run:
    """One ansible-playbook run: extra vars, the hosts of the ``nixos`` group (name -> vars), inventory-wide
    variables replacing the defaults, tags."""

    extra_vars: dict[str, Any] = field(default_factory=dict)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    group_vars: dict[str, Any] = field(default_factory=dict)
    tags: str | None = None


Setup = Callable[[World], Run]
CASES: list[tuple[str, str, Setup, tuple[str, ...]]] = []


def case(playbook: str, name: str, needles: tuple[str, ...]) -> Callable[[Setup], Setup]:
    """Register ``setup(world) -> Run`` as a bad-input case of ``playbooks/<playbook>.yml``; the failing
    task's message must match every regex in ``needles``."""

    def add(fn: Setup) -> Setup:
        CASES.append((f"{playbook}:{name}", playbook, fn, needles))
        return fn

    return add


def home(w: World, *parts: str) -> str:
    return os.path.join(w.base, "home", *parts)


def hostile(w: World, *parts: str) -> str:
    return os.path.join(w.base, "hostile", *parts)


def inventory(w: World, run: Run) -> str:
    """A localhost inventory (like tests/lib/localhost.yml) whose fleet variables point into ``w``."""
    local = {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}
    fleet = {"nixfleet_secrets_repo": w.path, "nixfleet_identity_files": [w.admin_keys],
             "nixfleet_admin_anchors": ["admin"], "nixfleet_known_hosts_file": home(w, "known_hosts"),
             "nixfleet_audit_report": home(w, "audit.html"), "nixfleet_revoke_report_dir": home(w),
             **run.group_vars}
    inv = {"all": {"vars": {k: v for k, v in fleet.items() if v is not None}, "hosts": {"localhost": local},
                   "children": {"nixos": {"hosts": {h: {**local, **v} for h, v in run.hosts.items()}}}}}
    path = os.path.join(w.base, "inventory.yml")
    with open(path, "w") as fh:
        yaml.safe_dump(inv, fh)
    return path


def repo_copy(w: World, name: str, config: Callable[[str], None]) -> str:
    """A copy of the secrets repository (in the hostile directory) whose ``.sops.yaml`` ``config`` replaces."""
    path = hostile(w, name)
    shutil.copytree(w.path, path, symlinks=True)
    os.unlink(os.path.join(path, ".sops.yaml"))
    config(os.path.join(path, ".sops.yaml"))
    return path


def fifo_config(path: str) -> None:
    os.mkfifo(path)


def link_out_config(path: str) -> None:
    os.symlink("/etc/passwd", path)


def malformed_config(path: str) -> None:
    with open(path, "w") as fh:
        fh.write("creation_rules:\n  - path_regex: [unclosed\n    key_groups: {\n")


def bomb_config(w: World) -> Callable[[str], None]:
    return lambda path: shutil.copy(w.bad["bomb"], path)


def with_mode(path: str, mode: int) -> str:
    os.chmod(path, mode)
    return path


def public_key_file(w: World) -> str:
    """An admin key file readable by everyone: the identity it holds is no longer private."""
    path = home(w, "open-keys.txt")
    with open(path, "w") as fh:
        fh.write(age.format_identity_file(age.generate_identity()))
    return with_mode(path, 0o644)


def config_cases(playbook: str, *which: str, tags: str | None = None, **extra: Any) -> None:
    """``.sops.yaml`` a FIFO, a link out of the tree, malformed YAML, an alias bomb."""
    kinds = {"config_fifo": (fifo_config, ("fifo_repo", "FIFO")),
             "config_link_out": (link_out_config, ("link_repo", r"\.sops\.yaml", "symlink to /etc/passwd", "outside")),
             "config_malformed": (malformed_config, ("malformed_repo", r"\.sops\.yaml")),
             "config_alias_bomb": (None, ("bomb_repo", r"\.sops\.yaml", "alias"))}
    for name in which:
        make, needles = kinds[name]
        repo_name = needles[0]
        case(playbook, name, needles)(
            lambda w, make=make, repo_name=repo_name: Run(
                extra_vars={"nixfleet_secrets_repo": repo_copy(w, repo_name, make or bomb_config(w)), **extra},
                tags=tags))


# --------------------------------------------------------------------------- access
CATEGORIES = {"web": {"path_regex": r"sops/web\.yaml$", "groups": ["nixos"]}}
case("access", "repo_missing", ("missing",))(
    lambda w: Run(extra_vars={"nixfleet_secrets_repo": w.bad["missing"], "nixfleet_secret_categories": CATEGORIES}))
config_cases("access", "config_fifo", nixfleet_secret_categories=CATEGORIES)
case("access", "categories_missing", ("nixfleet_secret_categories",))(lambda w: Run(hosts={"alpha": {}}))
case("access", "path_regex", ("web", "path_regex"))(
    lambda w: Run(extra_vars={"nixfleet_secret_categories": {"web": {"path_regex": "(", "groups": ["nixos"]}}},
                  hosts={"alpha": {}}))
case("access", "host_named_dotdot", (r"\.\./x", "host name", "not allowed"))(
    lambda w: Run(extra_vars={"nixfleet_secret_categories": CATEGORIES}, hosts={"alpha": {}, "../x": {}}))
case("access", "primary_user", ("alpha", "primary user", "not a valid user"))(
    lambda w: Run(extra_vars={"nixfleet_secret_categories": CATEGORIES, "nixfleet_access_user_keys": True},
                  hosts={"alpha": {"nixfleet_primary_user": "../root"}}))

# --------------------------------------------------------------------------- audit
case("audit", "repo_is_a_file", ("garbage",))(lambda w: Run(extra_vars={"nixfleet_secrets_repo": w.bad["garbage"]}))
config_cases("audit", "config_link_out")
case("audit", "report_path_dir", ("hostile/dir", "report"))(
    lambda w: Run(extra_vars={"nixfleet_audit_report": w.bad["dir"]}))
case("audit", "max_age_negative", ("max_age_days", "host"))(
    lambda w: Run(extra_vars={"nixfleet_key_max_age_days": {"host": -1}}))

# --------------------------------------------------------------------------- bootstrap
BOOT_HOST = {"nixfleet_primary_user": "rain", "nixfleet_install_method": "none"}
case("bootstrap", "host_named_dotdot", (r"\.\./x", "host name", "not allowed"))(
    lambda w: Run(hosts={"../x": BOOT_HOST}))
case("bootstrap", "primary_user", ("gamma", "user", "not a valid user|not allowed"))(
    lambda w: Run(hosts={"gamma": {**BOOT_HOST, "nixfleet_primary_user": "../root"}}))
case("bootstrap", "config_link_out", ("link_repo", r"\.sops\.yaml", "symlink to /etc/passwd", "outside"))(
    lambda w: Run(hosts={"gamma": BOOT_HOST},
                  extra_vars={"nixfleet_secrets_repo": repo_copy(w, "link_repo", link_out_config)}))
case("bootstrap", "identity_dir", ("hostile/dir", "directory"))(
    lambda w: Run(hosts={"gamma": BOOT_HOST}, extra_vars={"nixfleet_identity_files": [w.bad["dir"]]}))
case("bootstrap", "deploy_repo", (r"\.\./x", "deploy"))(
    lambda w: Run(hosts={"gamma": {**BOOT_HOST, "nixfleet_deploy_repos": ["../x"]}}))

# --------------------------------------------------------------------------- break_glass
case("break_glass", "shares_2_of_1", ("shares",))(
    lambda w: Run(extra_vars={"nixfleet_break_glass_output_dir": home(w, "bg"), "nixfleet_break_glass_shares": 1,
                              "nixfleet_break_glass_threshold": 2}, tags="generate"))
case("break_glass", "threshold_above_shares", ("threshold", "shares"))(
    lambda w: Run(extra_vars={"nixfleet_break_glass_output_dir": home(w, "bg"), "nixfleet_break_glass_shares": 3,
                              "nixfleet_break_glass_threshold": 4}, tags="generate"))
case("break_glass", "output_dir_fifo", ("fifo", "directory"))(
    lambda w: Run(extra_vars={"nixfleet_break_glass_output_dir": w.bad["fifo"]}, tags="generate"))
case("break_glass", "register_recipient_checksum", ("recipient", "checksum"))(
    lambda w: Run(extra_vars={"nixfleet_break_glass_recipient": flip(w.repo.recipient("admin"))}, tags="register"))
case("break_glass", "register_repo_missing", ("missing",))(
    lambda w: Run(extra_vars={"nixfleet_break_glass_recipient": w.repo.recipient("admin"),
                              "nixfleet_secrets_repo": w.bad["missing"]}, tags="register"))
case("break_glass", "test_key_garbage", ("break_glass_key",))(
    lambda w: Run(extra_vars={"nixfleet_break_glass_key": "not a key at all"}, tags="test"))
case("break_glass", "recover_admin_key_file_dir", ("hostile/dir", "admin_key_file|directory"))(
    lambda w: Run(extra_vars={"nixfleet_break_glass_key": age.generate_identity(),
                              "nixfleet_break_glass_admin_key_file": w.bad["dir"]}, tags="recover"))
case("break_glass", "recover_admin_key_file_public", ("open-keys.txt", "0644", "admin_key_file"))(
    lambda w: Run(extra_vars={"nixfleet_break_glass_key": age.generate_identity(),
                              "nixfleet_break_glass_admin_key_file": public_key_file(w)}, tags="recover"))

# --------------------------------------------------------------------------- demo
case("demo", "repo_is_a_file", ("nixfleet_secrets_repo", "garbage", "not a directory"))(
    lambda w: Run(extra_vars={"nixfleet_secrets_repo": w.bad["garbage"]}))

# --------------------------------------------------------------------------- init
case("init", "repo_unset", ("nixfleet_secrets_repo",))(lambda w: Run(group_vars={"nixfleet_secrets_repo": None}))
case("init", "repo_is_a_file", ("garbage", "not a directory"))(
    lambda w: Run(extra_vars={"nixfleet_secrets_repo": w.bad["garbage"]}))
case("init", "repo_holds_other_files", ("hostile",))(lambda w: Run(extra_vars={"nixfleet_secrets_repo": hostile(w)}))
case("init", "admin_key_file_dir", ("hostile/dir", "directory"))(
    lambda w: Run(extra_vars={"nixfleet_secrets_repo": home(w, "new"), "nixfleet_admin_key_file": w.bad["dir"]}))
case("init", "admin_recipient_checksum", ("admin_recipient", "checksum"))(
    lambda w: Run(extra_vars={"nixfleet_secrets_repo": home(w, "new"),
                              "nixfleet_admin_recipient": flip(w.repo.recipient("admin"))}))
case("init", "admin_anchor", (r"\.\./x",))(
    lambda w: Run(extra_vars={"nixfleet_secrets_repo": home(w, "new"), "nixfleet_admin_anchor": "../x",
                              "nixfleet_admin_recipient": w.repo.recipient("admin")}))
case("init", "vcs_unknown", ("vcs", "svn"))(
    lambda w: Run(extra_vars={"nixfleet_secrets_repo": home(w, "new"), "nixfleet_vcs": "svn",
                              "nixfleet_admin_recipient": w.repo.recipient("admin")}))

# --------------------------------------------------------------------------- rekey
case("rekey", "repo_without_config", (r"hostile/dir", r"\.sops\.yaml"))(
    lambda w: Run(extra_vars={"nixfleet_secrets_repo": w.bad["dir"]}))
config_cases("rekey", "config_fifo", "config_malformed", "config_alias_bomb")
case("rekey", "identity_fifo", ("fifo", "FIFO"))(lambda w: Run(extra_vars={"nixfleet_identity_files": [w.bad["fifo"]]}))

# --------------------------------------------------------------------------- revoke
case("revoke", "host_dotdot", (r"\.\./x", "host name", "not allowed"))(
    lambda w: Run(extra_vars={"nixfleet_revoke_host": "../x"}))
case("revoke", "host_missing", ("nixfleet_revoke_host",))(lambda w: Run())
case("revoke", "own_files", ("nixfleet_revoke_files", "remove or archive", "keep"))(
    lambda w: Run(extra_vars={"nixfleet_revoke_host": "beta", "nixfleet_revoke_files": "keep"}))
case("revoke", "report_dir_fifo", ("fifo", "not a plain directory"))(
    lambda w: Run(extra_vars={"nixfleet_revoke_host": "beta", "nixfleet_revoke_report_dir": w.bad["fifo"]}))
case("revoke", "primary_user", ("beta", "primary user", "not a valid user"))(
    lambda w: Run(extra_vars={"nixfleet_revoke_host": "beta"}, hosts={"beta": {"nixfleet_primary_user": "../root"}}))
case("revoke", "repo_is_a_file", ("garbage", "not a directory"))(
    lambda w: Run(extra_vars={"nixfleet_revoke_host": "beta", "nixfleet_secrets_repo": w.bad["garbage"]}))

# --------------------------------------------------------------------------- rotate
case("rotate", "anchor_dotdot", (r"\.\./x", "anchor"))(lambda w: Run(extra_vars={"rotate_anchor": "../x"}))
case("rotate", "path_regex", ("rotate_path_regex|path_regex",))(lambda w: Run(extra_vars={"rotate_path_regex": "("}))
case("rotate", "recipient_checksum", ("recipient", "checksum"))(
    lambda w: Run(extra_vars={"rotate_recipient": flip(w.repo.recipient("alpha"))}))

# --------------------------------------------------------------------------- rotate_keys
case("rotate_keys", "unknown_kind", ("alpha", "everything", "cannot be rotated"))(
    lambda w: Run(extra_vars={"nixfleet_rotate": "everything"}, hosts={"alpha": {}}))
case("rotate_keys", "host_dotdot", (r"\.\./x", "host name", "not allowed"))(
    lambda w: Run(extra_vars={"nixfleet_rotate": "host"}, hosts={"../x": {}}))
case("rotate_keys", "unknown_host", ("ghost", "no host key", "bootstrap"))(
    lambda w: Run(extra_vars={"nixfleet_rotate": "host"}, hosts={"ghost": {}}))
case("rotate_keys", "max_age_negative", ("max_age_days", "number of days"))(
    lambda w: Run(extra_vars={"nixfleet_rotate": "due", "nixfleet_key_max_age_days": {"host": -1}},
                  hosts={"alpha": {}}))
case("rotate_keys", "repo_missing", ("missing",))(
    lambda w: Run(extra_vars={"nixfleet_rotate": "host", "nixfleet_secrets_repo": w.bad["missing"]},
                  hosts={"alpha": {}}))

# --------------------------------------------------------------------------- verify
case("verify", "manifest_fifo", ("alpha", "fifo", "FIFO"))(
    lambda w: Run(hosts={"alpha": {"verify_manifests": [w.bad["fifo"]]}}))
case("verify", "manifest_sparse", ("alpha", "sparse", "bytes"))(
    lambda w: Run(hosts={"alpha": {"verify_manifests": [w.bad["sparse"]]}}))


# --------------------------------------------------------------------------- the checks
def failure_messages(run: PlaybookRun) -> list[str]:
    """The message of every failed task (``fatal:``/``failed:`` lines), else Ansible's own error lines."""
    msgs = []
    for m in re.finditer(r"^(?:fatal|failed): \[[^\]]*\](?: \(item=.*?\))?: FAILED! => (\{.*)$", run.stdout, re.M):
        result = json.JSONDecoder().raw_decode(m.group(1))[0]
        msgs.append(str(result.get("msg", "")))
    if not msgs:
        err = re.search(r"^\[ERROR\]: (.*?)(?:\n\n|\Z)", run.stderr, re.S)
        if err:
            msgs.append(err.group(1).strip())
    return msgs


def git_state(path: str) -> tuple[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", path, *args], capture_output=True, text=True, check=False).stdout

    return git("rev-parse", "HEAD"), git("status", "--porcelain", "--ignored")


@pytest.fixture
def world(tmp_path):
    w = make_world(tmp_path)
    for scratch in ("runtime", "userhome"):  # staging and Ansible's ~/.ansible, outside the compared trees
        os.makedirs(tmp_path / scratch, mode=0o700)
    return w


@pytest.mark.parametrize("playbook,setup,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_playbook_input_is_one_clear_line_and_changes_nothing(world, playbook, setup, needles):
    run = setup(world)
    inv = inventory(world, run)
    before, head = world.snapshot(), git_state(world.path)
    env = {"ANSIBLE_PIPELINING": "1", "XDG_RUNTIME_DIR": os.path.join(world.base, "runtime"),
           "HOME": os.path.join(world.base, "userhome")}
    res = run_playbook(f"{playbook}.yml", extra_vars=run.extra_vars, inventory=inv, tags=run.tags, env=env)
    out = res.stdout + res.stderr
    assert res.rc != 0, f"rc 0:\n{res.stdout[-3000:]}"
    msgs = failure_messages(res)
    assert msgs, f"no failed task and no error:\n{out[-3000:]}"
    msg = msgs[0]
    assert "\n" not in msg.strip(), f"not one line: {msg!r}"
    for bad in ("Traceback", "NoneType", "unexpected ", "object has no attribute", "is undefined"):
        assert bad not in msg, f"not a clear error ({bad}): {msg}"
    for needle in needles:
        assert re.search(needle, msg), f"{needle!r} not in {msg!r}"
    assert not SECRET_RE.search(out), "key material in the output"
    assert world.snapshot() == before
    assert git_state(world.path) == head


def test_every_playbook_has_a_case():
    """A playbook added without bad-input cases fails here (issue 12: every playbook)."""
    playbooks = {f[:-4] for f in os.listdir(PLAYBOOKS) if f.endswith(".yml")}
    covered = {c[1] for c in CASES}
    assert playbooks <= covered, f"no bad-input cases for playbooks/{sorted(playbooks - covered)}"
    assert len(CASES) >= 25
