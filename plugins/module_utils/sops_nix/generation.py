# Copyright: nixfleet.sops contributors
# MIT License
"""The secrets sops-nix installed: the current generation, each secret and template in it."""

from __future__ import annotations

import os
import posixpath
import stat
from typing import Any

from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.verifier import Verifier

DEFAULT_MOUNT_POINT = "/run/secrets.d"
DEFAULT_SYMLINK_PATH = "/run/secrets"
DEFAULT_SECRET_MODE = "0400"
FIX_ACTIVATE = (
    "re-run the activation (`nixos-rebuild switch`, or `systemctl restart sops-install-secrets` with "
    "sops.useSystemdActivation) and read its error (`journalctl -b -u sops-install-secrets` or the switch output)"
)


def check_generation(v: Verifier, manifest: dict[str, Any]) -> str | None:
    """``symlinkPath`` points at an existing ``secretsMountPoint/N``; returns that directory."""
    mount = (manifest.get("secretsMountPoint") or DEFAULT_MOUNT_POINT).rstrip("/")
    link = manifest.get("symlinkPath") or DEFAULT_SYMLINK_PATH
    st = v.fs.stat(link, follow=False)
    if st is None:
        v.fault("generation", link, "does not exist: sops-nix has not installed any secrets "
                                    "(the activation failed or never ran)", FIX_ACTIVATE)
        return None
    if not stat.S_ISLNK(st.st_mode):
        v.fault("generation", link, f"is not a symlink to a generation under {mount}",
                f"remove it (`rm -rf {link}`), then " + FIX_ACTIVATE)
        return None
    target = v.fs.readlink(link)
    if not target.startswith("/"):
        target = posixpath.normpath(posixpath.join(posixpath.dirname(link), target))
    if posixpath.dirname(target.rstrip("/")) != mount or not posixpath.basename(target.rstrip("/")).isdigit():
        v.fault("generation", link, f"points at {target}, not at a generation {mount}/<N>", FIX_ACTIVATE)
        return None
    gen = v.fs.stat(target)
    if gen is None or not stat.S_ISDIR(gen.st_mode):
        v.fault("generation", link, f"points at {target}, which does not exist (a dangling generation)",
                FIX_ACTIVATE)
        return None
    return target.rstrip("/")


def check_secret(v: Verifier, entry: dict[str, Any], generation: str | None, link: str, kind: str,
                 user_mode: bool = False) -> None:
    """One secret (or template): in place, in the current generation, with its owner, group and mode."""
    name = str(entry.get("name") or "")
    if not name:
        v.fault("manifest", link, f"a {kind} without a name in the manifest", "rebuild the system")
        return
    rel = name if kind == "secret" else f"rendered/{name}"
    path = entry.get("path") or posixpath.join(link, rel)
    label = f"{kind} {name!r}" + (f" (key {entry.get('key')!r} of {entry.get('sopsFile')})"
                                  if kind == "secret" and entry.get("sopsFile") else "")
    fix_missing = (FIX_ACTIVATE + (f"; check that {entry.get('sopsFile')} has the key {entry.get('key')!r} "
                                   "and that the host can decrypt it" if kind == "secret" else ""))
    if v.fs.stat(path, follow=False) is None:
        v.fault(kind, path, f"{label} is missing", fix_missing)
        return
    try:
        real = v.fs.resolve(path)
    except OSError as exc:
        v.fault(kind, path, f"{label}: {exc}", fix_missing)
        return
    st = v.fs.stat(real)
    if st is None:
        v.fault(kind, path, f"{label} is a dangling symlink (to {real})", fix_missing)
        return
    if generation and real != posixpath.join(generation, rel):
        v.fault(kind, path, f"{label} resolves to {real}, not to the current generation "
                            f"{posixpath.join(generation, rel)}",
                f"remove {path}, then " + FIX_ACTIVATE)
    if not stat.S_ISREG(st.st_mode):
        v.fault(kind, path, f"{label} is not a regular file", fix_missing)
        return
    option = f'sops.{"secrets" if kind == "secret" else "templates"}."{name}"'
    _check_mode(v, entry, st, path, real, kind, label, option)
    if not user_mode:  # home-manager's manifests (userMode) do not chown
        _check_owner(v, entry, st, path, real, kind, label, option)


def _check_mode(v: Verifier, entry: dict[str, Any], st: os.stat_result, path: str, real: str, kind: str,
                label: str, option: str) -> None:
    mode_text = str(entry.get("mode") or DEFAULT_SECRET_MODE)
    try:
        want_mode = int(mode_text, 8)
    except ValueError:
        v.fault("manifest", path, f"{label} has an invalid mode {mode_text!r}", f"fix {option}.mode")
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode != want_mode:
        v.fault(kind, path, f"{label} has mode {mode:04o}, the manifest asks for {want_mode:04o}",
                f"chmod {want_mode:04o} {real} (or re-run the activation, which resets it); "
                "find what changed it after the activation")


def _check_owner(v: Verifier, entry: dict[str, Any], st: os.stat_result, path: str, real: str, kind: str,
                 label: str, option: str) -> None:
    owner, group = entry.get("owner"), entry.get("group")
    want_uid = v.accounts.uid_of(owner) if owner not in (None, "") else int(entry.get("uid") or 0)
    want_gid = v.accounts.gid_of(group) if group not in (None, "") else int(entry.get("gid") or 0)
    if want_uid is None:
        v.fault(kind, path, f"{label}: its owner {owner!r} does not exist on the host",
                f"create the user or change {option}.owner")
    elif st.st_uid != want_uid:
        v.fault(kind, path, f"{label} is owned by uid {st.st_uid}{v.accounts.user_label(st.st_uid)}, the manifest "
                            f"asks for {owner or want_uid}",
                f"chown {owner or want_uid} {real} (or re-run the activation, which resets it)")
    if want_gid is None:
        v.fault(kind, path, f"{label}: its group {group!r} does not exist on the host",
                f"create the group or change {option}.group")
    elif st.st_gid != want_gid:
        v.fault(kind, path, f"{label} has group gid {st.st_gid}, the manifest asks for {group or want_gid}",
                f"chgrp {group or want_gid} {real} (or re-run the activation, which resets it)")
