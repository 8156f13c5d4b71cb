"""Test bootstrap: make the repository importable as ansible_collections.nixfleet.sops.

`make collection` creates the same link; doing it here too lets `pytest` run from a
fresh clone once the venv exists.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLL_ROOT = os.path.join(REPO, ".collections")
LINK = os.path.join(COLL_ROOT, "ansible_collections", "nixfleet", "sops")

if not os.path.islink(LINK):
    os.makedirs(os.path.dirname(LINK), exist_ok=True)
    os.symlink("../../..", LINK)
if COLL_ROOT not in sys.path:
    sys.path.insert(0, COLL_ROOT)

os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", COLL_ROOT)
os.environ.setdefault("ANSIBLE_CONFIG", os.path.join(REPO, "ansible.cfg"))
os.environ.setdefault("SOPS_DISABLE_VERSION_CHECK", "1")
# Binaries of the venv (sops, ansible-playbook) come first.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        # The oracles are part of the suite: a missing one is a broken setup, not a skip.
        pytest.fail(f"{binary} is not installed; run `make test` (it installs it)")
    return path


@pytest.fixture(scope="session")
def sops_bin() -> str:
    """Path of the real sops binary (the oracle)."""
    return _need("sops")


@pytest.fixture(scope="session")
def age_bin() -> str:
    """Path of the real age binary (the oracle)."""
    return _need("age")


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO
