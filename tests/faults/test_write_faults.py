"""A full disk, a read-only filesystem, a permission refused: at every write and every rename of every
operation that writes, the operation fails with one line naming the file, and every file stays as it was.

Each operation is first run once with counting failpoints to learn how many writes and renames it does
(so a new write in the code is covered without touching this file); then it is run again with the
fault injected at each one in turn (fleet.failpoints: ``write#k:enospc`` …), on a fresh copy of the
world each time.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, failpoints
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig

from tests.faults.lib import World, assert_clear_failure, make_world, run_inproc

ERRORS = ("enospc", "erofs", "eacces")
WORDS = {"enospc": "No space left", "erofs": "Read-only file system", "eacces": "Permission denied"}


def _add_member(w: World) -> None:
    cfg = SopsConfig.load(w.repo.file(".sops.yaml"))
    cfg.ensure_recipient("laptop", age.recipient_from_identity(age.generate_identity()), group="users")
    for rule in (r"sops/shared\.yaml$", r"sops/alpha(-\d+)?\.yaml$", r"sops/beta(-\d+)?\.yaml$"):
        cfg.ensure_rule_member(rule, "laptop")
    cfg.save()


def ids(w: World) -> dict[str, Any]:
    return {"identity_files": [w.admin_keys]}


# (name, prepare the world, the module, its arguments)
OPERATIONS: list[tuple[str, Callable[[World], None], str, Callable[[World], dict[str, Any]]]] = [
    ("rekey", _add_member, "sops_rekey", lambda w: {"repo": w.path, **ids(w)}),
    ("rotate", lambda w: None, "sops_rotate", lambda w: {"repo": w.path, **ids(w)}),
    ("secret_set", lambda w: None, "sops_secret",
     lambda w: {"path": w.repo.file("sops/alpha.yaml"), "key": "db/password", "value": "new", **ids(w)}),
    ("secret_create", lambda w: None, "sops_secret",
     lambda w: {"path": w.repo.file("sops/alpha-2.yaml"), "key": "db/password", "value": "new", **ids(w)}),
    ("recipient_add", lambda w: None, "sops_recipient",
     lambda w: {"path": w.repo.file(".sops.yaml"), "name": "laptop", "group": "users",
                "recipient": age.recipient_from_identity(age.generate_identity())}),
    ("rule_create", lambda w: None, "sops_creation_rule",
     lambda w: {"path": w.repo.file(".sops.yaml"), "path_regex": r"sops/new\.yaml$", "anchors": ["admin"]}),
    ("bootstrap", lambda w: None, "sops_host_keys",
     lambda w: {"repo": w.path, "host": "griefling", "user": "rain", "admins": ["admin"],
                "deploy_repos": ["nix-config"], **ids(w)}),
    ("inventory", lambda w: None, "sops_key_inventory",
     lambda w: {"repo": w.path, "anchor": "alpha", "kind": "host", "recipient": w.repo.recipient("alpha")}),
    ("age_keypair", lambda w: None, "age_keypair", lambda w: {"path": os.path.join(w.base, "home", "new.txt")}),
    ("ssh_keypair", lambda w: None, "ssh_keypair", lambda w: {"path": os.path.join(w.base, "home", "id_new")}),
    ("audit_report", lambda w: None, "sops_audit",
     lambda w: {"repo": w.path, "report_path": os.path.join(w.base, "home", "audit.html"),
                "report_json": os.path.join(w.base, "home", "reports", "audit.json")}),
]


def _count(tmp_path, prepare, module, args) -> dict[str, int]:
    """How many writes and renames the operation does (failpoints that never fire count the hits)."""
    w = make_world(tmp_path / "count")
    prepare(w)
    params = args(w)
    COUNTS.clear()  # only the module's own writes
    res = run_inproc(module, params, env={failpoints.ENV: "write#100000:enospc,rename#100000:enospc"})
    assert not res.failed and res.changed, res.result
    # run_inproc resets the counts afterwards; the module's own process kept them in failpoints._counts
    return dict(COUNTS)


COUNTS: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _keep_counts(monkeypatch):
    real = failpoints.hit

    def counting(point, path=None):
        COUNTS[point] = COUNTS.get(point, 0) + 1
        return real(point, path)

    COUNTS.clear()
    monkeypatch.setattr(failpoints, "hit", counting)


def _cases() -> list[tuple[str, int]]:
    # The counts are learned at run time; ask for up to 12 points per kind (operations do fewer).
    return [("write", k) for k in range(1, 13)] + [("rename", k) for k in range(1, 9)]


@pytest.mark.parametrize("error", ERRORS)
@pytest.mark.parametrize("op", OPERATIONS, ids=[o[0] for o in OPERATIONS])
def test_a_fault_at_every_write_and_rename_changes_nothing(tmp_path, op, error):
    name, prepare, module, args = op
    counts = _count(tmp_path, prepare, module, args)
    points = [(p, k) for p, k in _cases() if k <= counts.get(p, 0)]
    assert points, f"{name} wrote nothing through fsutil: counts {counts}"
    for point, k in points:
        w = make_world(tmp_path / f"{point}{k}")
        prepare(w)
        params = args(w)
        before = w.snapshot()
        COUNTS.clear()
        res = run_inproc(module, params, env={failpoints.ENV: f"{point}#{k}:{error}"})
        assert_clear_failure(res, WORDS[error])
        assert os.sep in res.msg, f"{name} {point}#{k}: the error names no file: {res.msg}"
        assert w.snapshot() == before, f"{name}: {point}#{k} {error} changed the tree"
        shutil.rmtree(w.base)
        COUNTS.clear()
