"""nixfleet.sops.sops_break_glass in-process: arguments, check and diff mode, results, errors."""

from __future__ import annotations

import os

from ansible_collections.nixfleet.sops.plugins.module_utils import age, breakglass, keyinventory, paperkey

from tests.lib.inproc import run_module_inproc
from tests.lib.secrets_repo import make_repo


def test_each_action_names_what_it_needs():
    for action, needs in (("generate", "output_dir"), ("register", "repo, recipient"), ("test", "repo")):
        res = run_module_inproc("sops_break_glass", {"action": action})
        assert res.failed and res.msg == f"action={action} needs {needs}"


def test_generate_check_mode_invents_no_key(tmp_path):
    res = run_module_inproc("sops_break_glass", {"action": "generate", "output_dir": str(tmp_path / "p"),
                                                 "fleet": "home", "shares": 5, "threshold": 3}, check=True)
    assert res.changed and res.result["recipient"] is None and len(res.result["pages"]) == 5
    assert "would be generated as 3-of-5 shares" in res.msg
    assert not (tmp_path / "p").exists()
    real = run_module_inproc("sops_break_glass", {"action": "generate", "output_dir": str(tmp_path / "p"),
                                                  "fleet": "home", "shares": 5, "threshold": 3})
    assert real.changed and real.result["recipient"].startswith("age1")
    assert "AGE-SECRET-KEY" not in real.stdout


def test_register_diff_and_idempotence(tmp_path):
    repo = make_repo(str(tmp_path), hosts=("alpha",))
    recipient = age.recipient_from_identity(age.generate_identity())
    args = {"action": "register", "repo": repo.path, "recipient": recipient,
            "identity_files": [repo.keyfile("admin")]}
    checked = run_module_inproc("sops_break_glass", args, check=True, diff=True)
    assert checked.changed and not checked.failed, checked.msg
    config_diff, files_diff = checked.result["diff"]
    assert f"- &break_glass {recipient}" in config_diff["after"] and "break_glass" not in config_diff["before"]
    assert "sops/shared.yaml: break_glass" in files_diff["after"]
    real = run_module_inproc("sops_break_glass", args, diff=True)
    assert real.changed and real.result["touched"] == [".sops.yaml", "sops/alpha.yaml", "sops/shared.yaml",
                                                       keyinventory.INVENTORY_PATH]
    assert real.result["diff"][0]["after"] == config_diff["after"]
    again = run_module_inproc("sops_break_glass", args)
    assert not again.changed and again.result["touched"] == []


def test_drill_too_few_shares_fails_clearly_and_records_nothing(tmp_path):
    repo = make_repo(str(tmp_path), hosts=("alpha",))
    identity = age.generate_identity()
    breakglass.register(repo.path, age.recipient_from_identity(identity), [repo.identities["admin"]])
    inventory = open(keyinventory.inventory_file(repo.path)).read()
    shares = paperkey.split_identity(identity, 5, 3)
    res = run_module_inproc("sops_break_glass", {"action": "test", "repo": repo.path,
                                                 "break_glass_shares": shares[3:]})
    assert res.failed and res.msg.startswith("break_glass_shares: 2 distinct share(s) given, 3 needed")
    assert open(keyinventory.inventory_file(repo.path)).read() == inventory
    ok = run_module_inproc("sops_break_glass", {"action": "test", "repo": repo.path,
                                                "break_glass_shares": shares[2:]})
    assert ok.changed and sorted(ok.result["opened"]) == ["sops/alpha.yaml", "sops/shared.yaml"]
    assert ok.result["touched"] == [keyinventory.INVENTORY_PATH]
    for s in shares:
        assert s not in ok.stdout and identity not in ok.stdout


def test_recover_without_a_place_for_the_new_key_is_refused(tmp_path):
    repo = make_repo(str(tmp_path), hosts=("alpha",))
    identity = age.generate_identity()
    breakglass.register(repo.path, age.recipient_from_identity(identity), [repo.identities["admin"]])
    res = run_module_inproc("sops_break_glass", {"action": "recover", "repo": repo.path, "break_glass_key": identity})
    assert res.failed and "admin_key_file" in res.msg and identity not in res.stdout
    key_file = os.path.join(str(tmp_path), "admin", "keys.txt")
    ok = run_module_inproc("sops_break_glass", {"action": "recover", "repo": repo.path, "break_glass_key": identity,
                                                "admin_key_file": key_file})
    assert ok.changed and ok.result["opened"] == 2 and ok.result["recipient"].startswith("age1")
    assert age.read_identity_file(key_file)[0] not in ok.stdout
