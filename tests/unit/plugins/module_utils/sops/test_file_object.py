"""SopsFile as an object: opened once, changed many times, encoded once, written through a sink."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import tempfile

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import secrets
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as S
from ansible_collections.nixfleet.sops.plugins.module_utils.age import generate_identity, recipient_from_identity
from ansible_collections.nixfleet.sops.plugins.module_utils.sops import file as F
from ansible_collections.nixfleet.sops.plugins.module_utils.sops import keygroups, sinks

IDS = [generate_identity() for _unused in range(3)]
RS = [recipient_from_identity(i) for i in IDS]
DATA = {"user": "alice", "password": "hunter2", "nested": {"num": 1, "l": ["a", "b"]}}
_ENC = re.compile(rb"(\w+): (ENC\[AES256_GCM,[^\]]+\])")


@pytest.fixture()
def path(tmp_path):
    p = str(tmp_path / "s.yaml")
    S.encrypt_file(p, DATA, [RS[:2]])
    return p


def state(p: str) -> tuple[bytes, int]:
    return open(p, "rb").read(), os.stat(p).st_mtime_ns


def count_calls(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def spy(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(module, name, spy)
    return calls


def test_many_sets_on_one_open_file_one_unwrap_one_decrypt_one_write(path, monkeypatch):
    reads = count_calls(monkeypatch, F, "_read")
    unwraps = count_calls(monkeypatch, F, "recover_key")
    decrypts = count_calls(monkeypatch, F, "decrypt_tree")
    sink = S.NullSink()
    sf = S.SopsFile.open(path).unlock([IDS[0]])
    assert sf.set(["a"], "1") and sf.set(["b", "c"], 2) and sf.unset(["user"])
    assert not sf.set(["password"], "hunter2")
    assert sf.get(["b", "c"]) == 2
    assert sf.write(sink) is True
    assert (len(reads), len(unwraps), len(decrypts)) == (1, 1, 1)
    assert list(sink.written) == [path]
    # Nothing changed since: a second write has nothing to write.
    assert sf.write(sink) is False


def test_unchanged_values_keep_their_ciphertexts(path):
    before = dict(_ENC.findall(open(path, "rb").read()))
    sf = S.SopsFile.open(path).unlock([IDS[1]])
    sf.set(["user"], "bob")
    out = sf.encode()
    assert out == sf.encode()  # stable until the next change
    after = dict(_ENC.findall(out))
    assert after[b"password"] == before[b"password"] and after[b"num"] == before[b"num"]
    assert after[b"user"] != before[b"user"]
    sf.write()
    assert S.load(path).decrypt([IDS[0]])["user"] == "bob"


def test_nothing_changed_nothing_written(path):
    before = state(path)
    sf = S.SopsFile.open(path).unlock([IDS[0]])
    assert not sf.set(["user"], "alice")
    assert not sf.changed
    assert sf.encode() == before[0]
    assert sf.write() is False
    assert state(path) == before


def test_check_mode_is_the_same_code_with_a_null_sink(path):
    before = state(path)
    runs = []
    for sink in (S.NullSink(), S.FileSink()):
        sf = S.SopsFile.open(path).unlock([IDS[0]])
        changed = sf.set(["user"], "carol")
        runs.append((changed, sf.changed, sf.write(sink)))
        if isinstance(sink, S.NullSink):
            assert state(path) == before
            assert S.SopsFile(path, sink.written[path]).decrypt([IDS[1]])["user"] == "carol"
    assert runs[0] == runs[1] == (True, True, True)
    assert S.load(path).decrypt([IDS[1]])["user"] == "carol"


def test_staged_sink_commits_all_or_discards_all(tmp_path):
    paths = [str(tmp_path / f"f{i}.yaml") for i in range(3)]
    for p in paths:
        S.encrypt_file(p, DATA, [RS[:1]])
    before = {p: open(p, "rb").read() for p in paths}
    sink = S.StagedSink()
    for p in paths:
        sf = S.SopsFile.open(p).unlock([IDS[0]])
        assert sf.updatekeys([RS[:2]])[0]
        sf.write(sink)
    assert len(sink.staged) == 3
    assert {p: open(p, "rb").read() for p in paths} == before  # nothing visible before commit
    assert sorted(sink.commit()) == sorted(os.path.realpath(p) for p in paths)
    for p in paths:
        assert S.load(p).recipients == [RS[:2]]
        assert S.load(p).decrypt([IDS[1]]) == DATA
    # discard: nothing changes and no temp is left behind
    sink = S.StagedSink()
    for p in paths:
        sf = S.SopsFile.open(p).unlock([IDS[0]])
        sf.rotate()
        sf.write(sink)
    after = {p: open(p, "rb").read() for p in paths}
    sink.discard()
    assert {p: open(p, "rb").read() for p in paths} == after
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)


def test_a_staged_sink_travels_between_processes(tmp_path):
    """A worker stages and returns the plain list; the parent commits."""
    p = str(tmp_path / "w.yaml")
    S.encrypt_file(p, DATA, [RS[:1]])
    worker = S.StagedSink()
    sf = S.SopsFile.open(p).unlock([IDS[0]])
    sf.updatekeys([[RS[2]]])
    sf.write(worker)
    import pickle

    parent = S.StagedSink(pickle.loads(pickle.dumps(worker.staged)))
    parent.commit()
    assert S.load(p).decrypt([IDS[2]]) == DATA


def test_create_then_set_then_write(tmp_path, sops_bin):
    p = str(tmp_path / "new.yaml")
    sf = S.SopsFile.create(p, [RS[:1], RS[1:3]], shamir_threshold=2)
    assert sf.changed and not os.path.exists(p)
    sf.set(["a", "b"], "v")
    sf.set(["n"], 3)
    assert sf.write() is True
    assert sf.write() is False
    key = tmp_path / "k.txt"
    key.write_text(IDS[0] + "\n" + IDS[2] + "\n")
    env = {**os.environ, "SOPS_AGE_KEY_FILE": str(key), "HOME": str(tmp_path)}
    out = subprocess.run([sops_bin, "decrypt", "--output-type", "json", p], capture_output=True, env=env, check=False)
    assert out.returncode == 0, out.stderr
    assert b'"b": "v"' in out.stdout and b'"n": 3' in out.stdout


def test_replace_and_binary(tmp_path):
    p = str(tmp_path / "blob.bin")
    sf = S.SopsFile.create(p, [RS[:1]])
    sf.replace(b"\x00raw")
    sf.write()
    sf = S.SopsFile.open(p).unlock([IDS[0]])
    assert not sf.replace(b"\x00raw")
    with pytest.raises(S.SopsError, match="binary files hold no key paths"):
        sf.set(["a"], 1)
    assert sf.replace(b"other") and sf.write()
    assert S.load(p).decrypt([IDS[0]]) == b"other"


def test_updatekeys_without_change_never_unwraps(path, monkeypatch):
    unwraps = count_calls(monkeypatch, F, "recover_key")
    sf = S.SopsFile.open(path).unlock([])  # no identity at all: nothing to unwrap
    assert sf.updatekeys([list(reversed(RS[:2]))]) == (False, set(), set())
    assert sf.write() is False and unwraps == []


def test_explicit_identities_are_checked_even_when_values_are_cached(path):
    sf = S.load(path)
    assert sf.decrypt([IDS[0]]) == DATA
    with pytest.raises(S.SopsNoIdentityError):
        sf.decrypt([IDS[2]])


def test_get_and_key_path_errors(path):
    sf = S.SopsFile.open(path).unlock([IDS[0]])
    assert sf.get(["nested", "l", 1]) == "b"
    with pytest.raises(S.SopsKeyPathError, match="no value at key path 'nested/x'"):
        sf.get(["nested", "x"])
    with pytest.raises(S.SopsKeyPathError, match="empty key path"):
        sf.set([], 1)
    with pytest.raises(S.SopsKeyPathError, match="not an index"):
        sf.set([0], 1)


def test_ensure_secrets_one_read_one_decrypt_one_write(tmp_path, monkeypatch):
    p = str(tmp_path / "host.yaml")
    S.encrypt_file(p, {"keys": {"age": "old"}}, [RS[:1]])
    reads = count_calls(monkeypatch, F, "_read")
    decrypts = count_calls(monkeypatch, F, "decrypt_tree")
    writes = count_calls(monkeypatch, sinks, "atomic_write")
    res = secrets.ensure_secrets(p, {("keys", "age"): "new", "deploy-keys/nix-config": "pem",
                                     ("keys", "other"): "x"}, identities=[IDS[0]])
    assert [r.changed for r in res] == [True, True, True]
    assert [r.key for r in res] == [["keys", "age"], ["deploy-keys", "nix-config"], ["keys", "other"]]
    assert res[0].changes == [(["keys", "age"], "changed")] and res[1].changes == [
        (["deploy-keys", "nix-config"], "added")]
    assert (len(reads), len(decrypts), len(writes)) == (1, 1, 1)
    assert secrets.read_secret(p, None, [IDS[0]]) == {
        "keys": {"age": "new", "other": "x"}, "deploy-keys": {"nix-config": "pem"}}
    before = state(p)
    res = secrets.ensure_secrets(p, [(["keys", "age"], "new"), (["keys", "other"], "x")], identities=[IDS[0]])
    assert not any(r.changed for r in res) and all(r.existed for r in res)
    assert state(p) == before and len(writes) == 1


def test_keyring_is_one_function():
    assert F.keyring is keygroups.keyring is S.keyring


# --------------------------------------------------------------------------- a full disk
def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as the kernel gives it: no file name


def _assert_named_and_untouched(exc, path, before):
    text = str(exc)
    assert path in text and "No space left on device" in text and "\n" not in text
    assert open(path, "rb").read() == before
    assert [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".tmp")] == []


def test_a_full_disk_names_the_file_for_every_sink(path, monkeypatch):
    before = open(path, "rb").read()
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", _enospc)  # the data did not fit: fsync reports it
        with pytest.raises(S.SopsError) as info:
            S.set_value(path, ["user"], "bob", [IDS[0]])
        _assert_named_and_untouched(info.value, path, before)
        with pytest.raises(S.SopsError) as info:
            secrets.ensure_secret(path, ["user"], "bob", identities=[IDS[0]])
        _assert_named_and_untouched(info.value, path, before)
    with monkeypatch.context() as m:
        m.setattr(tempfile, "mkstemp", _enospc)  # not even a temp file fits
        sf = S.SopsFile.open(path).unlock([IDS[0]])
        sf.updatekeys([RS])
        with pytest.raises(S.SopsError) as info:
            sf.write(S.StagedSink())
        _assert_named_and_untouched(info.value, path, before)
    sink = S.StagedSink()
    sf.write(sink)
    with monkeypatch.context() as m:
        m.setattr(sinks, "sync_staged", _enospc)
        with pytest.raises(S.StagedCommitError) as info:
            sink.commit()
    _assert_named_and_untouched(info.value, path, before)
    assert info.value.done == [] and info.value.left == [os.path.realpath(path)]


def test_two_key_changes_on_one_open_file(tmp_path):
    """The second updatekeys works from the shares the first one made, not the file's old ones."""
    p = str(tmp_path / "g.yaml")
    S.encrypt_file(p, DATA, [RS[:1], RS[1:2]], shamir_threshold=2)
    sf = S.SopsFile.open(p).unlock(IDS[:2])
    assert sf.updatekeys([RS[:1], RS[1:2], RS[2:3]], shamir_threshold=2)[0]  # a third group: split afresh
    assert sf.updatekeys([RS[:2], RS[1:2], RS[2:3]])[0]  # same groups: shares kept
    sf.write()
    for pair in ((0, 1), (0, 2), (1, 2)):
        assert S.load(p).decrypt([IDS[i] for i in pair]) == DATA
