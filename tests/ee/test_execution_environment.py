"""The execution environment runs the collection: `make ee` builds it, then this test runs
playbooks/rekey.yml inside it (ansible-playbook and nixfleet.sops both from the image, no network)
on a mounted secrets repository that has a new recipient, and the real sops on the host decrypts
every rekeyed file with the new recipient's identity.

Marked ``ee`` and left out of `make test` (pyproject's addopts deselect it): the image takes
minutes to build. Run it with `make ee`, or `pytest -m ee tests/ee` once the image exists.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml
from ansible_collections.nixfleet.sops.plugins.module_utils import age, fleet
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig

from tests.lib.secrets_repo import make_repo, sops_decrypt

pytestmark = pytest.mark.ee

IMAGE = os.environ.get("NIXFLEET_EE_IMAGE", "localhost/nixfleet-ee:latest")
# The user ansible-builder's images run as (options.user); the mounted repository must be its.
EE_UID = 1000
# Podman on this kind of machine: runc, and rlimits the process may not raise (NOTES-MACHINE.md).
PODMAN_RUN = ["podman", "run", "--rm", "--runtime", "runc",
              "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"]


def git(repo: str, *args: str) -> str:
    # The repository belongs to the image's user now; root on the host reads it all the same.
    return subprocess.run(["git", "-c", "safe.directory=*", "-C", repo, *args],
                          check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def ee_image() -> str:
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: make deps-test")
    if subprocess.run(["podman", "image", "exists", IMAGE], check=False).returncode != 0:
        pytest.fail(f"{IMAGE} does not exist: build it with `make ee`")
    return IMAGE


def run_rekey(image: str, repo: str, keyfile: str) -> subprocess.CompletedProcess[str]:
    cmd = PODMAN_RUN + [
        "--network", "none",
        "-v", f"{repo}:/runner/nix-secrets",
        "-v", f"{keyfile}:/runner/admin.txt:ro",
        image,
        "ansible-playbook", "nixfleet.sops.rekey",
        "-e", '{"nixfleet_secrets_repo": "/runner/nix-secrets", "nixfleet_identity_files": ["/runner/admin.txt"]}',
    ]
    return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600,
                          check=False)


def test_rekey_inside_the_execution_environment(tmp_path, sops_bin, ee_image):
    repo = make_repo(str(tmp_path), hosts=("alpha", "beta"), files_per_host=2)
    # A new operator, added to every rule: every file needs a rekey before the operator can read it.
    ident = age.generate_identity()
    repo.identities["laptop"] = ident
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_recipient("laptop", age.recipient_from_identity(ident), group="users")
    for rule in (r"sops/shared\.yaml$", r"sops/alpha(-\d+)?\.yaml$", r"sops/beta(-\d+)?\.yaml$"):
        cfg.ensure_rule_member(rule, "laptop")
    cfg.save()
    git(repo.path, "commit", "-qam", "add laptop")
    files = sorted(p for p in fleet.iter_candidate_files(repo.path) if p.startswith("sops/"))
    assert len(files) == 5
    laptop = repo.keyfile("laptop")
    plain = {f: sops_decrypt(sops_bin, repo.file(f), repo.keyfile("admin")) for f in files}
    assert all(p.returncode == 0 for p in plain.values())
    assert all(sops_decrypt(sops_bin, repo.file(f), laptop).returncode != 0 for f in files)

    admin = repo.keyfile("admin")
    for root, dirs, names in os.walk(repo.path):
        for n in dirs + names:
            os.lchown(os.path.join(root, n), EE_UID, 0)
    os.chown(repo.path, EE_UID, 0)
    os.chown(admin, EE_UID, 0)
    head = git(repo.path, "rev-parse", "HEAD")

    first = run_rekey(ee_image, repo.path, admin)
    print(first.stdout)
    assert first.returncode == 0, first.stdout + first.stderr
    assert re.search(r"localhost\s+: ok=\d+\s+changed=2\s", first.stdout), first.stdout  # the rekey, the commit

    for f in files:
        opened = sops_decrypt(sops_bin, repo.file(f), laptop)
        assert opened.returncode == 0, f"{f}: {opened.stderr}"
        assert yaml.safe_load(opened.stdout) == yaml.safe_load(plain[f].stdout)
    assert git(repo.path, "rev-parse", "HEAD~1").strip() == head.strip()
    assert git(repo.path, "log", "-1", "--format=%s").strip() == "chore(sops): rekey 5 files"
    assert git(repo.path, "status", "--porcelain") == ""

    rekeyed = {f: open(repo.file(f), "rb").read() for f in files}
    again = run_rekey(ee_image, repo.path, admin)
    print(again.stdout)
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"localhost\s+: ok=\d+\s+changed=0\s", again.stdout), again.stdout
    assert {f: open(repo.file(f), "rb").read() for f in files} == rekeyed
    assert git(repo.path, "log", "-1", "--format=%s").strip() == "chore(sops): rekey 5 files"
