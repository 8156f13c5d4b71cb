"""age plugins: the client protocol, batched, with the toy plugin tests/plugins/age-plugin-nftest."""

from __future__ import annotations

import os
import sys

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine
from ansible_collections.nixfleet.sops.plugins.module_utils.ageplugin import PluginUI, SecretSource
from ansible_collections.nixfleet.sops.plugins.module_utils.sops import keys

from tests.lib import nftest


@pytest.fixture()
def plugin(monkeypatch, tmp_path):
    keys.forget_wrapped()
    return nftest.install(monkeypatch, tmp_path)


def _counting_command(tmp_path, value: str) -> tuple[str, object]:
    counter = tmp_path / "asked"
    script = tmp_path / "secret.py"
    script.write_text(f"open({str(counter)!r}, 'a').write('x')\nprint({value!r})\n")
    return f"{sys.executable} {script}", lambda: len(counter.read_text()) if counter.exists() else 0


def test_recipient_and_identity_kinds():
    r, i = nftest.keypair()
    assert age.recipient_kind(r) == "plugin:nftest"
    assert age.identity_kind(i) == "plugin:nftest"
    assert age.plugin_name(r) == age.plugin_name(i) == "nftest"
    assert age.validate_recipient(r) == r
    assert not age.key_type("plugin:nftest").host_usable


def test_wrap_many_runs_the_plugin_once_for_100_files_and_unwrap_many_once(plugin):
    recipient, identity = nftest.keypair()
    secrets = {f"f{n}": os.urandom(32) for n in range(100)}
    wrapped = keys.wrap_many([(fid, s, [recipient]) for fid, s in secrets.items()])
    assert plugin.runs("recipient-v1") == 1
    kr = keys.Keyring([identity])
    opened = kr.unwrap_many([(fid, [(recipient, wrapped[fid][recipient])]) for fid in secrets])
    assert opened == secrets
    assert plugin.runs("identity-v1") == 1
    # Cached: opening the same stanzas again (as data_key does per file) starts nothing.
    for fid in secrets:
        assert kr.unwrap(recipient, wrapped[fid][recipient]) == secrets[fid]
    assert plugin.runs() == 2


def test_wrap_reuses_what_wrap_many_made(plugin):
    recipient, identity = nftest.keypair()
    secret = os.urandom(32)
    first = keys.wrap_many([("a", secret, [recipient])])["a"][recipient]
    assert keys.wrap(secret, recipient) == first
    assert plugin.runs("recipient-v1") == 1


def test_local_identities_first_plugin_only_for_what_stays_closed(plugin):
    recipient, identity = nftest.keypair()
    x_ident = age.generate_identity()
    x_recipient = age.recipient_from_identity(x_ident)
    secret_a, secret_b = os.urandom(32), os.urandom(32)
    files = [
        ("a", [(x_recipient, keys.wrap(secret_a, x_recipient)), (recipient, keys.wrap(secret_a, recipient))]),
        ("b", [(recipient, keys.wrap(secret_b, recipient))]),
    ]
    before = plugin.runs("identity-v1")
    assert keys.Keyring([x_ident, identity]).unwrap_many(files) == {"a": secret_a, "b": secret_b}
    assert plugin.runs("identity-v1") == before + 1


def test_pin_is_asked_once_per_run_and_messages_are_kept(plugin, monkeypatch, tmp_path):
    monkeypatch.setenv("NFTEST_PIN", "123456")
    monkeypatch.setenv("NFTEST_MSG", "touch the token")
    cmd, asked = _counting_command(tmp_path, "123456")
    ui = PluginUI(secret=SecretSource(command=cmd, what="plugin secret"))
    recipient, identity = nftest.keypair()
    secrets = {n: os.urandom(32) for n in range(20)}
    wrapped = keys.wrap_many([(n, s, [recipient]) for n, s in secrets.items()], ui)
    kr = keys.Keyring([identity], ui=ui)
    assert kr.unwrap_many([(n, [(recipient, wrapped[n][recipient])]) for n in secrets]) == secrets
    assert asked() == 1
    assert any("touch the token" in m for m in ui.messages)
    assert "123456" not in repr(ui.secret) and all("123456" not in m for m in ui.messages)


def test_missing_pin_leaves_the_file_closed_with_a_reason(plugin, monkeypatch):
    recipient, identity = nftest.keypair()
    enc = keys.wrap(os.urandom(32), recipient)
    monkeypatch.setenv("NFTEST_PIN", "123456")
    ui = PluginUI()
    kr = keys.Keyring([identity], ui=ui)
    assert kr.unwrap(recipient, enc) is None
    assert any("asked for a secret" in m for m in ui.messages)
    assert any("wrong or missing PIN" in m for m in ui.messages)


def test_plugin_error_on_wrap_is_a_clear_sops_error(plugin, monkeypatch):
    monkeypatch.setenv("NFTEST_FAIL", "wrap")
    recipient, _unused = nftest.keypair()
    with pytest.raises(engine.SopsError, match="age-plugin-nftest could not wrap.*told to fail"):
        keys.wrap(os.urandom(32), recipient)


def test_missing_plugin_binary_is_named(plugin):
    recipient = age.encode_plugin_recipient("nosuchthing", os.urandom(32))
    with pytest.raises(engine.SopsError, match="age-plugin-nosuchthing is not on PATH"):
        keys.wrap(os.urandom(32), recipient)
    kr = keys.Keyring([age.encode_plugin_identity("nosuchthing", os.urandom(32))])
    assert kr.unwrap(recipient, keys.wrap(os.urandom(32), age.recipient_from_identity(age.generate_identity()))) \
        is None
    assert kr.unwrap_any(keys.wrap(os.urandom(32), age.recipient_from_identity(age.generate_identity()))) is None
    assert any("age-plugin-nosuchthing is not on PATH" in s for s in kr.searched)


def test_sops_files_for_a_plugin_recipient_through_the_engine(plugin, tmp_path):
    recipient, identity = nftest.keypair()
    path = tmp_path / "s.yaml"
    engine.encrypt_file(str(path), {"pin": "1234"}, [[recipient]])
    assert engine.load(str(path)).decrypt([identity]) == {"pin": "1234"}


def test_secret_source_value_command_and_errors(tmp_path):
    assert SecretSource("pw").get() == b"pw"
    cmd, asked = _counting_command(tmp_path, "from-command")
    src = SecretSource(command=cmd)
    assert src.get() == src.get() == b"from-command" and asked() == 1 and src.calls == 1
    with pytest.raises(age.AgeKeyError, match="no passphrase was given"):
        SecretSource().get()
    with pytest.raises(age.AgeKeyError, match="exit status 1"):
        SecretSource(command="false").get()
    assert "pw" not in repr(SecretSource("pw"))
