# Copyright: nixfleet.sops contributors
# MIT License
"""Keys bootstrap puts on the host besides sops-nix's: the primary user's age key and root's deploy keys."""

from __future__ import annotations

import posixpath
import re
import shlex
import stat

from ansible_collections.nixfleet.sops.plugins.module_utils.age import AgeKeyError, parse_identities
from ansible_collections.nixfleet.sops.plugins.module_utils.openssh import parse_private_key
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.key_sources import (
    FIX_REKEY,
    identity_recipient,
    private_file,
)
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.rootfs import CONFIG
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.verifier import Verifier

DEFAULT_SSH_CONFIG = "/root/.ssh/config"


def check_user_key(v: Verifier, path: str, owner: str, expected_recipient: str | None) -> None:
    """The user's own age key for `sops` on the host: owned by the user, 0600, parses, matches."""
    fix_missing = ("push the user's key stored in sops/<host>.yaml (keys/age) with "
                   "`ansible-playbook playbooks/bootstrap.yml -l <host>`")
    if not private_file(v, "user_key", path, owner, f"{owner}'s age key", fix_missing):
        return
    if v.accounts.uid_of(owner) is None:
        v.fault("user_key", path, f"the user {owner!r} does not exist on the host",
                "check the user name given as user_key.owner")
    else:
        _check_reachable(v, "user_key", path, owner)
    text = v.read("user_key", path, "the user's age key", fix_missing)
    if text is None:
        return
    try:
        identities = parse_identities(text, source=path)
    except AgeKeyError as exc:
        v.fault("user_key", path, f"the user's age key does not parse: {exc}", fix_missing)
        return
    recipients = [identity_recipient(i) for i in identities]
    if expected_recipient and expected_recipient not in recipients:
        v.fault("user_key", path,
                f"the key's recipient {', '.join(recipients)} is not the one registered for {owner} "
                f"({expected_recipient})",
                f"{fix_missing}, or register this recipient as the user's anchor in .sops.yaml and " + FIX_REKEY)


def _check_reachable(v: Verifier, check: str, path: str, owner: str) -> None:
    """The user must be able to walk to its key: every parent directory searchable by it
    (owned by the user, or with the group/other x bit). A root-owned 0700 home — what a
    persist-prefix copy can leave — makes `sops` as the user fail although the key is fine."""
    uid = v.accounts.uid_of(owner)
    directory = posixpath.dirname(posixpath.normpath(path))
    while directory not in ("/", ""):
        st = v.fs.stat(directory)
        if st is not None and uid != 0:
            mode = stat.S_IMODE(st.st_mode)
            if not (st.st_uid == uid and mode & 0o100) and not mode & 0o001 and not mode & 0o010:
                v.fault(check, path,
                        f"{owner} cannot reach the key: {directory} is {mode:04o} owned by uid "
                        f"{st.st_uid}{v.accounts.user_label(st.st_uid)}",
                        f"chown {owner}: {directory} (or chmod o+x {directory})")
                return
        directory = posixpath.dirname(directory)


def check_deploy_key(v: Verifier, path: str, alias: str, ssh_config: str) -> None:
    """A deploy key: private, parses, and root's ssh config uses it for ``Host <alias>``."""
    fix_missing = ("push the deploy key stored in sops/<host>.yaml (deploy-keys/<repo>) with "
                   "`ansible-playbook playbooks/bootstrap.yml -l <host>`")
    ok = private_file(v, "deploy_key", path, "root", "the deploy key", fix_missing)
    text = v.read("deploy_key", path, "the deploy key", fix_missing) if ok else None
    if text is not None:
        try:
            if parse_private_key(text).encrypted:
                v.fault("deploy_key", path, "the deploy key is passphrase-protected; unattended git cannot use it",
                        f"remove the passphrase (`ssh-keygen -p -N '' -f {path}`)")
        except AgeKeyError as exc:
            v.fault("deploy_key", path, f"the deploy key does not parse: {exc}", fix_missing)
    if alias:
        _check_alias(v, path, alias, ssh_config)


def _check_alias(v: Verifier, path: str, alias: str, ssh_config: str) -> None:
    """root's ssh config has a ``Host <alias>`` block whose IdentityFile is the deploy key."""
    block_fix = (f"add to {ssh_config}:  Host {alias} / HostName <forge> / IdentityFile {path} / "
                 "IdentitiesOnly yes")
    if v.fs.stat(ssh_config) is None:
        v.fault("ssh_config", ssh_config, f"does not exist, so no Host {alias} block uses {path}", block_fix)
        return
    text = v.read("ssh_config", ssh_config, "root's ssh config", block_fix, CONFIG)
    if text is None:
        return
    hosts = parse_ssh_config(text)
    home = posixpath.dirname(posixpath.dirname(ssh_config))
    blocks = [b for b in hosts if alias in b["patterns"]]
    if not blocks:
        v.fault("ssh_config", ssh_config, f"has no 'Host {alias}' block for the deploy key {path}", block_fix)
        return
    files = [_expand_home(f, home) for b in blocks for f in b["identity_files"]]
    if posixpath.normpath(path) not in files:
        v.fault("ssh_config", ssh_config,
                f"the 'Host {alias}' block does not use the deploy key {path} as its IdentityFile"
                + (f" (it names {', '.join(files)})" if files else ""),
                f"set 'IdentityFile {path}' in the 'Host {alias}' block")


def check_ssh_config_permissions(v: Verifier, ssh_config: str) -> None:
    """ssh refuses a config writable by others ("Bad owner or permissions")."""
    st = v.fs.stat(ssh_config)
    if st is None:
        return
    if st.st_mode & 0o022 or st.st_uid != 0:
        v.fault("ssh_config", ssh_config,
                f"has mode {stat.S_IMODE(st.st_mode):04o} owned by uid {st.st_uid}; ssh refuses it "
                "(\"Bad owner or permissions\")", f"chown root: {ssh_config} && chmod 0600 {ssh_config}")


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
