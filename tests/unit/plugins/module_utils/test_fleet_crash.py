"""Crash safety: SIGKILL a rekey of 500 files at random moments; every file stays old or new, valid."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, fleet
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig

from tests.lib.secrets_repo import REPO_ROOT, make_repo, sops_decrypt

pytestmark = pytest.mark.slow

# Renames are fast, so a random kill rarely lands between two of them; a slow disk is simulated
# (3 ms per rename) so that kills land while staging, while renaming, and after.
REKEY = """
import sys, time
sys.path.insert(0, {coll!r})
from ansible_collections.nixfleet.sops.plugins.module_utils import fleet, fsutil
_commit = fleet.commit_staged
def slow_commit(*a, **k):
    time.sleep(0.003)
    return _commit(*a, **k)
fleet.commit_staged = slow_commit
with fsutil.repo_lock({repo!r}):
    fleet.rekey({repo!r}, [{ident!r}], workers={workers})
print("done")
"""


def test_sigkill_during_rekey_leaves_every_file_old_or_new(tmp_path, sops_bin):
    rng = random.Random(int(os.environ.get("CRASH_SEED", "0")) or None)
    repo = make_repo(str(tmp_path), hosts=("a", "b", "c", "d", "e"), files_per_host=100, git=False)
    files = sorted(r for r in fleet.iter_candidate_files(repo.path) if r.endswith(".yaml"))
    assert len(files) == 501
    original = {r: open(repo.file(r), "rb").read() for r in files}
    plain = {r: engine.load(repo.file(r)).decrypt([repo.identities["admin"]]) for r in files}
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    newcomers = []
    for i in range(12):
        ident = age.generate_identity()
        newcomers.append(age.recipient_from_identity(ident))
        cfg.ensure_recipient(f"n{i}", newcomers[-1], group="users")
        for h in "abcde":
            cfg.ensure_rule_member(rf"sops/{h}(-\d+)?\.yaml$", f"n{i}")
        cfg.ensure_rule_member(r"sops/shared\.yaml$", f"n{i}")
    cfg.save()
    script = REKEY.format(coll=os.path.join(REPO_ROOT, ".collections"), repo=repo.path,
                          ident=repo.identities["admin"], workers=2)
    partial = 0
    for _attempt in range(8):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        time.sleep(rng.uniform(0.5, 2.5))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        new = _assert_each_file_old_or_new(repo, files, original, plain, newcomers)
        if 0 < new < len(files) - 1:
            partial += 1
        if new >= len(files) - 1:
            # Everything done: start again from the old files so later kills land mid-way too.
            for rel, data in original.items():
                with open(repo.file(rel), "wb") as fh:
                    fh.write(data)
        if partial >= 2:
            break
    assert partial >= 1, "no kill landed in the middle of a rekey; the test proved nothing"

    # Every file, as it stands after the last kill, decrypts with the real sops.
    keyfile = repo.keyfile("admin")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda r: (r, sops_decrypt(sops_bin, repo.file(r), keyfile)), files))
    bad = [(r, p.stderr.strip()[-200:]) for r, p in results if p.returncode != 0]
    assert not bad, bad[:5]

    # A new run finishes the job.
    res = fleet.rekey(repo.path, [repo.identities["admin"]])
    assert res.counts["failed"] == 0
    assert fleet.rekey(repo.path, [repo.identities["admin"]], check_mode=True).changed_files == []
    leftovers = [f for f in os.listdir(repo.file("sops")) if f.endswith(".tmp")]
    assert leftovers == []


def _assert_each_file_old_or_new(repo, files, original, plain, newcomers):
    new = 0
    for rel in files:
        data = open(repo.file(rel), "rb").read()
        if data == original[rel]:
            continue
        sf = engine.load(repo.file(rel))
        assert set(newcomers) <= set(sf.recipients[0]), f"{rel} is neither old nor new"
        assert sf.decrypt([repo.identities["admin"]]) == plain[rel]
        new += 1
    return new
