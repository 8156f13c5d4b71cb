# Copyright: nixfleet.sops contributors
# MIT License
"""Ensure key files on disk: the logic behind the age_keypair and ssh_keypair modules.

Each ``ensure_*`` function decides first and writes second, so check mode runs
the same decisions and reports the same ``changed`` without touching disk.
Results carry only public material; private keys never leave these functions.
In check mode a key that would be generated is reported as such (``generated``
and a placeholder from :func:`would_generate`), never as a random key the real
run would not make.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from . import age, sshkeys
from .fsutil import (
    KEY_FILE_LIMIT,
    UnsafePathError,
    commit_all,
    discard_staged,
    make_dirs,
    read_regular,
    remove_made_dirs,
    resolve_write_target,
    stage_write,
)


def would_generate(what: str) -> str:
    """What check mode shows in place of a key it would generate (the real run makes another one)."""
    return f"(a new {what} would be generated)"


@dataclass
class KeyResult:
    """What an ensure_* call did (or would do in check mode). Public data only."""

    changed: bool = False
    path: str = ""
    actions: list[str] = field(default_factory=list)
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    public: dict[str, Any] = field(default_factory=dict)
    generated: list[str] = field(default_factory=list)  # keys made at random (in check mode: would be)

    def diff(self) -> dict[str, str]:
        """A diff of the public facts (never the key) for Ansible's --diff."""

        def fmt(d: dict[str, Any]) -> str:
            return "".join(f"{k}: {v}\n" for k, v in sorted(d.items()))

        return {"before": fmt(self.before), "after": fmt(self.after), "before_header": self.path,
                "after_header": self.path}


def _read_private(path: str) -> str:
    try:
        return read_regular(path, KEY_FILE_LIMIT, "key file").decode("utf-8")
    except UnsafePathError as exc:
        raise age.AgeKeyError(exc.message) from None
    except UnicodeDecodeError:
        raise age.AgeKeyError(f"{path}: not a text file") from None
    except OSError as exc:
        raise age.AgeKeyError(f"{path}: cannot read: {exc.strerror}") from None


def _prepare_parent(path: str, check_mode: bool, result: KeyResult) -> list[str]:
    """The key's directory, made 0700 when missing; returns the directories made."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        result.actions.append(f"create directory {parent} (0700)")
        if not check_mode:
            return make_dirs(parent, 0o700)
    return []


def _write_together(path: str, writes: list[tuple[str, bytes, int]], check_mode: bool, result: KeyResult) -> None:
    """The private key and its .pub land together or not at all (and a directory made for them goes again)."""
    made = _prepare_parent(path, check_mode, result)
    if check_mode:
        return
    staged: list[tuple[str, str]] = []
    try:
        for target, data, mode in writes:
            staged.append((stage_write(target, data, mode=mode, private=not mode & 0o077),
                           resolve_write_target(target)))
        commit_all(staged)
    except BaseException:
        discard_staged([tmp for tmp, _unused in staged])
        remove_made_dirs(made)
        raise


def _remove(paths: list[str], check_mode: bool, result: KeyResult) -> KeyResult:
    for p in paths:
        if os.path.lexists(p):
            result.changed = True
            result.actions.append(f"remove {p}")
            if not check_mode:
                os.unlink(p)
    return result


def ensure_age_keypair(
    path: str,
    state: str = "present",
    regenerate: str = "never",
    ssh_key_path: str | None = None,
    check_mode: bool = False,
) -> KeyResult:
    """Ensure an age identity file at ``path`` (age-keygen layout, 0600).

    With ``ssh_key_path`` the identity is derived from that ed25519 private key
    (what sops-nix puts in ``/var/lib/sops-nix/key.txt``) instead of being
    random; an existing file is then rewritten when it holds another identity.
    An existing file that does not parse is an error, never overwritten,
    unless ``regenerate=always``.
    """
    result = KeyResult(path=path)
    if state == "absent":
        if os.path.lexists(path):
            result.before = {"state": "present"}
            result.after = {"state": "absent"}
        return _remove([path], check_mode, result)

    wanted: str | None = None
    if ssh_key_path:
        try:
            wanted = age.ssh_private_key_to_identity(_read_private(ssh_key_path).encode())
        except age.AgeKeyError as exc:
            raise age.AgeKeyError(f"{ssh_key_path}: {exc}") from None

    current: list[str] = []
    if os.path.exists(path):
        if os.path.isdir(path):
            raise age.AgeKeyError(f"{path} is a directory, expected an age key file")
        if regenerate != "always":
            current = age.read_identity_file(path)
            result.before = {"recipient": age.recipient_from_identity(current[0])}

    if current and (wanted is None or wanted in current):
        identity = wanted or current[0]
    elif current:
        # Never drop identities someone may still need; replacing them must be asked for.
        raise age.AgeKeyError(
            f"{path} holds {len(current)} other identit{'y' if len(current) == 1 else 'ies'}, not the one derived "
            f"from {ssh_key_path}; set regenerate=always to replace the file"
        )
    else:
        identity = wanted or age.generate_identity()
        result.changed = True
        result.actions.append(("replace " if os.path.exists(path) else "create ") + path)
        if wanted is None:
            result.generated.append("age identity")
        _write_together(path, [(path, age.format_identity_file(identity).encode(), 0o600)], check_mode, result)

    # A derived identity is the same in check mode and in the real run; a random one is not.
    recipient = would_generate("age identity") if check_mode and result.generated else \
        age.recipient_from_identity(identity)
    result.after = {"recipient": recipient}
    result.public = {"recipient": recipient}
    return result


def ensure_ssh_keypair(
    path: str,
    comment: str = "",
    state: str = "present",
    regenerate: str = "never",
    check_mode: bool = False,
) -> KeyResult:
    """Ensure an ed25519 keypair at ``path`` (0600) and ``path.pub`` (0644).

    An existing private key is kept: a missing or stale ``.pub`` is rewritten
    from it, and a different ``comment`` is applied to both files with the same
    key. A key of another type (RSA, ECDSA…) is an error unless
    ``regenerate=always``.
    """
    pub_path = path + ".pub"
    result = KeyResult(path=path)
    if state == "absent":
        if os.path.lexists(path) or os.path.lexists(pub_path):
            result.before = {"state": "present"}
            result.after = {"state": "absent"}
        return _remove([path, pub_path], check_mode, result)

    keypair: sshkeys.Ed25519Keypair | None = None
    writes: list[tuple[str, bytes, int]] = []
    if os.path.exists(path) and regenerate != "always":
        try:
            keypair = sshkeys.from_private(_read_private(path))
        except age.AgeKeyError as exc:
            raise age.AgeKeyError(f"{path}: {exc}") from None
        result.before = {"public_key": keypair.public_line, "age_recipient": keypair.age_recipient}
        if comment and keypair.public_line.split(" ", 2)[2:] != [comment]:
            key = age.load_ssh_private_key(keypair.private_pem)
            keypair = sshkeys.Ed25519Keypair(
                private_pem=sshkeys.encode_private_key(key.seed, key.public, comment),
                public_line=sshkeys.public_line(key.public, comment),
            )
            result.changed = True
            result.actions.append(f"set comment of {path}")
            writes.append((path, keypair.private_pem, 0o600))

    if keypair is None:
        keypair = sshkeys.generate(comment)
        result.changed = True
        result.actions.append(("replace " if os.path.exists(path) else "create ") + path)
        result.generated.append("ssh key")
        writes.append((path, keypair.private_pem, 0o600))

    current_pub = None
    if os.path.exists(pub_path):
        current_pub = _read_private(pub_path).strip()
    if current_pub != keypair.public_line:
        result.changed = True
        result.actions.append(f"write {pub_path}")
        writes.append((pub_path, (keypair.public_line + "\n").encode(), 0o644))
    if writes:
        _write_together(path, writes, check_mode, result)

    result.after = {"public_key": keypair.public_line, "age_recipient": keypair.age_recipient}
    if check_mode and result.generated:
        result.after = {k: would_generate("ssh key") for k in result.after}
    result.public = dict(result.after)
    return result
