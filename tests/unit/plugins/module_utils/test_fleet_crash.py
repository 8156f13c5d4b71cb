"""Crash safety: SIGKILL a rekey of 500 files at chosen points; every file stays old or new, valid.

The kills land where a test asks them to (fleet.failpoints), not at random
moments: while staging, while syncing, before the first rename, in the middle
of the renames, after the last one, and before the commit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, failpoints, fleet
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig

from tests.lib.secrets_repo import REPO_ROOT, make_repo, sops_decrypt

pytestmark = pytest.mark.slow

REKEY = """
import sys
sys.path.insert(0, {coll!r})
from ansible_collections.nixfleet.sops.plugins.module_utils import fleet, fsutil
with fsutil.repo_lock({repo!r}):
    fleet.rekey({repo!r}, [{ident!r}], workers={workers})
print("done")
"""
# (failpoint, what must be true afterwards): how many files may be new.
KILLS = [("write#200", "none"), ("fleet.staged", "none"), ("sync", "none"), ("rename#1", "none"),
         ("rename#250", "some"), ("rename#501", "all but one"), ("fleet.published", "all")]


def test_sigkill_during_rekey_leaves_every_file_old_or_new(tmp_path, sops_bin):
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
    for point, expect in KILLS:
        for rel, data in original.items():
            with open(repo.file(rel), "wb") as fh:
                fh.write(data)
        # The whole run dies, its worker processes too, wherever the point is hit.
        env = dict(os.environ, **{failpoints.ENV: f"{point}:killpg"})
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                              start_new_session=True, check=False)
        assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-2000:])
        new = _assert_each_file_old_or_new(repo, files, original, plain, newcomers)
        assert {"none": new == 0, "some": 0 < new < len(files) - 1, "all but one": new == len(files) - 1,
                "all": new == len(files)}[expect], (point, new)

    # Every file, as it stands after the last kill, decrypts with the real sops.
    keyfile = repo.keyfile("admin")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda r: (r, sops_decrypt(sops_bin, repo.file(r), keyfile)), files))
    bad = [(r, p.stderr.strip()[-200:]) for r, p in results if p.returncode != 0]
    assert not bad, bad[:5]

    # Back to a kill in the middle; a new run finishes the job and cleans up what the kill left.
    for rel, data in original.items():
        with open(repo.file(rel), "wb") as fh:
            fh.write(data)
    env = dict(os.environ, **{failpoints.ENV: "rename#250:killpg"})
    subprocess.run([sys.executable, "-c", script], capture_output=True, env=env, start_new_session=True, check=False)
    assert [f for f in os.listdir(repo.file("sops")) if f.endswith(".tmp")], "the kill left no temp to clean up"
    res = fleet.rekey(repo.path, [repo.identities["admin"]])
    assert res.counts["failed"] == 0 and res.counts["changed"] == len(files) - 249
    assert fleet.rekey(repo.path, [repo.identities["admin"]], check_mode=True).changed_files == []
    leftovers = [f for f in os.listdir(repo.file("sops")) if f.endswith(".tmp")]
    assert leftovers == []
    assert _assert_each_file_old_or_new(repo, files, original, plain, newcomers) == len(files)


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
