"""Every age key type sops 3.11 knows, both directions, against the real sops and (where it knows the type) age 1.1.

sops -> us: the real sops encrypts a file to the recipient; our Keyring opens its data key.
us -> sops: our engine wraps the data key of a file sops wrote (updatekeys, which calls wrap);
the real sops decrypts it with only the new identity.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, fleet
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine
from ansible_collections.nixfleet.sops.plugins.module_utils.sops import keys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.lib import nftest

pytestmark = pytest.mark.interop


class Key:
    """A recipient and what each side needs to decrypt with its identity."""

    def __init__(self, recipient: str, identities: list[str], sops_env: dict[str, str]) -> None:
        self.recipient = recipient
        self.identities = identities
        self.sops_env = sops_env


def _ssh_key(tmp_path, keytype: str) -> Key:
    key = ed25519.Ed25519PrivateKey.generate() if keytype == "ssh-ed25519" else rsa.generate_private_key(65537, 3072)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                            serialization.NoEncryption())
    path = tmp_path / f"id_{keytype}"
    path.write_bytes(pem)
    path.chmod(0o600)
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return Key(pub, fleet.collect_identities([str(path)]), {"SOPS_AGE_SSH_PRIVATE_KEY_FILE": str(path)})


def _key_file(tmp_path, identity: str) -> str:
    path = tmp_path / "keys.txt"
    path.write_text(f"# a key\n{identity}\n")
    path.chmod(0o600)
    return str(path)


def make_key(kind: str, tmp_path) -> Key:
    if kind in ("ssh-ed25519", "ssh-rsa"):
        return _ssh_key(tmp_path, kind)
    if kind == "plugin":
        recipient, identity = nftest.keypair()
    else:
        identity = age.generate_identity(kind)
        recipient = age.recipient_from_identity(identity)
    return Key(recipient, [identity], {"SOPS_AGE_KEY_FILE": _key_file(tmp_path, identity)})


def _sops(sops_bin: str, args: list[str], cwd, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPS_AGE")}
    env.update({"SOPS_DISABLE_VERSION_CHECK": "1", "HOME": "/nonexistent", **extra})
    return subprocess.run([sops_bin, *args], capture_output=True, text=True, env=env, cwd=str(cwd), check=False)


KINDS = ["x25519", "pq", "ssh-ed25519", "ssh-rsa", "plugin"]


@pytest.fixture()
def plugin(monkeypatch, tmp_path):
    keys.forget_wrapped()
    return nftest.install(monkeypatch, tmp_path)


@pytest.mark.parametrize("kind", KINDS)
def test_sops_encrypts_our_keyring_opens(kind, tmp_path, sops_bin, plugin):
    key = make_key(kind, tmp_path)
    assert age.validate_recipient(key.recipient) == " ".join(key.recipient.split())
    assert age.recipient_kind(key.recipient) == ("plugin:nftest" if kind == "plugin" else kind)
    f = tmp_path / "s.yaml"
    f.write_text("wifi: hunter2\n")
    out = _sops(sops_bin, ["encrypt", "--age", key.recipient, "--in-place", str(f)], tmp_path, {})
    assert out.returncode == 0, out.stderr
    sf = engine.load(str(f))
    assert len(sf.data_key(key.identities)) == 32
    assert sf.decrypt(key.identities) == {"wifi": "hunter2"}
    with pytest.raises(engine.SopsNoIdentityError):
        sf.decrypt([age.generate_identity()])


@pytest.mark.parametrize("kind", KINDS)
def test_we_wrap_sops_decrypts(kind, tmp_path, sops_bin, plugin):
    admin = age.generate_identity()
    f = tmp_path / "s.yaml"
    f.write_text("wifi: hunter2\n")
    out = _sops(sops_bin, ["encrypt", "--age", age.recipient_from_identity(admin), "--in-place", str(f)], tmp_path, {})
    assert out.returncode == 0, out.stderr
    key = make_key(kind, tmp_path)
    changed, added, removed = engine.updatekeys(str(f), [[key.recipient]], [admin])
    assert changed and set(added) == {key.recipient}
    out = _sops(sops_bin, ["decrypt", str(f)], tmp_path, key.sops_env)
    assert out.returncode == 0, out.stderr
    assert "hunter2" in out.stdout
    # The admin's stanza is gone: the admin alone no longer opens it.
    out = _sops(sops_bin, ["decrypt", str(f)], tmp_path, {"SOPS_AGE_KEY_FILE": _key_file(tmp_path, admin)})
    assert out.returncode != 0


@pytest.mark.parametrize("kind", ["ssh-ed25519", "ssh-rsa", "plugin"])
def test_real_age_both_ways(kind, tmp_path, age_bin, plugin):
    key = make_key(kind, tmp_path)
    secret = os.urandom(32)
    enc = tmp_path / "k.age"
    enc.write_text(keys.wrap(secret, key.recipient))
    ident_file = key.sops_env.get("SOPS_AGE_SSH_PRIVATE_KEY_FILE") or key.sops_env["SOPS_AGE_KEY_FILE"]
    out = subprocess.run([age_bin, "-d", "-i", ident_file, str(enc)], capture_output=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == secret
    plain = tmp_path / "plain"
    plain.write_bytes(secret)
    subprocess.run([age_bin, "-a", "-r", key.recipient, "-o", str(enc), str(plain)], check=True)
    assert keys.Keyring(key.identities).unwrap(key.recipient, enc.read_text()) == secret


def test_plugin_rekey_of_many_files_runs_the_plugin_once_per_phase(tmp_path, sops_bin, plugin):
    """The batch API on files the real sops wrote: 30 files, one identity-v1 run, one recipient-v1 run."""
    recipient, identity = nftest.keypair()
    new_recipient, new_identity = nftest.keypair()
    paths = []
    for n in range(30):
        f = tmp_path / f"s{n}.yaml"
        f.write_text(f"num: {n}\n")
        out = _sops(sops_bin, ["encrypt", "--age", recipient, "--in-place", str(f)], tmp_path, {})
        assert out.returncode == 0, out.stderr
        paths.append(str(f))
    assert plugin.runs("identity-v1") == 0  # sops ran the plugin 30 times to encrypt
    base = plugin.runs()
    kr = keys.Keyring([identity])
    data_keys = kr.unwrap_many([(p, engine.load(p).metadata.key_groups[0]) for p in paths])
    assert len(data_keys) == 30 and plugin.runs("identity-v1") == 1
    keys.wrap_many([(p, data_keys[p], [new_recipient]) for p in paths])
    assert plugin.runs() == base + 2
    for p in paths:
        engine.updatekeys(p, [[new_recipient]], kr)
    assert plugin.runs() == base + 2  # updatekeys found every data key and wrapping cached
    out = _sops(sops_bin, ["decrypt", paths[7]], tmp_path, {"SOPS_AGE_KEY_FILE": _key_file(tmp_path, new_identity)})
    assert out.returncode == 0, out.stderr
    assert "num: 7" in out.stdout


def _age_passphrase_file(age_bin: str, src: str, dest: str, passphrase: str) -> None:
    """``age -p``: the real age reads the passphrase from a terminal only, so give it one."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execv(age_bin, [age_bin, "-p", "-o", dest, src])
    seen = b""
    for expect in (b"passphrase", b"Confirm"):
        end = time.time() + 20
        while expect not in seen and time.time() < end:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    seen += os.read(fd, 1024)
                except OSError:
                    break
        os.write(fd, passphrase.encode() + b"\n")
    _unused, status = os.waitpid(pid, 0)
    os.close(fd)
    assert status == 0


def test_sops_file_opens_with_an_age_p_protected_identity_file(tmp_path, sops_bin, age_bin):
    identity = age.generate_identity()
    plain = tmp_path / "keys.txt"
    plain.write_text(age.format_identity_file(identity))
    protected = tmp_path / "keys.txt.age"
    _age_passphrase_file(age_bin, str(plain), str(protected), "correct horse")
    plain.unlink()
    assert protected.read_bytes().startswith(b"age-encryption.org/v1\n-> scrypt ")
    f = tmp_path / "s.yaml"
    f.write_text("wifi: hunter2\n")
    out = _sops(sops_bin, ["encrypt", "--age", age.recipient_from_identity(identity), "--in-place", str(f)],
                tmp_path, {})
    assert out.returncode == 0, out.stderr
    ids = fleet.collect_identities([str(protected)], passphrase="correct horse")
    assert engine.load(str(f)).decrypt(ids) == {"wifi": "hunter2"}
    # And lazily, as sops does, from the environment search.
    kr = keys.Keyring(keys.find_identities(env={"SOPS_AGE_KEY_FILE": str(protected)})[0],
                      passphrase=keys.SecretSource("correct horse"))
    assert engine.load(str(f)).decrypt(kr) == {"wifi": "hunter2"}
