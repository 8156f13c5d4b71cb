"""A file this collection wrote is read by community.sops's `sops` lookup (which runs the real sops binary).

community.sops comes from the pinned `ansible` wheel (tools/community_sops.py, `make community-sops`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.lib.inproc import run_module_inproc
from tests.lib.runner import REPO, run_playbook
from tests.lib.secrets_repo import make_repo

PLAYBOOK = """\
- name: Read with community.sops
  hosts: localhost
  gather_facts: false
  tasks:
    - name: One key, and the whole file parsed
      ansible.builtin.assert:
        that:
          - lookup('community.sops.sops', secret_path, extract='["db"]["password"]') == expected
          - (lookup('community.sops.sops', secret_path) | from_yaml) == dict(db=dict(password=expected))
        quiet: true
"""


@pytest.fixture(scope="module")
def community_root() -> str:
    out = subprocess.run([sys.executable, os.path.join(REPO, "tools", "community_sops.py")],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if out.returncode != 0:
        pytest.fail(f"cannot fetch community.sops (run `make community-sops`): {out.stderr[-500:]}")
    return out.stdout.strip()


def test_community_sops_lookup_reads_what_sops_secret_wrote(tmp_path, community_root, sops_bin):
    repo = make_repo(str(tmp_path), hosts=("alpha", "beta"), git=False)
    path = repo.file("sops/alpha-1.yaml")
    value = "s3cret with spaces: and 'quotes'"
    res = run_module_inproc("sops_secret", {"path": path, "key": "db/password", "value": value,
                                            "identity_files": [repo.keyfile("admin")]})
    assert not res.failed and res.changed, res.msg

    book = tmp_path / "read.yml"
    book.write_text(PLAYBOOK)
    env = {"ANSIBLE_COLLECTIONS_PATH": os.pathsep.join([community_root, os.path.join(REPO, ".collections")])}
    extra = {"secret_path": path, "expected": value}
    for reader in ("alpha", "admin"):
        run = run_playbook(str(book), extra, env={**env, "SOPS_AGE_KEY_FILE": repo.keyfile(reader)})
        assert run.rc == 0 and run.recap["localhost"]["ok"] == 1, run.stdout[-3000:] + run.stderr[-2000:]

    # The rule does not name beta: the lookup must fail with its key, and a wrong value must not pass.
    run = run_playbook(str(book), extra, env={**env, "SOPS_AGE_KEY_FILE": repo.keyfile("beta")})
    assert run.rc != 0 and "community.sops.sops" in run.stdout + run.stderr
    run = run_playbook(str(book), {**extra, "expected": value + "x"},
                       env={**env, "SOPS_AGE_KEY_FILE": repo.keyfile("alpha")})
    assert run.rc != 0 and "Assertion failed" in run.stdout, run.stdout[-2000:]
    assert json.dumps(value) not in run.stdout  # quiet assert: the secret is not echoed
