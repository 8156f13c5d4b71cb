"""fleet.py: rekey and rotate a secrets repository, plan first, all or nothing."""

from __future__ import annotations

import os
import threading

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, fleet, fsutil
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig

from tests.lib.secrets_repo import make_repo, sops_decrypt


def _state(repo):
    out = {}
    for rel in fleet.iter_candidate_files(repo.path):
        p = repo.file(rel)
        st = os.stat(p)
        out[rel] = (st.st_mtime_ns, open(p, "rb").read())
    out[".sops.yaml"] = open(repo.file(".sops.yaml"), "rb").read()
    return out


def _add_member(repo, regex, anchor, recipient, group="users"):
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_recipient(anchor, recipient, group=group)
    cfg.ensure_rule_member(regex, anchor)
    cfg.save()


@pytest.fixture
def repo(tmp_path):
    return make_repo(str(tmp_path), hosts=("alpha", "beta", "gamma"))


def test_rekey_adds_recipient_only_where_the_rule_says(repo, sops_bin):
    newcomer = age.generate_identity()
    repo.identities["newcomer"] = newcomer
    _add_member(repo, r"sops/shared\.yaml$", "newcomer", age.recipient_from_identity(newcomer))
    before = _state(repo)
    res = fleet.rekey(repo.path, [repo.identities["admin"]])
    assert res.changed_files == ["sops/shared.yaml"]
    assert res.changes[0]["added"] == [f"newcomer ({age.recipient_from_identity(newcomer)})"]
    after = _state(repo)
    for rel in before:
        if rel != "sops/shared.yaml":
            assert after[rel] == before[rel], f"{rel} was touched"
    out = sops_decrypt(sops_bin, repo.file("sops/shared.yaml"), repo.keyfile("newcomer"))
    assert out.returncode == 0, out.stderr
    assert "hunter2" in out.stdout
    again = fleet.rekey(repo.path, [repo.identities["admin"]])
    assert again.changed_files == [] and again.counts["changed"] == 0
    assert _state(repo) == after


def test_updatekeys_keeps_values_mac_and_lastmodified(repo):
    r = age.recipient_from_identity(age.generate_identity())
    _add_member(repo, r"sops/alpha(-\d+)?\.yaml$", "other", r)
    old = engine.load(repo.file("sops/alpha.yaml")).metadata
    fleet.rekey(repo.path, [repo.identities["admin"]])
    new = engine.load(repo.file("sops/alpha.yaml")).metadata
    assert (old.mac, old.lastmodified) == (new.mac, new.lastmodified)
    assert r in new.recipients[0]


def test_check_mode_lists_changes_and_writes_nothing(repo):
    _add_member(repo, r"sops/beta(-\d+)?\.yaml$", "x", age.recipient_from_identity(age.generate_identity()))
    before = _state(repo)
    res = fleet.rekey(repo.path, [repo.identities["admin"]], check_mode=True)
    assert res.changed_files == ["sops/beta.yaml"]
    assert res.changes[0]["added"][0].startswith("x (age1")
    assert _state(repo) == before


def test_unopenable_file_stops_everything(repo):
    # Two files need a change; only host beta's key is given, which opens beta.yaml but not shared.yaml?
    # shared.yaml lists beta too, so use gamma's file: beta cannot open gamma.yaml.
    r = age.recipient_from_identity(age.generate_identity())
    _add_member(repo, r"sops/beta(-\d+)?\.yaml$", "x", r)
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_rule_member(r"sops/gamma(-\d+)?\.yaml$", "x")
    cfg.save()
    before = _state(repo)
    with pytest.raises(fleet.FleetError) as err:
        fleet.rekey(repo.path, [repo.identities["beta"]])
    assert "sops/gamma.yaml" in str(err.value) and "nothing was written" in str(err.value)
    assert "AGE-SECRET-KEY" not in str(err.value)
    assert _state(repo) == before
    res = fleet.rekey(repo.path, [repo.identities["beta"]], continue_on_error=True)
    assert res.changed_files == ["sops/beta.yaml"]
    assert [f["path"] for f in res.failed] == ["sops/gamma.yaml"]


def test_plan_only_above_writes_nothing_then_batches_give_the_single_run(repo, tmp_path):
    """A large rekey planned first and done in batches of ``files`` ends where one run ends."""
    import shutil

    laptop = age.recipient_from_identity(age.generate_identity())
    for regex in (r"sops/shared\.yaml$", r"sops/alpha(-\d+)?\.yaml$", r"sops/beta(-\d+)?\.yaml$"):
        _add_member(repo, regex, "laptop", laptop)
    twin = str(tmp_path / "twin")
    shutil.copytree(repo.path, twin, symlinks=True)
    before = _state(repo)
    ids = [repo.identities["admin"]]

    plan = fleet.rekey(repo.path, ids, plan_only_above=2)
    assert plan.planned and _state(repo) == before
    assert plan.changed_files == ["sops/alpha.yaml", "sops/beta.yaml", "sops/shared.yaml"]
    assert plan.counts["recipients_added"] == 1 and plan.recipients == {"added": ["laptop"], "removed": []}
    assert plan.summary("rekeyed") == ("3 of 4 sops files to be rekeyed in batches, 1 unchanged; "
                                       "recipients added: laptop; 1 not sops-encrypted")
    done = []
    for batch in (plan.changed_files[:2], plan.changed_files[2:]):
        res = fleet.rekey(repo.path, ids, files=batch, plan_only_above=2)
        assert not res.planned and res.changed_files == batch
        done += res.changed_files
    single = fleet.rekey(twin, ids)
    assert not single.planned and single.changed_files == done
    assert single.summary("rekeyed") == ("3 of 4 sops files rekeyed, 1 unchanged; recipients added: laptop; "
                                         "1 not sops-encrypted")
    assert fleet.rekey(repo.path, ids).changed_files == []  # nothing left to do
    with pytest.raises(fleet.FleetError, match=r"files: sops/nope\.yaml is not a file under .*changed_files"):
        fleet.rekey(repo.path, ids, files=["sops/nope.yaml"])


def test_plan_only_above_refuses_like_one_run(repo):
    """The plan opens every file: one that cannot be opened stops the run before any batch."""
    r = age.recipient_from_identity(age.generate_identity())
    _add_member(repo, r"sops/beta(-\d+)?\.yaml$", "x", r)
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.ensure_rule_member(r"sops/gamma(-\d+)?\.yaml$", "x")
    cfg.save()
    before = _state(repo)
    with pytest.raises(fleet.FleetError, match="nothing was written: sops/gamma.yaml"):
        fleet.rekey(repo.path, [repo.identities["beta"]], plan_only_above=1)
    with pytest.raises(fleet.FleetError, match="rotate refused: 2 of 4 files .* nothing was written: sops/alpha.yaml"):
        fleet.rotate(repo.path, [repo.identities["beta"]], plan_only_above=1)
    assert _state(repo) == before
    plan = fleet.rotate(repo.path, [repo.identities["admin"]], path_regex="beta|gamma", plan_only_above=1)
    assert plan.planned and plan.changed_files == ["sops/beta.yaml", "sops/gamma.yaml"]
    assert _state(repo) == before


def test_non_sops_and_unmatched_files_are_listed(repo):
    with open(repo.file("sops/plain.yaml"), "w") as fh:
        fh.write("password: oops\n")
    engine.encrypt_file(repo.file("elsewhere.yaml"), {"a": 1}, [[repo.recipient("admin")]])
    res = fleet.rekey(repo.path, [repo.identities["admin"]])
    reasons = {s["path"]: s["reason"] for s in res.skipped}
    assert reasons["sops/plain.yaml"] == "not sops-encrypted"
    assert reasons["README.md"] == "not sops-encrypted"
    assert "no creation rule" in reasons["elsewhere.yaml"]


def test_remove_then_rekey_and_rotate_locks_out_old_identity(repo, sops_bin):
    cfg = SopsConfig.load(repo.file(".sops.yaml"))
    cfg.remove_anchor("gamma")
    cfg.ensure_rule_member(r"sops/gamma(-\d+)?\.yaml$", "admin")
    cfg.save()
    gamma_files = ["sops/shared.yaml", "sops/gamma.yaml"]
    # The gamma rule would be left with admin only, which is allowed.
    old_copy = {rel: open(repo.file(rel), "rb").read() for rel in gamma_files}
    res = fleet.rekey(repo.path, [repo.identities["admin"]])
    assert sorted(res.changed_files) == sorted(gamma_files)
    rot = fleet.rotate(repo.path, [repo.identities["admin"]], path_regex=r"sops/(shared|gamma)")
    assert sorted(rot.changed_files) == sorted(gamma_files)
    gamma_keys = repo.keyfile("gamma")
    for rel in gamma_files:
        assert sops_decrypt(sops_bin, repo.file(rel), gamma_keys).returncode != 0
        assert sops_decrypt(sops_bin, repo.file(rel), repo.keyfile("admin")).returncode == 0
        # The old data key no longer matches: the rotated file is not the old one re-wrapped.
        assert engine.load(repo.file(rel)).metadata.mac != engine.SopsFile(rel, old_copy[rel]).metadata.mac


def test_rotate_by_anchor_selects_files_the_anchor_reads(repo):
    res = fleet.rotate(repo.path, [repo.identities["admin"]], anchor="beta", check_mode=True)
    assert sorted(res.changed_files) == ["sops/beta.yaml", "sops/shared.yaml"]
    with pytest.raises(fleet.FleetError, match="no anchor &nobody"):
        fleet.rotate(repo.path, [repo.identities["admin"]], anchor="nobody")


def test_parallel_and_serial_agree(tmp_path):
    repo = make_repo(str(tmp_path), hosts=("a", "b"), files_per_host=40, git=False)
    _add_member(repo, r"sops/a(-\d+)?\.yaml$", "x", age.recipient_from_identity(age.generate_identity()))
    plan = fleet.rekey(repo.path, [repo.identities["admin"]], check_mode=True, workers=1)
    res = fleet.rekey(repo.path, [repo.identities["admin"]], workers=2)
    assert sorted(res.changed_files) == sorted(plan.changed_files) and len(res.changed_files) == 40
    assert fleet.rekey(repo.path, [repo.identities["admin"]], workers=2).changed_files == []


def test_parallel_rekey_reads_each_file_once(tmp_path, monkeypatch):
    """The workers that read the metadata rekey the files that need a change (or hand them on): one read each."""
    import multiprocessing

    repo = make_repo(str(tmp_path), hosts=("a", "b"), files_per_host=40, git=False)
    _add_member(repo, r"sops/a(-\d+)?\.yaml$", "x", age.recipient_from_identity(age.generate_identity()))
    opened = multiprocessing.Value("i", 0)
    real_open = engine.SopsFile.open.__func__

    def counting(cls, path, *args, **kwargs):
        with opened.get_lock():
            opened.value += 1
        return real_open(cls, path, *args, **kwargs)

    monkeypatch.setattr(engine.SopsFile, "open", classmethod(counting))
    fleet._OPENED.clear()
    res = fleet.rekey(repo.path, [repo.identities["admin"]], workers=2)
    assert len(res.changed_files) == 40
    assert opened.value == len(fleet.iter_candidate_files(repo.path)), opened.value  # 81 sops files + README
    x = SopsConfig.load(repo.file(".sops.yaml")).anchors()["x"].recipient
    assert all(x in engine.load(repo.file(rel)).recipients[0] for rel in res.changed_files)


def _staged_temps(repo):
    return sorted(f for _d, _ds, fs in os.walk(repo.path) for f in fs if fsutil.is_staged_temp(f))


def _other_repo_file(repo, rel):
    """``rel`` encrypted again for a stranger only: nobody in the repository can open it."""
    engine.encrypt_file(repo.file(rel), {"host": "a"}, [[age.recipient_from_identity(age.generate_identity())]])


@pytest.mark.parametrize("fault", ["unreadable", "cannot_open", "only_plans"])
def test_parallel_rekey_that_writes_nothing_leaves_no_staged_file(tmp_path, fault):
    """The scan's workers stage the files they rekey while reading; a run that then refuses (or only plans)
    removes what they staged: every file as it was, no temp file left in the repository."""
    repo = make_repo(str(tmp_path), hosts=("a", "b"), files_per_host=40, git=False)
    _add_member(repo, r"sops/a(-\d+)?\.yaml$", "x", age.recipient_from_identity(age.generate_identity()))
    if fault == "unreadable":
        with open(repo.file("sops/b-7.yaml"), "w") as fh:
            fh.write("host: ENC[AES256_GCM,data:AAAA,iv:AAAA,tag:AAAA,type:str]\nsops:\n    version: 3.9.0\n")
    elif fault == "cannot_open":
        _other_repo_file(repo, "sops/a-7.yaml")
    before = _state(repo)
    if fault == "only_plans":
        res = fleet.rekey(repo.path, [repo.identities["admin"]], workers=2, plan_only_above=10)
        assert res.planned and len(res.changed_files) == 40
    else:
        expected = {"unreadable": r"sops/b-7.yaml: .*no keys found", "cannot_open": r"1 of 40 files .*sops/a-7.yaml"}
        with pytest.raises(fleet.FleetError, match=expected[fault]):
            fleet.rekey(repo.path, [repo.identities["admin"]], workers=2)
    assert _state(repo) == before
    assert _staged_temps(repo) == []


def test_parallel_check_mode_matches_serial_and_writes_nothing(tmp_path):
    repo = make_repo(str(tmp_path), hosts=("a", "b"), files_per_host=40, git=False)
    _add_member(repo, r"sops/a(-\d+)?\.yaml$", "x", age.recipient_from_identity(age.generate_identity()))
    before = _state(repo)
    serial = fleet.rekey(repo.path, [repo.identities["admin"]], check_mode=True, workers=1)
    parallel = fleet.rekey(repo.path, [repo.identities["admin"]], check_mode=True, workers=2)
    assert parallel.as_dict() == serial.as_dict() and len(parallel.changed_files) == 40
    assert _state(repo) == before and _staged_temps(repo) == []


def test_lock_names_the_holder(repo):
    entered, release = threading.Event(), threading.Event()

    def hold():
        with fsutil.repo_lock(repo.path, purpose="sops_rekey"):
            entered.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    entered.wait(5)
    try:
        # flock is per open file description, so a second open in this process conflicts too.
        with pytest.raises(fsutil.LockedError, match=r"locked by another nixfleet.sops run \(pid \d+ .*sops_rekey"):
            with fsutil.repo_lock(repo.path):
                pass
    finally:
        release.set()
        t.join()


def test_collect_identities(tmp_path, repo):
    kf = repo.keyfile("admin", "alpha")
    ids = fleet.collect_identities([kf], [repo.identities["beta"]])
    assert ids == [repo.identities["admin"], repo.identities["alpha"], repo.identities["beta"]]
    assert fleet.collect_identities() is None
    with pytest.raises(fleet.FleetError, match=r"age_keys\[0\]") as err:
        fleet.collect_identities([], ["AGE-SECRET-KEY-1BROKEN"])
    assert "BROKEN" not in str(err.value)


def _encs(path):
    return {st.recipient: st.enc for g in engine.load(path).metadata.key_groups for st in g}


def _truncate_enc(path, recipient):
    """Cut the last line of ``recipient``'s armored payload: a structurally broken stanza."""
    sf = engine.load(path)
    for group in sf.metadata.key_groups:
        for st in group:
            if st.recipient == recipient:
                lines = st.enc.rstrip("\n").split("\n")
                broken = "\n".join(lines[:-3] + lines[-2:]) + "\n"
                text = open(path).read()
                indent = "\n" + " " * 12
                old, new = indent.join(st.enc.rstrip("\n").split("\n")), indent.join(broken.rstrip("\n").split("\n"))
                assert old in text
                with open(path, "w") as fh:
                    fh.write(text.replace(old, new))
    assert [p.recipient for p in engine.load(path).metadata.stanza_problems()] == [recipient]


def test_rekey_keeps_sound_stanzas_and_wraps_for_the_added_and_the_broken(repo, sops_bin):
    path = repo.file("sops/shared.yaml")
    _truncate_enc(path, repo.recipient("beta"))
    before = _encs(path)
    newcomer = age.generate_identity()
    repo.identities["newcomer"] = newcomer
    _add_member(repo, r"sops/shared\.yaml$", "newcomer", age.recipient_from_identity(newcomer))
    res = fleet.rekey(repo.path, [repo.identities["admin"]])
    assert res.changed_files == ["sops/shared.yaml"]
    after = _encs(path)
    kept = {r for r in before if after.get(r) == before[r]}
    assert kept == {repo.recipient(a) for a in ("admin", "alpha", "gamma")}, "sound stanzas were wrapped again"
    assert after[repo.recipient("beta")] != before[repo.recipient("beta")], "the broken stanza was kept"
    assert engine.load(path).metadata.stanza_problems() == []
    for anchor in ("admin", "alpha", "beta", "gamma", "newcomer"):
        out = sops_decrypt(sops_bin, path, repo.keyfile(anchor))
        assert out.returncode == 0 and "hunter2" in out.stdout, (anchor, out.stderr)


def test_rekey_rewrap_all_wraps_every_stanza_afresh_as_sops_does(repo, sops_bin):
    path = repo.file("sops/shared.yaml")
    before = _encs(path)
    newcomer = age.generate_identity()
    repo.identities["newcomer"] = newcomer
    _add_member(repo, r"sops/shared\.yaml$", "newcomer", age.recipient_from_identity(newcomer))
    assert fleet.rekey(repo.path, [repo.identities["admin"]], rewrap_all=True).changed_files == ["sops/shared.yaml"]
    after = _encs(path)
    assert not [r for r in before if after[r] == before[r]], "a stanza was kept"
    for anchor in ("admin", "alpha", "newcomer"):
        assert sops_decrypt(sops_bin, path, repo.keyfile(anchor)).returncode == 0, anchor
