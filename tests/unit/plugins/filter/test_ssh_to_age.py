"""The ssh_to_age filter, templated by real Ansible."""

from __future__ import annotations

from ansible_collections.nixfleet.sops.plugins.module_utils import age, sshkeys

from tests.lib.runner import run_module


def _template(pub: str):
    return run_module("ansible.builtin.debug", {"msg": "{{ '" + pub + "' | nixfleet.sops.ssh_to_age }}"})


def test_filter_converts():
    kp = sshkeys.generate("root@griefling")
    res = _template(kp.public_line)
    assert not res.failed
    assert res.result["msg"] == age.ssh_public_key_to_recipient(kp.public_line)


def test_filter_refuses_rsa_with_reason():
    res = _template("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQ== x")
    assert res.failed
    assert "only convert ed25519" in res.msg
