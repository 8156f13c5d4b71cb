# Copyright: nixfleet.sops contributors
# MIT License
"""sops-nix on a host, checked against the host's own sops-nix manifest.

This module runs ON THE TARGET (NixOS hosts have Python's standard library and
nothing from PyPI), so it imports only the standard library and the pure parts
of ``age.py`` and ``x25519.py``.

Every check reports every fault it finds instead of stopping at the first one.
A fault names the host, the path and what to do about it. All paths are the
target's paths; ``root`` is a prefix under which the target's tree is found
(``/`` on the host itself, a temporary tree in tests, a mounted install
elsewhere), and symlinks are followed inside that root, as the host would.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import socket
import stat
from dataclasses import asdict, dataclass, field
from typing import Any

from ansible_collections.nixfleet.sops.plugins.module_utils.age import (
    AgeKeyError,
    bech32_decode,
    parse_identities,
    recipient_from_public_bytes,
    ssh_public_key_to_recipient,
    ssh_seed_recipient,
)
from ansible_collections.nixfleet.sops.plugins.module_utils.errors import NixfleetError
from ansible_collections.nixfleet.sops.plugins.module_utils.openssh import ED25519, parse_private_key
from ansible_collections.nixfleet.sops.plugins.module_utils.x25519 import public_key as x25519_public_key

ACTIVATE_SCRIPT = "/run/current-system/activate"
UNIT_NAME = "sops-install-secrets.service"
UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/current-system/etc/systemd/system",
    "/run/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
)
DEFAULT_MOUNT_POINT = "/run/secrets.d"
DEFAULT_SYMLINK_PATH = "/run/secrets"
DEFAULT_SECRET_MODE = "0400"
DEFAULT_SSH_CONFIG = "/root/.ssh/config"

FIX_REKEY = "run `ansible-playbook playbooks/rekey.yml` then redeploy (`nixos-rebuild switch`)"
FIX_ACTIVATE = (
    "re-run the activation (`nixos-rebuild switch`, or `systemctl restart sops-install-secrets` with "
    "sops.useSystemdActivation) and read its error (`journalctl -b -u sops-install-secrets` or the switch output)"
)
FIX_PUSH_HOST_KEY = (
    "push the host key stored in the secrets repo (sops/host-keys/<host>.yaml) with "
    "`ansible-playbook playbooks/bootstrap.yml -l <host>`; with impermanence, check the persist prefix"
)

_STORE_PATH = re.compile(r"^/nix/store/[0-9a-z]{32}-([^/]+)(/.*)?$")


class VerifyError(NixfleetError):
    """A problem with the verifier's own input (not a fault on the host)."""


@dataclass
class Fault:
    """One thing wrong on a host: which check, where, what, and what to do."""

    check: str
    path: str
    message: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class KeySource:
    """A key sops-nix decrypts with: the ``ageKeyFile`` or one of the ``ageSshKeyPaths``."""

    kind: str  # age_key_file | ssh_key
    path: str
    recipients: list[str] = field(default_factory=list)
    usable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- keys without crypto
# The one OpenSSH parser (openssh.py) reads private keys without any crypto library; the verifier's
# old name for it stays importable.
parse_ssh_private_key = parse_private_key


def identity_recipient(identity: str) -> str:
    """The ``age1…`` recipient of an ``AGE-SECRET-KEY-1…`` identity, in pure Python."""
    return recipient_from_public_bytes(x25519_public_key(bech32_decode(identity)[1]))


# --------------------------------------------------------------------------- sops files (controller side)
def file_recipients(path: str) -> list[str]:
    """The age recipients a sops file lists in its metadata (all key groups), in file order.

    Runs on the controller only: it reads the metadata with the native sops
    engine, which needs pyrage, so the import stays inside the function and
    the target side of this module keeps to the standard library.
    Raises VerifyError when the file cannot be read or has no sops metadata.
    """
    from . import sops as engine

    if not os.path.exists(path):
        raise VerifyError("the file does not exist")
    try:
        sf = engine.load(path)
    except engine.SopsNotEncryptedError:
        raise VerifyError("no sops metadata: the file is not encrypted with sops") from None
    except engine.SopsError as exc:
        raise VerifyError(exc.message) from None
    return [r for group in sf.recipients for r in group]


def map_sops_file(manifest_path: str, repo: str | None) -> str:
    """Where a manifest's ``sopsFile`` lives in the secrets repository ``repo`` (a local checkout).

    sops-nix copies each file into the store: ``/nix/store/<hash>-source/sops/x.yaml`` (a flake
    input: the path below the store directory is the path in the repo) or
    ``/nix/store/<hash>-x.yaml`` (a path literal: only the name survives, which is then looked up
    as ``<repo>/x.yaml``, ``<repo>/sops/x.yaml`` or a unique file of that name in the repo).
    Without ``repo`` the path is returned unchanged. Raises VerifyError when no (or no unique)
    file matches.
    """
    if not repo:
        return manifest_path
    store = _STORE_PATH.match(manifest_path)
    if store and store.group(2):
        candidate = os.path.join(repo, store.group(2).lstrip("/"))
        if os.path.isfile(candidate):
            return candidate
        name = posixpath.basename(manifest_path)
    elif store:
        name = store.group(1)
    elif not manifest_path.startswith("/"):
        return os.path.join(repo, manifest_path)
    else:
        name = posixpath.basename(manifest_path)
    for candidate in (os.path.join(repo, name), os.path.join(repo, "sops", name)):
        if os.path.isfile(candidate):
            return candidate
    matches = []
    for dirpath, dirnames, filenames in os.walk(repo):
        dirnames[:] = [d for d in dirnames if d not in (".git", ".jj")]
        if name in filenames:
            matches.append(os.path.join(dirpath, name))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise VerifyError(f"no file named {name} in the secrets repo {repo}")
    raise VerifyError(f"{len(matches)} files named {name} in the secrets repo {repo}: {', '.join(sorted(matches))}")


# --------------------------------------------------------------------------- manifest discovery
def _manifest_from_command(line: str) -> list[str]:
    """Manifest paths in a shell line that runs sops-install-secrets (flags skipped)."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        tokens = line.split()
    found = []
    for i, token in enumerate(tokens):
        if posixpath.basename(token) != "sops-install-secrets":
            continue
        for arg in tokens[i + 1 :]:
            if arg.startswith("-"):
                continue
            found.append(arg)
            break
    return found


class Verifier:
    """Collects the faults of one host. Each ``check_*`` method adds faults and never raises."""

    def __init__(self, root: str = "/", host: str | None = None) -> None:
        self.root = root or "/"
        self.host = host or socket.gethostname()
        self.faults: list[Fault] = []
        self.key_sources: list[KeySource] = []
        self.manifests: list[str] = []
        self.sops_files: list[str] = []
        self._checked_key_paths: set[str] = set()
        self._passwd: dict[str, tuple[int, int, str]] | None = None
        self._groups: dict[str, int] | None = None

    # ----------------------------------------------------------------- helpers
    def fault(self, check: str, path: str, what: str, fix: str) -> None:
        self.faults.append(Fault(check=check, path=path, message=f"{self.host}: {path}: {what}", fix=fix))

    def host_path(self, path: str) -> str:
        """The path on this machine of the target's ``path``."""
        if self.root == "/":
            return path
        return os.path.join(self.root, path.lstrip("/"))

    def resolve(self, path: str) -> str:
        """Follow symlinks in the target's ``path`` as the host would; returns a target path."""
        parts = [p for p in path.split("/") if p]
        current = "/"
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == ".":
                continue
            if part == "..":
                current = posixpath.dirname(current)
                continue
            candidate = posixpath.join(current, part)
            real = self.host_path(candidate)
            if os.path.islink(real):
                hops += 1
                if hops > 40:
                    raise OSError(f"too many levels of symbolic links at {candidate}")
                target = os.readlink(real)
                if target.startswith("/"):
                    current = "/"
                parts = [p for p in target.split("/") if p] + parts
            else:
                current = candidate
        return current

    def resolve_parent(self, path: str) -> str:
        """``path`` with symlinks resolved in its directories but not in its last component."""
        return posixpath.join(self.resolve(posixpath.dirname(path)), posixpath.basename(path))

    def stat(self, path: str, follow: bool = True) -> os.stat_result | None:
        """stat of the target's ``path`` (None when it does not exist)."""
        try:
            if follow:
                return os.stat(self.host_path(self.resolve(path)))
            return os.lstat(self.host_path(self.resolve_parent(path)))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def read_text(self, path: str) -> str:
        with open(self.host_path(self.resolve(path)), encoding="utf-8") as fh:
            return fh.read()

    def _load_passwd(self) -> None:
        if self._passwd is not None:
            return
        self._passwd, self._groups = {}, {}
        for name, target in (("passwd", self._passwd), ("group", self._groups)):
            try:
                text = self.read_text(f"/etc/{name}")
            except (OSError, UnicodeDecodeError):
                continue
            for line in text.splitlines():
                fields = line.split(":")
                if len(fields) < 4 or not fields[2].isdigit():
                    continue
                if name == "passwd" and len(fields) >= 6:
                    target[fields[0]] = (int(fields[2]), int(fields[3]), fields[5])
                elif name == "group":
                    target[fields[0]] = int(fields[2])

    def uid_of(self, user: str | int | None) -> int | None:
        """uid of a user name (from the target's /etc/passwd, or NSS on the host itself)."""
        if user is None or isinstance(user, int) or str(user).isdigit():
            return None if user is None else int(user)
        self._load_passwd()
        assert self._passwd is not None
        if user in self._passwd:
            return self._passwd[user][0]
        if self.root == "/":
            import pwd

            try:
                return pwd.getpwnam(user).pw_uid
            except KeyError:
                return None
        return None

    def gid_of(self, group: str | int | None) -> int | None:
        """gid of a group name (from the target's /etc/group, or NSS on the host itself)."""
        if group is None or isinstance(group, int) or str(group).isdigit():
            return None if group is None else int(group)
        self._load_passwd()
        assert self._groups is not None
        if group in self._groups:
            return self._groups[group]
        if self.root == "/":
            import grp

            try:
                return grp.getgrnam(group).gr_gid
            except KeyError:
                return None
        return None

    def _private_file(self, check: str, path: str, owner: str, what: str, fix_missing: str) -> bool:
        """Shared checks of a private key file: exists, regular, owned by ``owner``, no group/other bits."""
        st = self.stat(path)
        if st is None:
            self.fault(check, path, f"{what} is missing", fix_missing)
            return False
        if not stat.S_ISREG(st.st_mode):
            self.fault(check, path, f"{what} is not a regular file", f"replace it with the key file; {fix_missing}")
            return False
        uid = self.uid_of(owner)
        if uid is not None and st.st_uid != uid:
            self.fault(check, path, f"{what} is owned by uid {st.st_uid}{self._user_label(st.st_uid)}, "
                                    f"must be owned by {owner}",
                       f"chown {owner}: {path}")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077 or not mode & 0o400:
            why = "readable by other users" if mode & 0o044 else "wrong permissions"
            self.fault(check, path, f"{what} has mode {mode:04o} ({why}), must be 0600",
                       f"chmod 0600 {path}")
        return True

    def _user_label(self, uid: int) -> str:
        self._load_passwd()
        assert self._passwd is not None
        for name, (u, _, _) in self._passwd.items():
            if u == uid:
                return f" ({name})"
        return ""

    # ----------------------------------------------------------------- manifests
    def find_manifests(self) -> list[str]:
        """Manifest paths sops-nix runs with: the activation script first, then the systemd unit."""
        found: list[str] = []
        try:
            for line in self.read_text(ACTIVATE_SCRIPT).splitlines():
                if "sops-install-secrets" in line:
                    found.extend(_manifest_from_command(line))
        except (OSError, UnicodeDecodeError):
            pass
        for unit_dir in UNIT_DIRS:
            try:
                text = self.read_text(posixpath.join(unit_dir, UNIT_NAME))
            except (OSError, UnicodeDecodeError):
                continue
            for line in text.splitlines():
                key, _, value = line.strip().partition("=")
                if key.strip() != "ExecStart" or not value.strip():
                    continue
                command = value.strip().lstrip("-@:+!")
                direct = _manifest_from_command(command)
                if direct:
                    found.extend(direct)
                    continue
                # NixOS wraps `script =` into a unit-script; look one level into it.
                try:
                    script = shlex.split(command)[0]
                    for inner in self.read_text(script).splitlines():
                        if "sops-install-secrets" in inner:
                            found.extend(_manifest_from_command(inner))
                except (OSError, UnicodeDecodeError, ValueError, IndexError):
                    pass
            break
        return list(dict.fromkeys(found))

    def load_manifest(self, path: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.read_text(path))
        except FileNotFoundError:
            self.fault("manifest", path, "the sops-nix manifest named by the activation does not exist",
                       "switch to the configuration again (`nixos-rebuild switch`); the store path may have been "
                       "garbage-collected")
            return None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            self.fault("manifest", path, f"cannot read the sops-nix manifest ({exc})",
                       "check the path given as `manifest`, or rebuild the system")
            return None
        if not isinstance(data, dict) or not isinstance(data.get("secrets", []), list):
            self.fault("manifest", path, "not a sops-nix manifest (no 'secrets' list)",
                       "pass the JSON manifest that `sops-install-secrets` runs with")
            return None
        return data

    # ----------------------------------------------------------------- key sources
    def check_age_key_file(self, path: str, expected: list[str]) -> None:
        """ageKeyFile: private, parses, and (when known) matches the host's anchor."""
        if path in self._checked_key_paths:
            return
        self._checked_key_paths.add(path)
        source = KeySource(kind="age_key_file", path=path)
        self.key_sources.append(source)
        ok = self._private_file(
            "key_source", path, "root", "sops-nix's age key file (ageKeyFile)",
            "derive it from the host key (nixfleet.sops.age_keypair with ssh_key_path=/etc/ssh/ssh_host_ed25519_key) "
            "or remove sops.age.keyFile from the configuration; " + FIX_PUSH_HOST_KEY)
        if not ok:
            return
        try:
            identities = parse_identities(self.read_text(path), source=path)
            source.recipients = [identity_recipient(i) for i in identities]
            source.usable = True
        except (AgeKeyError, UnicodeDecodeError, OSError) as exc:
            self.fault("key_source", path, f"the age key file does not parse: {exc}",
                       "replace it with a valid age key file (age-keygen format)")
            return
        self._compare_expected(source, expected,
                               "sops.age.generateKey may have made a key of its own; delete the file, set "
                               "generateKey = false and derive it from the host key (nixfleet.sops.age_keypair "
                               "ssh_key_path=…), or register this recipient in .sops.yaml and " + FIX_REKEY)

    def check_ssh_key(self, path: str, expected: list[str]) -> None:
        """ageSshKeyPaths entry: private, unencrypted ed25519, .pub consistent, recipient as expected."""
        if path in self._checked_key_paths:
            return
        self._checked_key_paths.add(path)
        source = KeySource(kind="ssh_key", path=path)
        self.key_sources.append(source)
        pub_recipient = self._pub_recipient(path + ".pub")
        ok = self._private_file("key_source", path, "root", "the SSH host key (ageSshKeyPaths)", FIX_PUSH_HOST_KEY)
        if not ok:
            if pub_recipient:
                source.recipients = [pub_recipient]
            return
        try:
            key = parse_ssh_private_key(self.read_text(path))
        except (AgeKeyError, UnicodeDecodeError, OSError) as exc:
            self.fault("key_source", path, f"the SSH host key does not parse: {exc}", FIX_PUSH_HOST_KEY)
            return
        if key.keytype not in ("", ED25519):
            self.fault("key_source", path, f"the SSH host key is {key.keytype}; sops-nix converts only ed25519 keys",
                       "point sops.age.sshKeyPaths at the ed25519 host key (/etc/ssh/ssh_host_ed25519_key)")
            return
        if key.encrypted or key.seed is None:
            self.fault("key_source", path, "the SSH host key is passphrase-protected; sops-nix cannot use it",
                       "use an unencrypted host key (`ssh-keygen -p -N '' -f " + path + "`)")
            if pub_recipient:
                source.recipients = [pub_recipient]
            return
        recipient = ssh_seed_recipient(key.seed)
        if key.public_line and ssh_public_key_to_recipient(key.public_line) != recipient:
            self.fault("key_source", path, "the SSH host key is corrupt (its private and public halves disagree)",
                       FIX_PUSH_HOST_KEY)
            return
        source.recipients = [recipient]
        source.usable = True
        if pub_recipient and pub_recipient != recipient:
            self.fault("key_source", path + ".pub",
                       f"the public key file belongs to another key ({pub_recipient}, the private key is {recipient})",
                       f"regenerate it: `ssh-keygen -y -f {path} > {path}.pub`")
        self._compare_expected(source, expected,
                               "the host key changed (reinstall? new key pushed?): restore the registered key from "
                               "sops/host-keys/<host>.yaml, or update the host's anchor in .sops.yaml to this "
                               "recipient and " + FIX_REKEY)

    def _pub_recipient(self, path: str) -> str | None:
        if self.stat(path) is None:
            return None
        try:
            return ssh_public_key_to_recipient(self.read_text(path))
        except (AgeKeyError, UnicodeDecodeError, OSError) as exc:
            self.fault("key_source", path, f"the SSH public key does not parse: {exc}",
                       f"regenerate it: `ssh-keygen -y -f {path[:-4]} > {path}`")
            return None

    def _compare_expected(self, source: KeySource, expected: list[str], fix: str) -> None:
        if not expected or not source.recipients:
            return
        if not set(source.recipients) & set(expected):
            self.fault("recipient", source.path,
                       f"its recipient {', '.join(source.recipients)} is not the one .sops.yaml lists for the host "
                       f"({', '.join(expected)})", fix)

    # ----------------------------------------------------------------- generation and secrets
    def check_generation(self, manifest: dict[str, Any]) -> str | None:
        """``symlinkPath`` points at an existing ``secretsMountPoint/N``; returns that directory."""
        mount = (manifest.get("secretsMountPoint") or DEFAULT_MOUNT_POINT).rstrip("/")
        link = manifest.get("symlinkPath") or DEFAULT_SYMLINK_PATH
        st = self.stat(link, follow=False)
        if st is None:
            self.fault("generation", link, "does not exist: sops-nix has not installed any secrets "
                                           "(the activation failed or never ran)", FIX_ACTIVATE)
            return None
        if not stat.S_ISLNK(st.st_mode):
            self.fault("generation", link, f"is not a symlink to a generation under {mount}",
                       f"remove it (`rm -rf {link}`), then " + FIX_ACTIVATE)
            return None
        target = os.readlink(self.host_path(self.resolve_parent(link)))
        if not target.startswith("/"):
            target = posixpath.normpath(posixpath.join(posixpath.dirname(link), target))
        if posixpath.dirname(target.rstrip("/")) != mount or not posixpath.basename(target.rstrip("/")).isdigit():
            self.fault("generation", link, f"points at {target}, not at a generation {mount}/<N>", FIX_ACTIVATE)
            return None
        gen = self.stat(target)
        if gen is None or not stat.S_ISDIR(gen.st_mode):
            self.fault("generation", link, f"points at {target}, which does not exist (a dangling generation)",
                       FIX_ACTIVATE)
            return None
        return target.rstrip("/")

    def check_secret(self, entry: dict[str, Any], generation: str | None, link: str, kind: str,
                     user_mode: bool = False) -> None:
        """One secret (or template): in place, in the current generation, with its owner, group and mode."""
        name = str(entry.get("name") or "")
        if not name:
            self.fault("manifest", link, f"a {kind} without a name in the manifest", "rebuild the system")
            return
        rel = name if kind == "secret" else f"rendered/{name}"
        default_path = posixpath.join(link, rel)
        path = entry.get("path") or default_path
        label = f"{kind} {name!r}" + (f" (key {entry.get('key')!r} of {entry.get('sopsFile')})"
                                      if kind == "secret" and entry.get("sopsFile") else "")
        fix_missing = (FIX_ACTIVATE + (f"; check that {entry.get('sopsFile')} has the key {entry.get('key')!r} "
                                       "and that the host can decrypt it" if kind == "secret" else ""))
        if self.stat(path, follow=False) is None:
            self.fault(kind, path, f"{label} is missing", fix_missing)
            return
        try:
            real = self.resolve(path)
        except OSError as exc:
            self.fault(kind, path, f"{label}: {exc}", fix_missing)
            return
        st = self.stat(real)
        if st is None:
            self.fault(kind, path, f"{label} is a dangling symlink (to {real})", fix_missing)
            return
        if generation and real != posixpath.join(generation, rel):
            self.fault(kind, path, f"{label} resolves to {real}, not to the current generation "
                                   f"{posixpath.join(generation, rel)}",
                       f"remove {path}, then " + FIX_ACTIVATE)
        if not stat.S_ISREG(st.st_mode):
            self.fault(kind, path, f"{label} is not a regular file", fix_missing)
            return
        mode_text = str(entry.get("mode") or DEFAULT_SECRET_MODE)
        option = f'sops.{"secrets" if kind == "secret" else "templates"}."{name}"'
        try:
            want_mode = int(mode_text, 8)
        except ValueError:
            self.fault("manifest", path, f"{label} has an invalid mode {mode_text!r}", f"fix {option}.mode")
            want_mode = None
        mode = stat.S_IMODE(st.st_mode)
        if want_mode is not None and mode != want_mode:
            self.fault(kind, path, f"{label} has mode {mode:04o}, the manifest asks for {want_mode:04o}",
                       f"chmod {want_mode:04o} {real} (or re-run the activation, which resets it); "
                       "find what changed it after the activation")
        if user_mode:
            return  # home-manager's manifests (userMode) do not chown
        owner, group = entry.get("owner"), entry.get("group")
        want_uid = self.uid_of(owner) if owner not in (None, "") else int(entry.get("uid") or 0)
        want_gid = self.gid_of(group) if group not in (None, "") else int(entry.get("gid") or 0)
        if want_uid is None:
            self.fault(kind, path, f"{label}: its owner {owner!r} does not exist on the host",
                       f"create the user or change {option}.owner")
        elif st.st_uid != want_uid:
            self.fault(kind, path, f"{label} is owned by uid {st.st_uid}{self._user_label(st.st_uid)}, the manifest "
                                   f"asks for {owner or want_uid}",
                       f"chown {owner or want_uid} {real} (or re-run the activation, which resets it)")
        if want_gid is None:
            self.fault(kind, path, f"{label}: its group {group!r} does not exist on the host",
                       f"create the group or change {option}.group")
        elif st.st_gid != want_gid:
            self.fault(kind, path, f"{label} has group gid {st.st_gid}, the manifest asks for {group or want_gid}",
                       f"chgrp {group or want_gid} {real} (or re-run the activation, which resets it)")

    def check_manifest(self, path: str, expected: list[str]) -> None:
        """Everything one manifest asks for: key sources, generation, secrets, templates."""
        manifest = self.load_manifest(path)
        if manifest is None:
            return
        self.manifests.append(path)
        key_file = manifest.get("ageKeyFile") or ""
        ssh_keys = [p for p in manifest.get("ageSshKeyPaths") or [] if p]
        if not key_file and not ssh_keys:
            self.fault("key_source", path, "the manifest names no age key (neither ageKeyFile nor ageSshKeyPaths)",
                       "set sops.age.sshKeyPaths = [ \"/etc/ssh/ssh_host_ed25519_key\" ] (or sops.age.keyFile)")
        if key_file:
            self.check_age_key_file(key_file, expected)
        for ssh_key in ssh_keys:
            self.check_ssh_key(ssh_key, expected)
        link = manifest.get("symlinkPath") or DEFAULT_SYMLINK_PATH
        user_mode = bool(manifest.get("userMode"))
        generation = self.check_generation(manifest)
        for entry in manifest.get("secrets") or []:
            if isinstance(entry, dict):
                self.check_secret(entry, generation, link, "secret", user_mode)
                sops_file = entry.get("sopsFile")
                if sops_file and sops_file not in self.sops_files:
                    self.sops_files.append(sops_file)
        for entry in manifest.get("templates") or []:
            if isinstance(entry, dict):
                self.check_secret(entry, generation, link, "template", user_mode)

    # ----------------------------------------------------------------- user and deploy keys
    def check_user_key(self, path: str, owner: str, expected_recipient: str | None) -> None:
        """The user's own age key for `sops` on the host: owned by the user, 0600, parses, matches."""
        fix_missing = ("push the user's key stored in sops/<host>.yaml (keys/age) with "
                       "`ansible-playbook playbooks/bootstrap.yml -l <host>`")
        if not self._private_file("user_key", path, owner, f"{owner}'s age key", fix_missing):
            return
        if self.uid_of(owner) is None:
            self.fault("user_key", path, f"the user {owner!r} does not exist on the host",
                       "check the user name given as user_key.owner")
        else:
            self._check_reachable("user_key", path, owner)
        try:
            identities = parse_identities(self.read_text(path), source=path)
        except (AgeKeyError, UnicodeDecodeError, OSError) as exc:
            self.fault("user_key", path, f"the user's age key does not parse: {exc}", fix_missing)
            return
        recipients = [identity_recipient(i) for i in identities]
        if expected_recipient and expected_recipient not in recipients:
            self.fault("user_key", path,
                       f"the key's recipient {', '.join(recipients)} is not the one registered for {owner} "
                       f"({expected_recipient})",
                       f"{fix_missing}, or register this recipient as the user's anchor in .sops.yaml and "
                       + FIX_REKEY)

    def _check_reachable(self, check: str, path: str, owner: str) -> None:
        """The user must be able to walk to its key: every parent directory searchable by it
        (owned by the user, or with the group/other x bit). A root-owned 0700 home — what a
        persist-prefix copy can leave — makes `sops` as the user fail although the key is fine."""
        uid = self.uid_of(owner)
        directory = posixpath.dirname(posixpath.normpath(path))
        while directory not in ("/", ""):
            st = self.stat(directory)
            if st is not None and uid != 0:
                mode = stat.S_IMODE(st.st_mode)
                if not (st.st_uid == uid and mode & 0o100) and not mode & 0o001 and not mode & 0o010:
                    self.fault(check, path,
                               f"{owner} cannot reach the key: {directory} is {mode:04o} owned by uid "
                               f"{st.st_uid}{self._user_label(st.st_uid)}",
                               f"chown {owner}: {directory} (or chmod o+x {directory})")
                    return
            directory = posixpath.dirname(directory)

    def check_deploy_key(self, path: str, alias: str, ssh_config: str) -> None:
        """A deploy key: private, parses, and root's ssh config uses it for ``Host <alias>``."""
        fix_missing = ("push the deploy key stored in sops/<host>.yaml (deploy-keys/<repo>) with "
                       "`ansible-playbook playbooks/bootstrap.yml -l <host>`")
        if self._private_file("deploy_key", path, "root", "the deploy key", fix_missing):
            try:
                key = parse_ssh_private_key(self.read_text(path))
                if key.encrypted:
                    self.fault("deploy_key", path,
                               "the deploy key is passphrase-protected; unattended git cannot use it",
                               f"remove the passphrase (`ssh-keygen -p -N '' -f {path}`)")
            except (AgeKeyError, UnicodeDecodeError, OSError) as exc:
                self.fault("deploy_key", path, f"the deploy key does not parse: {exc}", fix_missing)
        if not alias:
            return
        block_fix = (f"add to {ssh_config}:  Host {alias} / HostName <forge> / IdentityFile {path} / "
                     "IdentitiesOnly yes")
        try:
            hosts = parse_ssh_config(self.read_text(ssh_config))
        except FileNotFoundError:
            self.fault("ssh_config", ssh_config, f"does not exist, so no Host {alias} block uses {path}", block_fix)
            return
        except (OSError, UnicodeDecodeError) as exc:
            self.fault("ssh_config", ssh_config, f"cannot be read: {exc}", block_fix)
            return
        home = posixpath.dirname(posixpath.dirname(ssh_config))
        blocks = [b for b in hosts if alias in b["patterns"]]
        if not blocks:
            self.fault("ssh_config", ssh_config, f"has no 'Host {alias}' block for the deploy key {path}", block_fix)
            return
        files = [_expand_home(f, home) for b in blocks for f in b["identity_files"]]
        if posixpath.normpath(path) not in files:
            self.fault("ssh_config", ssh_config,
                       f"the 'Host {alias}' block does not use the deploy key {path} as its IdentityFile"
                       + (f" (it names {', '.join(files)})" if files else ""),
                       f"set 'IdentityFile {path}' in the 'Host {alias}' block")

    def check_ssh_config_permissions(self, ssh_config: str) -> None:
        """ssh refuses a config writable by others ("Bad owner or permissions")."""
        st = self.stat(ssh_config)
        if st is None:
            return
        if st.st_mode & 0o022 or st.st_uid != 0:
            self.fault("ssh_config", ssh_config,
                       f"has mode {stat.S_IMODE(st.st_mode):04o} owned by uid {st.st_uid}; ssh refuses it "
                       "(\"Bad owner or permissions\")", f"chown root: {ssh_config} && chmod 0600 {ssh_config}")

    # ----------------------------------------------------------------- sops files
    def check_sops_file(self, file_path: str, shown_as: str, host_recipients: list[str]) -> None:
        """One sops file lists one of the host's recipients, in the age form sops-nix can use."""
        try:
            listed = file_recipients(file_path)
        except VerifyError as exc:
            self.fault("sops_file", file_path, f"cannot read its sops metadata ({exc})",
                       "check verify_secrets_repo / verify_sops_files, and that the file is encrypted with sops")
            return
        where = "the file" if shown_as == file_path else f"the file (the host's {shown_as})"
        mine = set(host_recipients)
        raw_ssh = []
        for recipient in listed:
            if recipient.startswith("ssh-"):
                try:
                    converted = ssh_public_key_to_recipient(recipient)
                except AgeKeyError:
                    converted = None
                if converted in mine or not mine:
                    raw_ssh.append(recipient)
        if raw_ssh:
            for recipient in raw_ssh:
                short = " ".join(recipient.split()[:2])[:40] + "…"
                self.fault("sops_file", file_path,
                           f"{where} lists the raw SSH key {short} as a recipient; sops-nix decrypts with the "
                           "converted age key and cannot use it",
                           "replace it in .sops.yaml with its age1… form (the nixfleet.sops.ssh_to_age filter), "
                           "then " + FIX_REKEY)
            return
        if not mine:
            self.fault("sops_file", file_path, f"{where}: no recipient of the host is known to compare with",
                       "fix the host's key sources (faults above) or set verify_expected_recipient")
            return
        if not mine & set(listed):
            self.fault("sops_file", file_path,
                       f"{where} is not encrypted for the host (none of {', '.join(sorted(mine))} is among its "
                       f"{len(listed)} recipients): sops-nix on {self.host} cannot decrypt it at the next activation",
                       FIX_REKEY + "; if the host was reinstalled, update its anchor in .sops.yaml first")

    def check_sops_files(self, files: list[str], repo: str | None, host_recipients: list[str]) -> None:
        """Map each manifest ``sopsFile`` into ``repo`` (when given) and check it."""
        for manifest_path in dict.fromkeys(files):
            try:
                local = map_sops_file(manifest_path, repo)
            except VerifyError as exc:
                self.fault("sops_file", manifest_path, f"cannot find it in the secrets repo: {exc}",
                           "set verify_sops_files explicitly, or verify_secrets_repo to the nix-secrets checkout")
                continue
            self.check_sops_file(local, manifest_path, host_recipients)

    # ----------------------------------------------------------------- result
    @property
    def recipients(self) -> list[str]:
        """Recipients of the key sources sops-nix can actually use on the host."""
        return list(dict.fromkeys(r for s in self.key_sources if s.usable for r in s.recipients))

    def result(self) -> dict[str, Any]:
        faults = [f.to_dict() for f in self.faults]
        if faults:
            n = len(faults)
            summary = f"{self.host}: {n} fault{'s' if n != 1 else ''}: " + "; ".join(
                f"{f['check']} {f['path']}" for f in faults)
        else:
            summary = f"{self.host}: ok"
        return {
            "host": self.host,
            "ok": not faults,
            "faults": faults,
            "recipients": self.recipients,
            "key_sources": [s.to_dict() for s in self.key_sources],
            "manifests": self.manifests,
            "sops_files": self.sops_files,
            "summary": summary,
        }


def parse_ssh_config(text: str) -> list[dict[str, list[str]]]:
    """Host blocks of an ssh_config: ``patterns`` and ``identity_files`` of each (Match ends a block)."""
    blocks: list[dict[str, list[str]]] = []
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^(\S+?)\s*(?:=\s*|\s+)(.*)$", line)
        if not match:
            continue
        key, value = match.group(1).lower(), match.group(2).strip()
        try:
            values = shlex.split(value)
        except ValueError:
            values = value.split()
        if key == "host":
            current = {"patterns": values, "identity_files": []}
            blocks.append(current)
        elif key == "match":
            current = None
        elif key == "identityfile" and current is not None and values:
            current["identity_files"].append(values[0])
    return blocks


def _expand_home(path: str, home: str) -> str:
    if path.startswith("~/"):
        path = posixpath.join(home, path[2:])
    return posixpath.normpath(path.replace("%d", home))


def verify(
    root: str = "/",
    host: str | None = None,
    manifests: list[str] | None = None,
    expected_recipients: list[str] | None = None,
    user_key: dict[str, Any] | None = None,
    deploy_keys: list[dict[str, Any]] | None = None,
    ssh_config: str = DEFAULT_SSH_CONFIG,
    sops_files: list[str] | None = None,
    secrets_repo: str | None = None,
    recipients: list[str] | None = None,
    scope: str = "target",
) -> dict[str, Any]:
    """Run every check and return the result dict the module returns.

    ``scope='target'`` checks the host (manifests, keys, generation, secrets, user and deploy
    keys, and ``sops_files`` if given). ``scope='controller'`` checks only ``sops_files``
    (mapped into ``secrets_repo``) against ``recipients`` (the host's, from a target run)
    and ``expected_recipients``.
    """
    verifier = Verifier(root=root, host=host)
    expected = [r.strip() for r in expected_recipients or [] if r and r.strip()]
    if scope == "target":
        paths = list(manifests or []) or verifier.find_manifests()
        if not paths:
            verifier.fault("manifest", ACTIVATE_SCRIPT,
                           f"no sops-nix manifest found: {ACTIVATE_SCRIPT} runs no sops-install-secrets and there "
                           f"is no {UNIT_NAME}",
                           "import sops-nix (sops-nix.nixosModules.sops), declare sops.secrets and switch to the "
                           "configuration; or pass the manifest path as `manifest`")
        for path in paths:
            verifier.check_manifest(path, expected)
        if user_key and user_key.get("path"):
            verifier.check_user_key(user_key["path"], str(user_key.get("owner") or "root"),
                                    user_key.get("expected_recipient"))
        keys = [k for k in deploy_keys or [] if k and k.get("path")]
        if any(k.get("alias") for k in keys):
            verifier.check_ssh_config_permissions(ssh_config)
        for key in keys:
            verifier.check_deploy_key(key["path"], str(key.get("alias") or ""), ssh_config)
    host_recipients = list(dict.fromkeys([*(recipients or []), *verifier.recipients])) or expected
    if sops_files:
        verifier.check_sops_files(list(sops_files), secrets_repo, host_recipients)
    return verifier.result()
