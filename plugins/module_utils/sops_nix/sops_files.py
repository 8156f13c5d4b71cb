# Copyright: nixfleet.sops contributors
# MIT License
"""The controller-side check: each sops file a host's manifest names lists one of the host's recipients.

Runs on the controller (``scope=controller``): reading sops metadata needs the
native sops engine (pyrage), so it is imported inside :func:`file_recipients`
and the rest of the verifier keeps to the standard library.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat

from ansible_collections.nixfleet.sops.plugins.module_utils.age import AgeKeyError, ssh_public_key_to_recipient
from ansible_collections.nixfleet.sops.plugins.module_utils.fsutil import walk_files
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.key_sources import FIX_REKEY
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.report import VerifyError
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.rootfs import file_type
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_nix.verifier import Verifier

_STORE_PATH = re.compile(r"^/nix/store/[0-9a-z]{32}-([^/]+)(/.*)?$")


class OutsideRepoError(VerifyError):
    """A ``sopsFile`` that leads out of the secrets repository (``..`` or a symlink)."""


def file_recipients(path: str) -> list[str]:
    """The age recipients a sops file lists in its metadata (all key groups), in file order.

    Runs on the controller only: it reads the metadata with the native sops
    engine, which needs pyrage, so the import stays inside the function and
    the target side of the verifier keeps to the standard library. Only a
    regular file is read (a FIFO would block the run). Raises VerifyError when
    the file cannot be read or has no sops metadata.
    """
    from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VerifyError("the file does not exist") from None
    except OSError as exc:
        raise VerifyError(f"cannot read it: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise VerifyError(f"it is {file_type(st.st_mode)}, not a regular file")
    try:
        sf = engine.load(path)
    except engine.SopsNotEncryptedError:
        raise VerifyError("no sops metadata: the file is not encrypted with sops") from None
    except engine.SopsError as exc:
        raise VerifyError(exc.message) from None
    return [r for group in sf.recipients for r in group]


def _inside(repo: str, rel: str, shown: str) -> str:
    """``repo/rel`` when it stays inside ``repo`` once ``..`` and every symlink are resolved.

    The path comes from a host's manifest, which the host controls: it must not
    make the controller read files outside the secrets repository.
    """
    candidate = os.path.normpath(os.path.join(repo, rel))
    real_repo, real = os.path.realpath(repo), os.path.realpath(candidate)
    if os.path.commonpath([real_repo, real]) != real_repo:
        raise OutsideRepoError(f"{shown} leads out of the secrets repo {repo} (to {real}); only files inside the "
                               "repository are checked")
    return candidate


def map_sops_file(manifest_path: str, repo: str | None) -> str:
    """Where a manifest's ``sopsFile`` lives in the secrets repository ``repo`` (a local checkout).

    sops-nix copies each file into the store: ``/nix/store/<hash>-source/sops/x.yaml`` (a flake
    input: the path below the store directory is the path in the repo) or
    ``/nix/store/<hash>-x.yaml`` (a path literal: only the name survives, which is then looked up
    as ``<repo>/x.yaml``, ``<repo>/sops/x.yaml`` or a unique file of that name in the repo).
    The result is always inside ``repo``: a path that leads out of it (``..``, a symlink) raises
    VerifyError, as does no (or no unique) match. Without ``repo`` the path is returned unchanged.
    """
    if not repo:
        return manifest_path
    store = _STORE_PATH.match(manifest_path)
    if store and store.group(2):
        candidate = _inside(repo, store.group(2).lstrip("/"), manifest_path)
        if os.path.isfile(candidate):
            return candidate
        name = posixpath.basename(manifest_path)
    elif store:
        name = store.group(1)
    elif not manifest_path.startswith("/"):
        return _inside(repo, manifest_path, manifest_path)
    else:
        name = posixpath.basename(manifest_path)
    for rel in (name, posixpath.join("sops", name)):
        candidate = _inside(repo, rel, manifest_path)
        if os.path.isfile(candidate):
            return candidate
    # The repository's one walk: no symlinks followed, no FIFOs or devices.
    matches = [os.path.join(repo, rel) for rel in walk_files(repo) if posixpath.basename(rel) == name]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise VerifyError(f"no file named {name} in the secrets repo {repo}")
    raise VerifyError(f"{len(matches)} files named {name} in the secrets repo {repo}: {', '.join(matches)}")


def check_sops_file(v: Verifier, file_path: str, shown_as: str, host_recipients: list[str]) -> None:
    """One sops file lists one of the host's recipients, in the age form sops-nix can use."""
    try:
        listed = file_recipients(file_path)
    except VerifyError as exc:
        v.fault("sops_file", file_path, f"cannot read its sops metadata ({exc})",
                "check verify_secrets_repo / verify_sops_files, and that the file is encrypted with sops")
        return
    where = "the file" if shown_as == file_path else f"the file (the host's {shown_as})"
    mine = set(host_recipients)
    raw_ssh = [r for r in listed if r.startswith("ssh-") and (_converted(r) in mine or not mine)]
    if raw_ssh:
        for recipient in raw_ssh:
            short = " ".join(recipient.split()[:2])[:40] + "…"
            v.fault("sops_file", file_path,
                    f"{where} lists the raw SSH key {short} as a recipient; sops-nix decrypts with the "
                    "converted age key and cannot use it",
                    "replace it in .sops.yaml with its age1… form (the nixfleet.sops.ssh_to_age filter), "
                    "then " + FIX_REKEY)
        return
    if not mine:
        v.fault("sops_file", file_path, f"{where}: no recipient of the host is known to compare with",
                "fix the host's key sources (faults above) or set verify_expected_recipient")
        return
    if not mine & set(listed):
        v.fault("sops_file", file_path,
                f"{where} is not encrypted for the host (none of {', '.join(sorted(mine))} is among its "
                f"{len(listed)} recipients): sops-nix on {v.host} cannot decrypt it at the next activation",
                FIX_REKEY + "; if the host was reinstalled, update its anchor in .sops.yaml first")


def _converted(recipient: str) -> str | None:
    try:
        return ssh_public_key_to_recipient(recipient)
    except AgeKeyError:
        return None


def check_sops_files(v: Verifier, files: list[str], repo: str | None, host_recipients: list[str]) -> None:
    """Map each manifest ``sopsFile`` into ``repo`` (when given) and check it."""
    for manifest_path in dict.fromkeys(files):
        try:
            local = map_sops_file(manifest_path, repo)
        except VerifyError as exc:
            what = str(exc) if isinstance(exc, OutsideRepoError) else f"cannot find it in the secrets repo: {exc}"
            v.fault("sops_file", manifest_path, what,
                    "set verify_sops_files explicitly, or verify_secrets_repo to the nix-secrets checkout")
            continue
        check_sops_file(v, local, manifest_path, host_recipients)
