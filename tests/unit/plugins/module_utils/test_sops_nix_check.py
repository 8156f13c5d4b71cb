"""sops_nix_check.py against fake host trees: every check, every fault at once, real sops files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, sops_nix_check
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix_check import (
    Verifier,
    VerifyError,
    file_recipients,
    map_sops_file,
    parse_ssh_config,
    parse_ssh_private_key,
    verify,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.lib.inproc import run_module_inproc
from tests.lib.runner import REPO

HASH = "a" * 32
MANIFEST = f"/nix/store/{HASH}-manifest.json"
SOURCE = f"/nix/store/{'b' * 32}-source"
UID, GID = os.getuid(), os.getgid()


def _ssh_key(password: bytes | None = None) -> tuple[str, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, enc).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return private, public + " root@test\n"


class Tree:
    """A fake host: the target's absolute paths live under ``root``."""

    def __init__(self, root: str, other_uid_for: tuple[str, ...] = ()) -> None:
        self.root = root
        users = {"root": UID, "rain": UID, "nobody": UID + 1}
        for name in other_uid_for:
            users[name] = UID + 1
        self.write("/etc/passwd", "".join(f"{n}:x:{u}:{GID}::/{'root' if n == 'root' else 'home/' + n}:/bin/sh\n"
                                          for n, u in users.items()), 0o644)
        self.write("/etc/group", f"root:x:{GID}:\nkeys:x:{GID}:\nusers:x:{GID + 1}:\n", 0o644)

    def p(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def write(self, path: str, text: str, mode: int = 0o600) -> None:
        real = self.p(path)
        os.makedirs(os.path.dirname(real), exist_ok=True)
        with open(real, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(real, mode)

    def link(self, path: str, target: str) -> None:
        real = self.p(path)
        os.makedirs(os.path.dirname(real), exist_ok=True)
        if os.path.lexists(real):
            os.unlink(real)
        os.symlink(target, real)


def healthy(root: str, **tree_args) -> dict:
    """A host in the state sops-nix leaves it in; returns what a test needs to know about it."""
    t = Tree(root, **tree_args)
    private, public = _ssh_key()
    t.write("/etc/ssh/ssh_host_ed25519_key", private)
    t.write("/etc/ssh/ssh_host_ed25519_key.pub", public, 0o644)
    host_recipient = age.ssh_public_key_to_recipient(public)
    identity = age.ssh_private_key_to_identity(private)
    t.write("/var/lib/sops-nix/key.txt", age.format_identity_file(identity))
    user_identity = age.generate_identity()
    t.write("/home/rain/.config/sops/age/keys.txt", age.format_identity_file(user_identity))
    deploy_private, _unused = _ssh_key()
    t.write("/root/.ssh/nix-secrets-deploy", deploy_private)
    t.write("/root/.ssh/config", "Host nix-secrets\n  HostName github.com\n  IdentityFile ~/.ssh/nix-secrets-deploy\n")
    manifest = {
        "secrets": [
            {"name": "wifi-psk", "key": "wifi/psk", "path": "/run/secrets/wifi-psk", "owner": "root",
             "group": "root", "sopsFile": f"{SOURCE}/sops/shared.yaml", "format": "yaml", "mode": "0400"},
            {"name": "db/password", "key": "db/password", "path": "/run/secrets/db/password", "owner": "rain",
             "group": "keys", "sopsFile": f"{SOURCE}/sops/host.yaml", "format": "yaml", "mode": "0440"},
            {"name": "app-token", "key": "app/token", "path": "/var/lib/app/token", "owner": None, "uid": UID,
             "group": None, "gid": GID, "sopsFile": f"{SOURCE}/sops/host.yaml", "format": "yaml"},
        ],
        "templates": [{"name": "app.env", "content": "X=<SOPS:x:PLACEHOLDER>", "path": "/run/secrets/rendered/app.env",
                       "mode": "0400", "owner": "root", "group": "root"}],
        "secretsMountPoint": "/run/secrets.d", "symlinkPath": "/run/secrets", "keepGenerations": 1,
        "ageKeyFile": "/var/lib/sops-nix/key.txt", "ageSshKeyPaths": ["/etc/ssh/ssh_host_ed25519_key"],
        "sshKeyPaths": [], "gnupgHome": "", "useTmpfs": False, "userMode": False,
    }
    t.write(MANIFEST, json.dumps(manifest), 0o444)
    t.write("/run/current-system/activate",
            "#!/bin/sh\necho setting up secrets...\n"
            f"SOPS_GPG_EXEC=/x/bin/gpg /nix/store/{'c' * 32}-sops-install-secrets/bin/sops-install-secrets "
            f"{MANIFEST}\n", 0o755)
    t.write("/run/secrets.d/1/wifi-psk", "psk", 0o400)
    t.write("/run/secrets.d/1/db/password", "pw", 0o440)
    t.write("/run/secrets.d/1/app-token", "tok", 0o400)
    t.write("/run/secrets.d/1/rendered/app.env", "X=tok", 0o400)
    t.link("/run/secrets", "/run/secrets.d/1")
    t.link("/var/lib/app/token", "/run/secrets/app-token")
    return {
        "tree": t, "host_recipient": host_recipient, "manifest": manifest,
        "user_recipient": age.recipient_from_identity(user_identity),
        "args": dict(
            root=root, host="testhost", expected_recipients=[host_recipient],
            user_key={"path": "/home/rain/.config/sops/age/keys.txt", "owner": "rain",
                      "expected_recipient": age.recipient_from_identity(user_identity)},
            deploy_keys=[{"path": "/root/.ssh/nix-secrets-deploy", "alias": "nix-secrets"}],
        ),
    }


def _by_check(result: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in result["faults"]:
        out.setdefault(f["check"], []).append(f)
    return out


# --------------------------------------------------------------------------- keys without crypto
def test_parse_ssh_private_key_matches_cryptography() -> None:
    private, public = _ssh_key()
    key = parse_ssh_private_key(private)
    assert key.keytype == "ssh-ed25519" and not key.encrypted
    assert key.public_line.split()[1] == public.split()[1]
    assert sops_nix_check.ssh_seed_recipient(key.seed) == age.ssh_private_key_to_recipient(private)
    assert sops_nix_check.ssh_seed_recipient(key.seed) == age.ssh_public_key_to_recipient(public)


def test_parse_ssh_private_key_encrypted_and_rsa() -> None:
    private, public = _ssh_key(b"hunter2")
    key = parse_ssh_private_key(private)
    assert key.encrypted and key.seed is None
    assert age.ssh_public_key_to_recipient(key.public_line) == age.ssh_public_key_to_recipient(public)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    openssh = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption()).decode()
    assert parse_ssh_private_key(openssh).keytype == "ssh-rsa"
    pem = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()).decode()
    with pytest.raises(age.AgeKeyError, match="RSA"):
        parse_ssh_private_key(pem)


def test_parse_ssh_private_key_pkcs8_and_corrupt() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    pkcs8 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    assert sops_nix_check.ssh_seed_recipient(parse_ssh_private_key(pkcs8).seed) == \
        age.ssh_public_key_to_recipient(public)
    private, _unused = _ssh_key()
    lines = private.splitlines()
    with pytest.raises(age.AgeKeyError):
        parse_ssh_private_key("\n".join(lines[:3] + lines[-1:]))
    with pytest.raises(age.AgeKeyError, match="public key"):
        parse_ssh_private_key(public)


def test_identity_recipient_pure_python() -> None:
    identity = age.generate_identity()
    assert sops_nix_check.identity_recipient(identity) == age.recipient_from_identity(identity)


def test_target_side_needs_only_the_standard_library(tmp_path) -> None:
    """NixOS hosts have no PyPI packages: the whole target-side verifier runs with them blocked."""
    h = healthy(str(tmp_path))
    code = f"""
import json, sys
sys.path.insert(0, {os.path.join(REPO, '.collections')!r})
class Block:
    def find_spec(self, name, path=None, target=None):
        top = name.split('.')[0]
        if top not in sys.stdlib_module_names and top != 'ansible_collections':
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix_check import verify
print(json.dumps(verify(**json.loads(sys.argv[1]))))
"""
    out = subprocess.run([sys.executable, "-c", code, json.dumps(h["args"])], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ok"] and result["recipients"] == [h["host_recipient"]], result["faults"]


# --------------------------------------------------------------------------- manifest discovery
def test_finds_manifest_in_activation_script(tmp_path) -> None:
    healthy(str(tmp_path))
    assert Verifier(root=str(tmp_path)).find_manifests() == [MANIFEST]


def test_finds_manifests_with_flags_and_for_users(tmp_path) -> None:
    t = Tree(str(tmp_path))
    t.write("/run/current-system/activate",
            "/nix/store/x-sops-install-secrets/bin/sops-install-secrets -ignore-passwd /nix/store/u-manifest.json\n"
            "# not run: echo sops-install-secrets\n"
            "/nix/store/x-sops-install-secrets/bin/sops-install-secrets /nix/store/m-manifest.json\n", 0o755)
    assert Verifier(root=str(tmp_path)).find_manifests() == ["/nix/store/u-manifest.json", "/nix/store/m-manifest.json"]


def test_finds_manifest_in_systemd_unit(tmp_path) -> None:
    t = Tree(str(tmp_path))
    t.write("/run/current-system/activate", "#!/bin/sh\necho no sops here\n", 0o755)
    t.write("/nix/store/u-unit/sops-install-secrets.service",
            "[Service]\nType=oneshot\nExecStart=/nix/store/x-sops-install-secrets/bin/sops-install-secrets "
            "/nix/store/s-manifest.json\n", 0o444)
    t.link("/etc/systemd/system/sops-install-secrets.service", "/nix/store/u-unit/sops-install-secrets.service")
    assert Verifier(root=str(tmp_path)).find_manifests() == ["/nix/store/s-manifest.json"]


def test_finds_manifest_through_unit_script(tmp_path) -> None:
    t = Tree(str(tmp_path))
    t.write("/nix/store/w-unit-script-sops-install-secrets-start/bin/start",
            "#!/bin/sh\nset -e\n/nix/store/x/bin/sops-install-secrets /nix/store/w-manifest.json\n", 0o755)
    t.write("/etc/systemd/system/sops-install-secrets.service",
            "[Service]\nExecStart=/nix/store/w-unit-script-sops-install-secrets-start/bin/start\n", 0o444)
    assert Verifier(root=str(tmp_path)).find_manifests() == ["/nix/store/w-manifest.json"]


def test_no_manifest_is_a_fault(tmp_path) -> None:
    Tree(str(tmp_path))
    result = verify(root=str(tmp_path), host="bare")
    assert not result["ok"]
    assert result["faults"][0]["check"] == "manifest"
    assert result["faults"][0]["message"].startswith("bare: /run/current-system/activate")
    assert result["summary"] == "bare: 1 fault: manifest " + result["faults"][0]["message"].removeprefix("bare: ")


# --------------------------------------------------------------------------- a healthy host
def test_healthy_host_is_ok(tmp_path) -> None:
    h = healthy(str(tmp_path))
    result = verify(**h["args"])
    assert result["faults"] == []
    assert result["ok"] and result["summary"] == "testhost: ok"
    assert result["recipients"] == [h["host_recipient"]]
    assert result["manifests"] == [MANIFEST]
    assert result["sops_files"] == [f"{SOURCE}/sops/shared.yaml", f"{SOURCE}/sops/host.yaml"]
    assert {s["kind"] for s in result["key_sources"]} == {"age_key_file", "ssh_key"}


def test_explicit_manifest_parameter(tmp_path) -> None:
    h = healthy(str(tmp_path))
    os.unlink(h["tree"].p("/run/current-system/activate"))
    assert verify(manifests=[MANIFEST], **h["args"])["ok"]


def test_recipient_from_pub_when_private_key_missing(tmp_path) -> None:
    h = healthy(str(tmp_path))
    os.unlink(h["tree"].p("/etc/ssh/ssh_host_ed25519_key"))
    result = verify(**h["args"])
    ssh = [s for s in result["key_sources"] if s["kind"] == "ssh_key"][0]
    assert ssh["recipients"] == [h["host_recipient"]] and not ssh["usable"]
    assert [f["check"] for f in result["faults"]] == ["key_source"]
    assert "missing" in result["faults"][0]["message"]


# --------------------------------------------------------------------------- every fault at once
def test_reports_every_fault_not_just_the_first(tmp_path) -> None:
    h = healthy(str(tmp_path), other_uid_for=("rain",))
    t = h["tree"]
    os.chmod(t.p("/etc/ssh/ssh_host_ed25519_key"), 0o644)
    other_private, other_public = _ssh_key()
    t.write("/etc/ssh/ssh_host_ed25519_key.pub", other_public, 0o644)  # stale .pub
    t.write("/var/lib/sops-nix/key.txt", age.format_identity_file(age.generate_identity()))  # generateKey drift
    os.unlink(t.p("/run/secrets.d/1/wifi-psk"))
    os.chmod(t.p("/run/secrets.d/1/db/password"), 0o644)
    os.chmod(t.p("/home/rain/.config/sops/age/keys.txt"), 0o640)  # and owned by "root", not rain
    t.write("/root/.ssh/config", "Host other\n  IdentityFile /root/.ssh/other\n")
    result = verify(**h["args"])
    checks = _by_check(result)
    paths = {(f["check"], f["path"]) for f in result["faults"]}
    assert ("key_source", "/etc/ssh/ssh_host_ed25519_key") in paths
    assert ("key_source", "/etc/ssh/ssh_host_ed25519_key.pub") in paths
    assert ("recipient", "/var/lib/sops-nix/key.txt") in paths
    assert ("secret", "/run/secrets/wifi-psk") in paths
    assert ("secret", "/run/secrets/db/password") in paths
    assert ("ssh_config", "/root/.ssh/config") in paths
    assert len(checks["user_key"]) == 2  # owner and mode
    # db/password: its mode is wrong, and its owner "rain" is now another uid than the file's
    assert len([f for f in checks["secret"] if f["path"] == "/run/secrets/db/password"]) == 2
    for f in result["faults"]:
        assert f["message"].startswith(f"testhost: {f['path']}: ")
        assert f["fix"]
    mode_fault = next(f for f in checks["key_source"] if "mode" in f["message"])
    assert "0644" in mode_fault["message"] and mode_fault["fix"] == "chmod 0600 /etc/ssh/ssh_host_ed25519_key"
    wrong_mode = next(f for f in checks["secret"] if "mode" in f["message"])
    assert wrong_mode["fix"].startswith("chmod 0440 /run/secrets.d/1/db/password")
    missing = next(f for f in checks["secret"] if "missing" in f["message"])
    assert "wifi/psk" in missing["message"] and "nixos-rebuild switch" in missing["fix"]
    assert result["summary"].startswith(f"testhost: {len(result['faults'])} faults: ")
    assert not result["ok"]


def test_host_key_changed_against_sops_yaml(tmp_path) -> None:
    h = healthy(str(tmp_path))
    args = {**h["args"], "expected_recipients": [age.recipient_from_identity(age.generate_identity())]}
    result = verify(**args)
    assert {(f["check"], f["path"]) for f in result["faults"]} == {
        ("recipient", "/etc/ssh/ssh_host_ed25519_key"), ("recipient", "/var/lib/sops-nix/key.txt")}
    assert "rekey" in result["faults"][0]["fix"]


def test_generation_faults(tmp_path) -> None:
    h = healthy(str(tmp_path))
    t = h["tree"]
    t.link("/run/secrets", "/run/secrets.d/7")
    result = verify(**h["args"])
    gen = _by_check(result)["generation"]
    assert len(gen) == 1 and "does not exist" in gen[0]["message"]
    # every secret is then missing too: each is reported
    assert len(_by_check(result)["secret"]) == 3
    os.unlink(t.p("/run/secrets"))
    result = verify(**h["args"])
    assert "has not installed any secrets" in _by_check(result)["generation"][0]["message"]


def test_custom_path_into_old_generation(tmp_path) -> None:
    h = healthy(str(tmp_path))
    t = h["tree"]
    t.write("/run/secrets.d/0/app-token", "old", 0o400)
    t.link("/var/lib/app/token", "/run/secrets.d/0/app-token")
    result = verify(**h["args"])
    [fault] = result["faults"]
    assert fault["path"] == "/var/lib/app/token" and "not to the current generation" in fault["message"]


def test_secret_owner_by_uid_and_unknown_user(tmp_path) -> None:
    h = healthy(str(tmp_path))
    manifest = h["manifest"]
    manifest["secrets"][2]["uid"] = UID + 5
    manifest["secrets"][0]["owner"] = "ghost"
    h["tree"].write(MANIFEST, json.dumps(manifest), 0o444)
    result = verify(**h["args"])
    messages = [f["message"] for f in result["faults"]]
    assert any("owned by uid" in m and "app-token" in m for m in messages)
    assert any("'ghost' does not exist" in m for m in messages)


def test_user_key_recipient_mismatch_and_garbage(tmp_path) -> None:
    h = healthy(str(tmp_path))
    args = {**h["args"], "user_key": {**h["args"]["user_key"], "expected_recipient": h["host_recipient"]}}
    [fault] = verify(**args)["faults"]
    assert fault["check"] == "user_key" and "not the one registered for rain" in fault["message"]
    h["tree"].write("/home/rain/.config/sops/age/keys.txt", "not a key\n")
    [fault] = verify(**args)["faults"]
    assert "does not parse" in fault["message"] and "not a key" not in fault["message"]


def test_deploy_keys_and_ssh_config(tmp_path) -> None:
    h = healthy(str(tmp_path))
    t = h["tree"]
    args = {**h["args"], "deploy_keys": [{"path": "/root/.ssh/nix-secrets-deploy", "alias": "nix-secrets"},
                                         {"path": "/root/.ssh/nix-config-deploy", "alias": "nix-config"}]}
    result = verify(**args)
    paths = {(f["check"], f["path"]) for f in result["faults"]}
    assert paths == {("deploy_key", "/root/.ssh/nix-config-deploy"), ("ssh_config", "/root/.ssh/config")}
    t.write("/root/.ssh/config", "Host nix-secrets\n  IdentityFile=/root/.ssh/wrong\n", 0o666)
    result = verify(**h["args"])
    messages = " | ".join(f["message"] for f in result["faults"])
    assert "Bad owner or permissions" in messages and "does not use the deploy key" in messages


def test_parse_ssh_config_blocks() -> None:
    blocks = parse_ssh_config("IdentityFile /global\nHost a b\n IdentityFile ~/.ssh/a\nMatch all\n IdentityFile /m\n"
                              "Host=c\n  identityfile \"/root/.ssh/c key\"\n")
    assert blocks == [{"patterns": ["a", "b"], "identity_files": ["~/.ssh/a"]},
                      {"patterns": ["c"], "identity_files": ["/root/.ssh/c key"]}]


# --------------------------------------------------------------------------- hostile files on the host
class Blocked(BaseException):
    """Raised by the alarm: not an OSError, so no `except OSError` in the verifier can swallow it."""


@pytest.fixture
def deadline():
    """Fail instead of hanging the suite when the verifier blocks: SIGALRM interrupts a blocking open()."""
    def expired(signum, frame):
        raise Blocked("the verifier blocked for 10 s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("where", [
    MANIFEST, "/etc/ssh/ssh_host_ed25519_key.pub", "/etc/ssh/ssh_host_ed25519_key", "/var/lib/sops-nix/key.txt",
    "/home/rain/.config/sops/age/keys.txt", "/root/.ssh/nix-secrets-deploy", "/root/.ssh/config",
])
def test_a_fifo_is_a_fault_and_never_blocks_the_verifier(tmp_path, deadline, where) -> None:
    h = healthy(str(tmp_path))
    real = h["tree"].p(where)
    os.unlink(real)
    os.mkfifo(real, 0o600)
    result = verify(**h["args"])
    [fault] = [f for f in result["faults"] if f["path"] == where]
    assert fault["message"].startswith(f"testhost: {where}: ") and "not a regular file" in fault["message"]
    assert fault["fix"]


@pytest.mark.parametrize("where", ["/etc/passwd", "/run/current-system/activate"])
def test_a_fifo_in_place_of_what_the_verifier_reads_first_never_blocks(tmp_path, deadline, where) -> None:
    h = healthy(str(tmp_path))
    real = h["tree"].p(where)
    os.unlink(real)
    os.mkfifo(real, 0o644)
    result = verify(**h["args"])
    assert not result["ok"]  # no user names (passwd) or no manifest (activate): reported, not hung


def test_a_fifo_swapped_in_after_the_checks_looked_is_refused_when_opened(tmp_path, deadline) -> None:
    """The check that the file is regular and the read are two steps; the read itself refuses a FIFO."""
    from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix import rootfs

    h = healthy(str(tmp_path))
    os.unlink(h["tree"].p(MANIFEST))
    os.mkfifo(h["tree"].p(MANIFEST))
    with pytest.raises(rootfs.UnsafeFileError, match="FIFO"):
        rootfs.RootedFS(str(tmp_path)).read_text(MANIFEST, rootfs.MANIFEST)


@pytest.mark.parametrize(("where", "label"), [
    ("/etc/ssh/ssh_host_ed25519_key", "key file"), ("/var/lib/sops-nix/key.txt", "key file"),
    ("/home/rain/.config/sops/age/keys.txt", "key file"), (MANIFEST, "sops-nix manifest"),
])
def test_a_huge_sparse_file_is_refused_without_reading_it(tmp_path, where, label) -> None:
    h = healthy(str(tmp_path))
    os.truncate(h["tree"].p(where), 200 * 1024 * 1024)
    result = verify(**h["args"])
    [fault] = [f for f in result["faults"] if f["path"] == where]
    assert fault["message"].startswith(f"testhost: {where}: ")
    assert "209715200 bytes" in fault["message"] and f"more than a {label} can be" in fault["message"]


# --------------------------------------------------------------------------- sops files
@pytest.fixture(scope="module")
def sops_repo(tmp_path_factory, sops_bin) -> dict:
    """A secrets repo encrypted by the real sops for one host recipient, in every text format."""
    repo = tmp_path_factory.mktemp("repo")
    host = age.generate_identity()
    other = age.generate_identity()
    host_r, other_r = age.recipient_from_identity(host), age.recipient_from_identity(other)
    _unused, ssh_public = _ssh_key()
    (repo / "sops").mkdir()
    plain = {
        "sops/shared.yaml": "wifi:\n  psk: hunter2\n",
        "sops/app.json": '{"token": "t"}\n',
        "sops/app.env": "TOKEN=t\n",
        "sops/app.ini": "[main]\ntoken = t\n",
        "sops/other.yaml": "x: 1\n",
        "sops/rawssh.yaml": "x: 1\n",
    }
    for rel, text in plain.items():
        (repo / rel).write_text(text)
    recipients = {rel: f"{host_r},{other_r}" for rel in plain}
    recipients["sops/other.yaml"] = other_r
    recipients["sops/rawssh.yaml"] = f"{other_r},{ssh_public.split(' root@')[0]}"
    env = dict(os.environ, SOPS_DISABLE_VERSION_CHECK="1")
    for rel in plain:
        subprocess.run([sops_bin, "encrypt", "-i", "--age", recipients[rel], rel], cwd=repo, env=env, check=True,
                       capture_output=True)
    return {"repo": str(repo), "host": host_r, "other": other_r,
            "ssh_recipient": age.ssh_public_key_to_recipient(ssh_public)}


@pytest.mark.interop
@pytest.mark.parametrize("rel", ["sops/shared.yaml", "sops/app.json", "sops/app.env", "sops/app.ini"])
def test_file_recipients_every_format(sops_repo, rel) -> None:
    assert sorted(file_recipients(os.path.join(sops_repo["repo"], rel))) == sorted(
        [sops_repo["host"], sops_repo["other"]])


def test_file_recipients_errors(tmp_path) -> None:
    with pytest.raises(VerifyError, match="does not exist"):
        file_recipients(str(tmp_path / "nope.yaml"))
    (tmp_path / "plain.yaml").write_text("a: 1\n")
    with pytest.raises(VerifyError, match="not encrypted"):
        file_recipients(str(tmp_path / "plain.yaml"))


def test_map_sops_file(tmp_path) -> None:
    (tmp_path / "sops" / "hosts").mkdir(parents=True)
    (tmp_path / "sops" / "shared.yaml").write_text("")
    (tmp_path / "sops" / "hosts" / "h1.yaml").write_text("")
    repo = str(tmp_path)
    assert map_sops_file(f"{SOURCE}/sops/shared.yaml", repo) == f"{repo}/sops/shared.yaml"
    assert map_sops_file(f"/nix/store/{HASH}-shared.yaml", repo) == f"{repo}/sops/shared.yaml"
    assert map_sops_file(f"/nix/store/{HASH}-h1.yaml", repo) == f"{repo}/sops/hosts/h1.yaml"
    assert map_sops_file("sops/x.yaml", repo) == f"{repo}/sops/x.yaml"
    assert map_sops_file("/anything.yaml", None) == "/anything.yaml"
    with pytest.raises(VerifyError, match="no file named"):
        map_sops_file(f"/nix/store/{HASH}-missing.yaml", repo)


def _escape_tree(tmp_path) -> tuple[str, str]:
    """A repo with ways out of it: a file beside it, a symlinked file and a symlinked directory pointing out."""
    repo = tmp_path / "repo"
    (repo / "sops").mkdir(parents=True)
    (repo / "sops" / "shared.yaml").write_text("")
    (tmp_path / "outside.yaml").write_text("")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.yaml").write_text("")
    (repo / "sops" / "link.yaml").symlink_to(tmp_path / "outside.yaml")
    (repo / "sops" / "ext").symlink_to(tmp_path / "elsewhere")
    return str(repo), str(tmp_path / "outside.yaml")


@pytest.mark.parametrize("sops_file", [
    "../outside.yaml", "sops/../../outside.yaml", f"{SOURCE}/../outside.yaml", f"{SOURCE}/sops/link.yaml",
    f"{SOURCE}/sops/ext/x.yaml", "sops/ext/x.yaml", f"/nix/store/{HASH}-link.yaml", "/srv/link.yaml",
    f"/nix/store/{HASH}-source/..",
])
def test_map_sops_file_never_leaves_the_repo(tmp_path, sops_file) -> None:
    repo, _unused = _escape_tree(tmp_path)
    with pytest.raises(VerifyError, match="leads out of the secrets repo"):
        map_sops_file(sops_file, repo)


def test_controller_scope_reports_a_sops_file_that_leads_out_of_the_repo(tmp_path) -> None:
    repo, outside = _escape_tree(tmp_path)
    result = verify(host="h1", scope="controller", sops_files=["../outside.yaml", f"{SOURCE}/sops/link.yaml"],
                    secrets_repo=repo, recipients=[age.recipient_from_identity(age.generate_identity())])
    assert [f["path"] for f in result["faults"]] == ["../outside.yaml", f"{SOURCE}/sops/link.yaml"]
    for fault in result["faults"]:
        assert fault["message"].startswith(f"h1: {fault['path']}: ") and "leads out of the secrets repo" in \
            fault["message"]


def test_controller_refuses_a_fifo_as_a_sops_file(tmp_path, deadline) -> None:
    fifo = tmp_path / "x.yaml"
    os.mkfifo(fifo)
    [fault] = verify(host="h1", scope="controller", sops_files=[str(fifo)], recipients=["age1x"])["faults"]
    assert fault["path"] == str(fifo) and "not a regular file" in fault["message"]


@pytest.mark.interop
def test_sops_files_controller_scope(sops_repo) -> None:
    repo = sops_repo["repo"]
    files = [f"{SOURCE}/sops/shared.yaml", f"{SOURCE}/sops/app.json", f"{SOURCE}/sops/other.yaml"]
    result = verify(host="h1", scope="controller", sops_files=files, secrets_repo=repo,
                    recipients=[sops_repo["host"]])
    [fault] = result["faults"]
    assert fault["check"] == "sops_file" and fault["path"] == f"{repo}/sops/other.yaml"
    assert fault["message"].startswith(f"h1: {repo}/sops/other.yaml: ")
    assert "not encrypted for the host" in fault["message"] and "playbooks/rekey.yml" in fault["fix"]


@pytest.mark.interop
def test_raw_ssh_recipient_is_its_own_fault(sops_repo) -> None:
    repo = sops_repo["repo"]
    result = verify(host="h1", scope="controller", sops_files=[f"{repo}/sops/rawssh.yaml"],
                    recipients=[sops_repo["ssh_recipient"]])
    [fault] = result["faults"]
    assert "raw SSH key ssh-ed25519" in fault["message"] and "ssh_to_age" in fault["fix"]
    # Another host's raw key is not this host's fault; missing from the file still is.
    result = verify(host="h2", scope="controller", sops_files=[f"{repo}/sops/rawssh.yaml"],
                    recipients=[sops_repo["host"]])
    [fault] = result["faults"]
    assert "not encrypted for the host" in fault["message"]


# --------------------------------------------------------------------------- through Ansible
def test_module_runs_in_check_mode_and_changes_nothing(tmp_path) -> None:
    h = healthy(str(tmp_path))
    os.chmod(h["tree"].p("/run/secrets.d/1/wifi-psk"), 0o444)
    res = run_module_inproc("sops_nix_verify", h["args"], check=True)
    assert not res.failed and not res.changed, res.stdout
    assert res.result["ok"] is False
    [fault] = res.result["faults"]
    assert fault["path"] == "/run/secrets/wifi-psk"
    assert "AGE-SECRET-KEY" not in res.stdout and "PRIVATE KEY" not in res.stdout
    res = run_module_inproc("sops_nix_verify", dict(h["args"], fail_on_faults=True))
    assert res.failed and res.msg.startswith("testhost: 1 fault: secret /run/secrets/wifi-psk: ")
    assert "has mode 0444, the manifest asks for 0400" in res.msg and "\n" not in res.msg
