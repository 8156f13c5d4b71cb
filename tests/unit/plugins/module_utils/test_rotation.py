"""rotation.py: two-phase key rotation with a resumable journal, checked with the real sops as oracle."""

from __future__ import annotations

import base64
import datetime
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from ansible_collections.nixfleet.sops.plugins.module_utils import (
    age,
    audit,
    bootstrap,
    failpoints,
    fleet,
    fsutil,
    rotation,
    vcs,
)
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine

from tests.lib.secrets_repo import REPO_ROOT, make_repo, sops_decrypt

HOST = "griefling"
KEY = bootstrap.HOST_KEY_NAME
HOST_KEYS = f"sops/host-keys/{HOST}.yaml"
HOST_FILE = f"sops/{HOST}.yaml"
JOURNAL = f".nixfleet/rotations/{HOST}.yaml"


def git(repo, *args):
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path):
    """alpha and beta (make_repo), then griefling bootstrapped (user rain, a deploy key) and committed."""
    r = make_repo(str(tmp_path), hosts=("alpha", "beta"))
    spec = bootstrap.HostSpec(host=HOST, user="rain", admins=["admin"], deploy_repos=["nix-config"])
    res = bootstrap.ensure_host_keys(r.path, spec, [r.identities["admin"]])
    vcs.commit(r.path, res.touched, "bootstrap griefling")
    r.admin = [r.identities["admin"]]
    return r


def stored(repo, rel, keypath):
    return engine.load(repo.file(rel)).unlock(repo.admin).get(keypath)


def host_identity(repo, name=KEY):
    return age.ssh_private_key_to_identity(stored(repo, HOST_KEYS, [name]))


def keyfile(tmp_path, name, identity):
    path = tmp_path / f"{name}.txt"
    path.write_text(age.format_identity_file(identity))
    return str(path)


def sops_files(repo):
    plan = fleet.Plan.scan(repo.path)
    return sorted(fp.rel for fp in plan.files)


def opened_by(sops_bin, repo, key):
    """Every current sops file the real sops opens with only ``key``."""
    return {rel for rel in sops_files(repo) if sops_decrypt(sops_bin, repo.file(rel), key).returncode == 0}


def macs(repo):
    out = {}
    for rel in sops_files(repo):
        meta = engine.SopsFile.open(repo.file(rel)).metadata
        out[rel] = (meta.mac, meta.lastmodified)
    return out


def tree(path):
    """Every file but git's and the temps a killed run left (the next run removes those)."""
    out = {}
    for base, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != ".git"]
        for f in files:
            if fsutil.is_staged_temp(f):
                continue
            full = os.path.join(base, f)
            out[os.path.relpath(full, path)] = open(full, "rb").read()
    return out


def spec(kinds, **kw):
    return rotation.RotationSpec(host=HOST, kinds=kinds, user="rain", deploy_repos=kw.pop("deploy", []), **kw)


def test_host_key_rotation_end_to_end(repo, tmp_path, sops_bin):
    old = host_identity(repo)
    old_key = keyfile(tmp_path, "old", old)
    readable_before = opened_by(sops_bin, repo, old_key)
    assert readable_before == {"sops/shared.yaml", HOST_FILE}
    before = macs(repo)
    bytes_before = tree(repo.path)

    one = rotation.begin(repo.path, spec(["host"]), repo.admin)
    assert one.changed and one.state == "phase1" and one.generated == ["host key"]
    assert set(one.touched) == {".sops.yaml", HOST_KEYS, HOST_FILE, "sops/shared.yaml", JOURNAL}
    cfg = fleet.Plan.scan(repo.path).config
    for rule in cfg.rules:  # the new anchor beside the old in every rule that names the host, and only there
        assert ("*griefling_next" in rule.members[0]) == ("*griefling" in rule.members[0]), rule.path_regex
    new = host_identity(repo, KEY + ".next")
    assert age.recipient_from_identity(new) == cfg.anchors()["griefling_next"].recipient == one.new["host"]
    assert stored(repo, HOST_KEYS, [KEY + ".next.pub"]) == one.new["host_public_key"]
    new_key = keyfile(tmp_path, "new", new)
    assert opened_by(sops_bin, repo, new_key) == readable_before == opened_by(sops_bin, repo, old_key)
    # Phase 1 only re-wraps the same data key.
    now = macs(repo)
    assert {r: now[r] for r in now if r != HOST_KEYS} == {r: before[r] for r in before if r != HOST_KEYS}
    journal = yaml.safe_load(open(repo.file(JOURNAL)).read())
    assert journal["state"] == "phase1" and journal["old"]["host"] == age.recipient_from_identity(old)
    assert "AGE-SECRET-KEY" not in open(repo.file(JOURNAL)).read()

    checked = rotation.verify(repo.path, HOST, repo.admin)
    assert {c["path"] for c in checked.checked} == readable_before and all(c["ok"] for c in checked.checked)
    # The host's manifest: a secret in shared.yaml, as its current system deploys the file (a store copy).
    store = "/nix/store/" + "a" * 32 + "-source/sops/shared.yaml"
    secrets = [{"name": "wifi", "key": "shared/wifi", "sopsFile": store, "format": "yaml"}]
    now_deployed = {store: base64.b64encode(open(repo.file("sops/shared.yaml"), "rb").read()).decode()}
    checked = rotation.verify(repo.path, HOST, repo.admin, secrets, [store], now_deployed)
    assert {"path": store, "kind": "host", "deployed": True, "key_paths": 1, "ok": True} in checked.checked
    stale = {store: base64.b64encode(bytes_before["sops/shared.yaml"]).decode()}  # not redeployed since phase 1
    with pytest.raises(rotation.RotationError, match="deployed on the host.*deploy the rekeyed secrets"):
        rotation.verify(repo.path, HOST, repo.admin, secrets, [store], stale)
    missing = [dict(secrets[0], key="shared/nope")]
    with pytest.raises(rotation.RotationError, match="shared/nope"):
        rotation.verify(repo.path, HOST, repo.admin, missing, [store], now_deployed)

    time.sleep(1.1)  # lastmodified has one-second resolution
    two = rotation.switch(repo.path, HOST, repo.admin)
    assert two.state == "phase2" and sorted(two.rotated) == sorted(readable_before)
    cfg = fleet.Plan.scan(repo.path).config
    assert cfg.anchors()["griefling"].recipient == age.recipient_from_identity(new)
    assert "griefling_next" not in cfg.anchors() and "_next" not in cfg.text
    assert opened_by(sops_bin, repo, old_key) == set(), "the old host key still opens a file"
    assert opened_by(sops_bin, repo, new_key) == readable_before
    after = macs(repo)
    changed = {r for r in after if after[r][0] != before[r][0] and after[r][1] != before[r][1]}
    assert changed == readable_before | {HOST_KEYS}  # the host-keys file holds the new key (admins only)
    unchanged = set(bytes_before) - readable_before - {HOST_KEYS, ".sops.yaml", ".nixfleet/keys.yaml"}
    assert all(tree(repo.path)[r] == bytes_before[r] for r in unchanged)
    assert stored(repo, HOST_KEYS, [KEY + ".pub"]) == one.new["host_public_key"]
    with pytest.raises(engine.SopsKeyPathError):
        stored(repo, HOST_KEYS, [KEY + ".next"])
    entry = next(e for e in yaml.safe_load(open(repo.file(".nixfleet/keys.yaml")))["keys"] if e["anchor"] == HOST)
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    assert entry["rotated"] == today and entry["recipient"] == one.new["host"]

    assert rotation.switch(repo.path, HOST, repo.admin).changed is False  # phase 2 is done already
    done = rotation.finish(repo.path, HOST)
    assert done.touched == [JOURNAL] and not os.path.exists(repo.file(JOURNAL))
    vcs.commit(repo.path, one.touched + two.touched + done.touched, "rotation")
    assert git(repo.path, "status", "--porcelain") == ""
    assert rotation.status(repo.path, HOST).state == ""


def test_user_and_deploy_rotation(repo, tmp_path, sops_bin):
    old_user = stored(repo, HOST_FILE, ["keys", "age"])
    old_deploy = stored(repo, HOST_FILE, ["deploy-keys", "nix-config"])
    one = rotation.begin(repo.path, spec(["user", "deploy"], deploy=["nix-config"]), repo.admin)
    assert sorted(one.generated) == ["deploy key nix-config", "user key"]
    assert one.new["deploy/nix-config"].startswith("ssh-ed25519 ") and one.old["deploy/nix-config"] != \
        one.new["deploy/nix-config"]
    new_user = stored(repo, HOST_FILE, ["keys", "age-next"])
    assert opened_by(sops_bin, repo, keyfile(tmp_path, "nu", new_user)) == {HOST_FILE}
    rotation.verify(repo.path, HOST, repo.admin)
    with pytest.raises(rotation.RotationError, match="forge_ready=true"):
        rotation.switch(repo.path, HOST, repo.admin)
    two = rotation.switch(repo.path, HOST, repo.admin, forge_ready=True)
    assert two.rotated == [HOST_FILE]
    assert opened_by(sops_bin, repo, keyfile(tmp_path, "ou", old_user)) == set()
    assert stored(repo, HOST_FILE, ["keys", "age"]) == new_user
    assert stored(repo, HOST_FILE, ["deploy-keys", "nix-config"]) != old_deploy
    doc = engine.load(repo.file(HOST_FILE)).decrypt(repo.admin)
    assert "deploy-keys-next" not in doc and "age-next" not in doc["keys"]
    rotation.finish(repo.path, HOST)


def _run_killed(repo, code, point):
    script = (f"import sys; sys.path.insert(0, {os.path.join(REPO_ROOT, '.collections')!r})\n"
              "from ansible_collections.nixfleet.sops.plugins.module_utils import rotation, fsutil\n"
              f"with fsutil.repo_lock({repo.path!r}):\n    {code}\n")
    env = dict(os.environ, **{failpoints.ENV: f"{point}:killpg"})
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          start_new_session=True, check=False)
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-2000:])


def test_killed_runs_resume_from_the_journal(repo, tmp_path, sops_bin):
    admin = repo.admin[0]
    begin = f"rotation.begin({repo.path!r}, rotation.RotationSpec('{HOST}', ['host'], 'rain'), [{admin!r}])"
    original = tree(repo.path)
    _run_killed(repo, begin, "fleet.staged")  # killed before anything is visible
    assert tree(repo.path) == original
    # Renames: the record of uncommitted paths, .sops.yaml, the host-keys file, the rekeyed files, the journal last.
    _run_killed(repo, begin, "rename#4")  # .sops.yaml and the host-keys file renamed, nothing else
    assert not os.path.exists(repo.file(JOURNAL))
    stored_next = fleet.Plan.scan(repo.path).config.anchors()["griefling_next"].recipient
    again = rotation.begin(repo.path, spec(["host"]), repo.admin)
    assert again.generated == [] and again.new["host"] == stored_next, "a re-run must reuse the stored new key"
    # A re-run that names no kinds (rotate_keys.yml without nixfleet_rotate) continues the rotation in progress.
    assert rotation.resolve_kinds(repo.path, HOST, [], [], None) == ([], [])
    resumed = rotation.begin(repo.path, spec([]), repo.admin)
    assert resumed.resumed and resumed.kinds == ["host"] and resumed.new["host"] == stored_next

    switch = f"rotation.switch({repo.path!r}, '{HOST}', [{admin!r}])"
    before_switch = tree(repo.path)
    _run_killed(repo, switch, "rotation.switch")  # killed between the phases
    assert tree(repo.path) == before_switch
    assert rotation.status(repo.path, HOST).state == "phase1"
    _run_killed(repo, switch, "rename#6")  # .sops.yaml, host keys, inventory and one rotated file renamed
    assert rotation.status(repo.path, HOST).state == "phase1", "the journal must be the last file renamed"
    done = rotation.switch(repo.path, HOST, repo.admin)
    assert done.state == "phase2"
    new_key = keyfile(tmp_path, "new", host_identity(repo))
    assert age.recipient_from_identity(host_identity(repo)) == stored_next
    assert opened_by(sops_bin, repo, new_key) == {"sops/shared.yaml", HOST_FILE}
    old_key = keyfile(tmp_path, "old", age.ssh_private_key_to_identity(
        engine.load(repo.file(HOST_KEYS)).unlock(repo.admin).get([KEY])))
    assert old_key  # the stored key is the new one now; the old one is in git history:
    old_pem = subprocess.run(["git", "-C", repo.path, "show", f"HEAD:{HOST_KEYS}"],
                             capture_output=True, check=False).stdout
    old_ident = age.ssh_private_key_to_identity(engine.SopsFile(HOST_KEYS, old_pem).unlock(repo.admin).get([KEY]))
    assert opened_by(sops_bin, repo, keyfile(tmp_path, "old2", old_ident)) == set()
    rotation.finish(repo.path, HOST)
    vcs.commit(repo.path, [], "rotation")
    assert git(repo.path, "status", "--porcelain") == ""  # every path was recorded as uncommitted


def test_abort_restores_phase_0(repo, tmp_path, sops_bin):
    config = open(repo.file(".sops.yaml")).read()
    recipients = {rel: engine.SopsFile.open(repo.file(rel)).recipients for rel in sops_files(repo)}
    rotation.begin(repo.path, spec(["host", "user"]), repo.admin)
    res = rotation.abort(repo.path, HOST, repo.admin)
    assert res.state == "aborted" and JOURNAL in res.touched
    assert open(repo.file(".sops.yaml")).read() == config
    assert {rel: engine.SopsFile.open(repo.file(rel)).recipients for rel in sops_files(repo)} == recipients
    assert not os.path.exists(repo.file(JOURNAL))
    assert "next" not in str(engine.load(repo.file(HOST_KEYS)).decrypt(repo.admin))
    assert "age-next" not in str(engine.load(repo.file(HOST_FILE)).decrypt(repo.admin))
    assert opened_by(sops_bin, repo, keyfile(tmp_path, "old", host_identity(repo))) == {"sops/shared.yaml", HOST_FILE}
    assert rotation.abort(repo.path, HOST, repo.admin).changed is False
    rotation.begin(repo.path, spec(["host"]), repo.admin)
    rotation.switch(repo.path, HOST, repo.admin)
    with pytest.raises(rotation.RotationError, match="nothing to roll back"):
        rotation.abort(repo.path, HOST, repo.admin)


def test_check_mode_writes_nothing_and_invents_no_key(repo):
    original = tree(repo.path)
    res = rotation.begin(repo.path, spec(["host", "user"]), repo.admin, check_mode=True)
    assert tree(repo.path) == original
    assert res.changed and res.new["host"] == "(a new host key would be generated)"
    assert res.new["user"] == "(a new user key would be generated)"
    assert "&griefling_next <new host key, generated by the real run>" in res.config_after
    assert "griefling_next" not in res.config_before
    by_path = {c["path"]: c for c in res.changes}
    assert by_path["sops/shared.yaml"]["added"] == ["griefling_next (<new host key, generated by the real run>)"]
    assert sorted(by_path[HOST_FILE]["added"]) == ["griefling_next (<new host key, generated by the real run>)",
                                                   "rain_griefling_next (<new user key, generated by the real run>)"]
    rotation.begin(repo.path, spec(["host"]), repo.admin)
    phase1 = tree(repo.path)
    two = rotation.switch(repo.path, HOST, repo.admin, check_mode=True)
    assert tree(repo.path) == phase1
    assert sorted(two.rotated) == sorted(["sops/shared.yaml", HOST_FILE])
    assert fleet.changes_diff(two.changes, repo.path)["after"].count("data key (new)") == 2


def test_due_rotates_exactly_the_keys_past_policy(repo):
    inv_path = repo.file(".nixfleet/keys.yaml")
    data = yaml.safe_load(open(inv_path))
    old = (datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=400)).isoformat()
    for e in data["keys"]:
        if e["anchor"] == "rain_griefling":
            e["created"] = old
    open(inv_path, "w").write(yaml.safe_dump(data))
    policy = {"host": 365, "user": 365, "deploy": 365}
    findings = [f for f in audit.run(repo.path, max_age_days=policy).findings if f["kind"] == "key_too_old"]
    assert [f["anchor"] for f in findings] == ["rain_griefling"]
    assert rotation.resolve_kinds(repo.path, HOST, ["due"], ["nix-config"], policy) == (["user"], [])
    assert rotation.resolve_kinds(repo.path, "alpha", ["due"], [], policy) == ([], [])
    kinds, repos = rotation.resolve_kinds(repo.path, HOST, ["due"], ["nix-config"], policy)
    rotation.begin(repo.path, spec(kinds, deploy=repos), repo.admin)
    assert rotation.status(repo.path, HOST).kinds == ["user"]
    rotation.switch(repo.path, HOST, repo.admin)
    rotation.finish(repo.path, HOST)
    assert not [f for f in audit.run(repo.path, max_age_days=policy).findings if f["kind"] == "key_too_old"]
    assert rotation.resolve_kinds(repo.path, HOST, ["due"], ["nix-config"], policy) == ([], [])
    assert rotation.resolve_kinds(repo.path, HOST, ["all"], [], None) == (["host", "user"], [])


def test_a_literal_recipient_is_refused_naming_the_rule(repo):
    cfg = open(repo.file(".sops.yaml")).read()
    recipient = fleet.Plan.scan(repo.path).config.anchors()[HOST].recipient
    cfg += ("  - path_regex: sops/extra\\.yaml$\n    key_groups:\n      - age:\n"
            f"          - *admin\n          - {recipient}\n")
    open(repo.file(".sops.yaml"), "w").write(cfg)
    original = tree(repo.path)
    with pytest.raises(rotation.RotationError, match=r"extra\\\\.yaml.*literally.*\*griefling"):
        rotation.begin(repo.path, spec(["host"]), repo.admin)
    assert tree(repo.path) == original


@pytest.mark.parametrize("text, match", [
    ("a: &x 1\nb: *x\n", "aliases"),
    ("host: other\nkinds: [host]\nstate: phase1\nstarted: now\n", "not a rotation journal of griefling"),
    ("host: griefling\nkinds: [root]\nstate: phase1\nstarted: now\n", "not a rotation journal"),
    ("- 1\n", "expected a mapping"),
])
def test_a_tampered_journal_is_refused(repo, text, match):
    os.makedirs(os.path.dirname(repo.file(JOURNAL)), exist_ok=True)
    open(repo.file(JOURNAL), "w").write(text)
    with pytest.raises(rotation.RotationError, match=match):
        rotation.begin(repo.path, spec(["host"]), repo.admin)
