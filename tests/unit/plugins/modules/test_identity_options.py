"""The identity options every sops module takes, through real Ansible (sops_secret as the example)."""

from __future__ import annotations

import sys

from ansible_collections.nixfleet.sops.plugins.module_utils import age, agefile, agekeys
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine

from tests.lib import nftest
from tests.lib.inproc import run_module_inproc
from tests.lib.runner import run_module


def _protected_key_file(path, identity: str, passphrase: bytes) -> None:
    fk = agefile.new_file_key()
    path.write_bytes(agefile.encrypt(age.format_identity_file(identity).encode(), fk,
                                     [agekeys.wrap_scrypt(fk, passphrase, log_n=10)], armored=False))


def test_passphrase_command_plugin_pin_and_skipped_line_warning(tmp_path, monkeypatch):
    plugin = nftest.install(monkeypatch, tmp_path)
    admin = age.generate_identity()
    recipient, plugin_identity = nftest.keypair()
    path = tmp_path / "s.yaml"
    engine.encrypt_file(str(path), {"wifi": "hunter2"}, [[age.recipient_from_identity(admin), recipient]])
    monkeypatch.setenv("NFTEST_PIN", "4321")  # from here on the token wants its PIN
    protected = tmp_path / "admin.age"
    _protected_key_file(protected, admin, b"pw-from-command")
    script = tmp_path / "pw.py"
    script.write_text("print('pw-from-command')\n")
    plugin_keys = tmp_path / "plugin-keys.txt"
    plugin_keys.write_text(f"# token\n{plugin_identity}\nnot-a-key-hunter2\n")

    # The admin key, behind a passphrase given by a command.
    args = {"path": str(path), "key": "wifi", "state": "absent",
            "identity_files": [str(protected)], "identity_passphrase_command": f"{sys.executable} {script}"}
    r = run_module_inproc("sops_secret", args, check=True)
    assert not r.failed, r.msg
    assert r.changed

    # Without it: one clear line naming the file and the options.
    r = run_module_inproc("sops_secret", {**args, "identity_passphrase_command": None}, check=True)
    assert r.failed and "admin.age is passphrase-protected" in r.msg and "identity_passphrase" in r.msg

    # The plugin identity, with its PIN from a no_log option; the bad line is a warning, never echoed.
    r = run_module("sops_secret", {"path": str(path), "key": "wifi", "state": "absent", "identity_files":
                                   [str(plugin_keys)], "age_plugin_secret": "4321"}, check=True, verbosity=3)
    assert not r.failed, r.msg
    assert r.changed
    assert "plugin-keys.txt, line 3: skipped" in r.stdout + r.stderr
    assert "hunter2" not in r.stdout + r.stderr and "4321" not in r.stdout + r.stderr
    assert plugin.runs("identity-v1") >= 1
