# Copyright: nixfleet.sops contributors
# MIT License
"""The keys sops-nix decrypts with on the host: ``ageKeyFile`` and each of ``ageSshKeyPaths``.

Each must exist, be a root-owned 0600 regular file, parse, and (when the
controller says which) have the recipient ``.sops.yaml`` lists for the host.
Recipients are derived in pure Python (x25519.py): the host has no crypto library.
"""

from __future__ import annotations

import stat

from ansible_collections.nixfleet.sops.plugins.module_utils.age import (
    AgeKeyError,
    bech32_decode,
    parse_identities,
    recipient_from_public_bytes,
    ssh_public_key_to_recipient,
    ssh_seed_recipient,
)
from ansible_collections.nixfleet.sops.plugins.module_utils.openssh import ED25519, parse_private_key
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.report import KeySource
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.verifier import Verifier
from ansible_collections.nixfleet.sops.plugins.module_utils.x25519 import public_key as x25519_public_key

FIX_REKEY = "run `ansible-playbook playbooks/rekey.yml` then redeploy (`nixos-rebuild switch`)"
FIX_PUSH_HOST_KEY = (
    "push the host key stored in the secrets repo (sops/host-keys/<host>.yaml) with "
    "`ansible-playbook playbooks/bootstrap.yml -l <host>`; with impermanence, check the persist prefix"
)


def identity_recipient(identity: str) -> str:
    """The ``age1…`` recipient of an ``AGE-SECRET-KEY-1…`` identity, in pure Python."""
    return recipient_from_public_bytes(x25519_public_key(bech32_decode(identity)[1]))


def private_file(v: Verifier, check: str, path: str, owner: str, what: str, fix_missing: str) -> bool:
    """Shared checks of a private key file: exists, regular, owned by ``owner``, no group/other bits.

    Returns False when the file is missing or not a regular file (nothing more to check).
    """
    st = v.fs.stat(path)
    if st is None:
        v.fault(check, path, f"{what} is missing", fix_missing)
        return False
    if not stat.S_ISREG(st.st_mode):
        v.fault(check, path, f"{what} is not a regular file", f"replace it with the key file; {fix_missing}")
        return False
    uid = v.accounts.uid_of(owner)
    if uid is not None and st.st_uid != uid:
        v.fault(check, path, f"{what} is owned by uid {st.st_uid}{v.accounts.user_label(st.st_uid)}, "
                             f"must be owned by {owner}",
                f"chown {owner}: {path}")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077 or not mode & 0o400:
        why = "readable by other users" if mode & 0o044 else "wrong permissions"
        v.fault(check, path, f"{what} has mode {mode:04o} ({why}), must be 0600", f"chmod 0600 {path}")
    return True


def check_age_key_file(v: Verifier, path: str, expected: list[str]) -> None:
    """ageKeyFile: private, parses, and (when known) matches the host's anchor."""
    if path in v.checked_key_paths:
        return
    v.checked_key_paths.add(path)
    source = KeySource(kind="age_key_file", path=path)
    v.report.key_sources.append(source)
    ok = private_file(
        v, "key_source", path, "root", "sops-nix's age key file (ageKeyFile)",
        "derive it from the host key (nixfleet.sops.age_keypair with ssh_key_path=/etc/ssh/ssh_host_ed25519_key) "
        "or remove sops.age.keyFile from the configuration; " + FIX_PUSH_HOST_KEY)
    text = v.read("key_source", path, "the age key file", FIX_PUSH_HOST_KEY) if ok else None
    if text is None:
        return
    try:
        identities = parse_identities(text, source=path)
        source.recipients = [identity_recipient(i) for i in identities]
        source.usable = True
    except AgeKeyError as exc:
        v.fault("key_source", path, f"the age key file does not parse: {exc}",
                "replace it with a valid age key file (age-keygen format)")
        return
    compare_expected(v, source, expected,
                     "sops.age.generateKey may have made a key of its own; delete the file, set "
                     "generateKey = false and derive it from the host key (nixfleet.sops.age_keypair "
                     "ssh_key_path=…), or register this recipient in .sops.yaml and " + FIX_REKEY)


def check_ssh_key(v: Verifier, path: str, expected: list[str]) -> None:
    """ageSshKeyPaths entry: private, unencrypted ed25519, .pub consistent, recipient as expected."""
    if path in v.checked_key_paths:
        return
    v.checked_key_paths.add(path)
    source = KeySource(kind="ssh_key", path=path)
    v.report.key_sources.append(source)
    pub_recipient = _pub_recipient(v, path + ".pub")
    ok = private_file(v, "key_source", path, "root", "the SSH host key (ageSshKeyPaths)", FIX_PUSH_HOST_KEY)
    if not ok:
        if pub_recipient:
            source.recipients = [pub_recipient]
        return
    text = v.read("key_source", path, "the SSH host key", FIX_PUSH_HOST_KEY)
    if text is None:
        return
    try:
        key = parse_private_key(text)
    except AgeKeyError as exc:
        v.fault("key_source", path, f"the SSH host key does not parse: {exc}", FIX_PUSH_HOST_KEY)
        return
    if key.keytype not in ("", ED25519):
        v.fault("key_source", path, f"the SSH host key is {key.keytype}; sops-nix converts only ed25519 keys",
                "point sops.age.sshKeyPaths at the ed25519 host key (/etc/ssh/ssh_host_ed25519_key)")
        return
    if key.encrypted or key.seed is None:
        v.fault("key_source", path, "the SSH host key is passphrase-protected; sops-nix cannot use it",
                "use an unencrypted host key (`ssh-keygen -p -N '' -f " + path + "`)")
        if pub_recipient:
            source.recipients = [pub_recipient]
        return
    recipient = ssh_seed_recipient(key.seed)
    if key.public_line and ssh_public_key_to_recipient(key.public_line) != recipient:
        v.fault("key_source", path, "the SSH host key is corrupt (its private and public halves disagree)",
                FIX_PUSH_HOST_KEY)
        return
    source.recipients = [recipient]
    source.usable = True
    if pub_recipient and pub_recipient != recipient:
        v.fault("key_source", path + ".pub",
                f"the public key file belongs to another key ({pub_recipient}, the private key is {recipient})",
                f"regenerate it: `ssh-keygen -y -f {path} > {path}.pub`")
    compare_expected(v, source, expected,
                     "the host key changed (reinstall? new key pushed?): restore the registered key from "
                     "sops/host-keys/<host>.yaml, or update the host's anchor in .sops.yaml to this "
                     "recipient and " + FIX_REKEY)


def _pub_recipient(v: Verifier, path: str) -> str | None:
    if v.fs.stat(path) is None:
        return None
    fix = f"regenerate it: `ssh-keygen -y -f {path[:-4]} > {path}`"
    text = v.read("key_source", path, "the SSH public key", fix)
    if text is None:
        return None
    try:
        return ssh_public_key_to_recipient(text)
    except AgeKeyError as exc:
        v.fault("key_source", path, f"the SSH public key does not parse: {exc}", fix)
        return None


def compare_expected(v: Verifier, source: KeySource, expected: list[str], fix: str) -> None:
    """A fault when none of the source's recipients is one ``.sops.yaml`` lists for the host."""
    if not expected or not source.recipients:
        return
    if not set(source.recipients) & set(expected):
        v.fault("recipient", source.path,
                f"its recipient {', '.join(source.recipients)} is not the one .sops.yaml lists for the host "
                f"({', '.join(expected)})", fix)
