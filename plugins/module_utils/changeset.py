# Copyright: nixfleet.sops contributors
# MIT License
"""One change of a secrets repository, planned in memory and written all at once.

Bootstrap, key rotation and revocation change a repository the same way:
``.sops.yaml`` edited in memory (``SopsConfig``: each edit a verified
transaction), a host's own sops files opened once and changed (values set or
unset), every other file brought to its edited rule by the fleet plan
(``Plan.with_config``: nothing is read twice), and a few plain files of the
repository (the key inventory, a rotation journal). Nothing is visible until
every file that needs a change proved it can be opened; then every new file is
renamed into place at once (``fleet.publish`` records the paths as not yet
committed first), and the files to remove are unlinked (recorded too).

Check mode is the same code with a sink that writes nothing, so what it
reports is what a real run does.
"""

from __future__ import annotations

import contextlib
import os
import stat
from typing import Any

from . import fleet, secrets, vcs
from . import sops as engine
from .errors import NixfleetError
from .fsutil import CONFIG_LIMIT, make_dirs, read_regular, remove_made_dirs, remove_stale_temps


class ChangesetError(NixfleetError, ValueError):
    """A file the change would adopt or rewrite cannot be trusted or opened; names it and the fix."""


def check_trusted(path: str, repo: str, error: type[NixfleetError] = ChangesetError) -> None:
    """A key file a change adopts must be one the repository's owner (or root) wrote.

    Otherwise a local user who can write into the repository could plant a
    key encrypted to the admin's public recipient and have it adopted.
    """
    st = os.lstat(path)
    trusted = {0, os.geteuid(), os.stat(repo).st_uid}
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode) or st.st_uid not in trusted or st.st_mode & 0o022:
        raise error(
            f"{path} is not a regular file owned by you, root or the repository's owner and writable only by them "
            f"(uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}): refusing to trust the keys in it; check who "
            "wrote it (git log, git status) and remove or fix it")


def open_existing(path: str, identities: Any, repo: str | None = None,
                  error: type[NixfleetError] = ChangesetError) -> engine.SopsFile | None:
    """``path`` opened once and decrypted with the admin identities, or None when it does not exist.

    With ``repo``, the file must be one the repository's owner wrote (check_trusted).
    """
    if not os.path.lexists(path):
        return None
    if repo is not None:
        check_trusted(path, repo, error)
    sf = engine.SopsFile.open(path).unlock(identities)
    try:
        sf.documents()
    except engine.SopsNoIdentityError as exc:
        raise error(
            f"{path} exists but no admin identity opens it, so its keys cannot be reused and will not be "
            f"replaced: {exc}. Give the admin identity (SOPS_AGE_KEY_FILE or identity_files)."
        ) from None
    return sf


def value_at(sf: engine.SopsFile | None, keypath: list[str]) -> str | None:
    """The string at ``keypath`` of an opened file; None when the file or the key path is absent."""
    if sf is None:
        return None
    try:
        value = sf.get(keypath)
    except engine.SopsKeyPathError:
        return None
    return value if isinstance(value, str) else None


def _readers(sf: engine.SopsFile) -> set[str]:
    return {r for group in sf.recipients for r in group}


class Changeset:
    """Edits of one secrets repository, made in memory against one plan, then written at once.

    ``config`` is the plan's ``SopsConfig``, edited in place by the caller.
    ``open``/``set_values`` change a host's own files; ``write_text`` and
    ``remove`` plain repository files; ``stage`` brings every file to its
    (edited) rule and stages everything; ``publish`` makes it visible.
    """

    def __init__(self, plan: fleet.Plan, identities: Any = None, check_mode: bool = False, what: str = "change",
                 error: type[NixfleetError] = ChangesetError) -> None:
        self.plan = plan
        self.repo = plan.repo
        self.config = plan.config
        self.config_before = plan.config.text
        self.keyring = engine.keyring(identities)
        self.check_mode = check_mode
        self.what = what
        self.error = error
        self.files: dict[str, engine.SopsFile] = {}  # the host's own files, opened once
        self._texts: dict[str, str] = {}
        self._markers: dict[str, str] = {}
        self._copies: dict[str, bytes] = {}
        self._removals: list[str] = []
        self._readers_before: dict[str, set[str]] = {}
        self.touched: list[str] = []
        self.rekeyed: list[str] = []
        self.changes: list[dict[str, Any]] = []
        self._staged: fleet.Staged | None = None
        self._sink: Any = None
        self._marker_sink: Any = None
        self._made: list[str] = []

    # ------------------------------------------------------------------ reading
    def path(self, rel: str) -> str:
        """Absolute path of ``rel`` in the repository."""
        return os.path.join(self.repo, rel)

    def open(self, rel: str) -> engine.SopsFile | None:
        """The repository file ``rel`` opened once with the admin identities (None when absent)."""
        if rel not in self.files:
            sf = open_existing(self.path(rel), self.keyring, self.repo, self.error)
            if sf is None:
                return None
            self.files[rel] = sf
            self._readers_before[rel] = _readers(sf)
        return self.files[rel]

    def value(self, rel: str, keypath: list[str]) -> str | None:
        """The string at ``keypath`` of ``rel`` (None when absent)."""
        return value_at(self.open(rel), keypath)

    # ------------------------------------------------------------------ changing
    def set_values(self, rel: str, values: dict[tuple[str, ...], str | None]) -> engine.SopsFile:
        """Set (or, for None, unset) values of ``rel``, created for its rule when missing.

        An emptied mapping (``deploy-keys-next`` once its last key goes) is removed too.
        """
        sf = self.open(rel)
        if sf is None:
            sf = secrets.new_file_for_rule(self.path(rel), self.config, need_dir=False)
            self.files[rel] = sf
            self._readers_before[rel] = set()
        for keypath, value in values.items():
            if value is not None:
                sf.set(list(keypath), value)
                continue
            if sf.raw is not None and sf.unset(list(keypath)) and len(keypath) > 1:
                parent = sf.get(list(keypath[:-1])) if _has(sf, keypath[:-1]) else None
                if isinstance(parent, dict) and not [k for k in parent if not isinstance(k, engine.Comment)]:
                    sf.unset(list(keypath[:-1]))
        return sf

    def write_text(self, rel: str, text: str, marker: bool = False) -> None:
        """Write the plain file ``rel`` (the key inventory, a journal) with everything else.

        A ``marker`` (a rotation journal's new state) is renamed into place after
        every other file, so a run killed while renaming never leaves it saying
        that a step is done whose files are not all in place.
        """
        (self._markers if marker else self._texts)[rel] = text

    def copy_to(self, rel: str, data: bytes) -> None:
        """Write ``data`` (a sops file's new bytes) at ``rel`` with everything else (an archive copy)."""
        self._copies[rel] = data

    def remove(self, rel: str) -> None:
        """Remove ``rel`` once everything else is in place (it stays in version control history)."""
        if rel not in self._removals and os.path.lexists(self.path(rel)):
            self._removals.append(rel)

    # ------------------------------------------------------------------ staging
    def _own_to_rule(self, rel: str, sf: engine.SopsFile, rotate_lost: bool) -> None:
        rule = self.config.rule_for(self.path(rel))
        # Sound stanzas stay, new ones for the recipients added (SopsFile.updatekeys, as a fleet rekey does).
        sf.updatekeys(rule.key_groups, shamir_threshold=rule.shamir_threshold, foreign=rule.foreign, rewrap_all=False)
        before, after = self._readers_before[rel], _readers(sf)
        lost = sorted(before - after)
        if rotate_lost and lost and sf.raw is not None:
            sf.rotate()
        if before != after:
            self.changes.append(fleet.change_record(rel, rule.path_regex, sorted(after - before), lost,
                                                    fleet.recipient_names(self.config),
                                                    rotate_lost and bool(lost) and sf.raw is not None))

    def stage(self, rotate_lost: bool = False) -> None:
        """Bring every file to its rule (own files too) and stage every write; nothing is visible yet.

        ``rotate_lost`` also gives a new data key to every file that loses a
        recipient. Files to remove are left alone. Every other file that needs
        a change must open first, or nothing is staged.
        """
        own = set(self.files) | set(self._removals)
        plan = self.plan.with_config(self.config)
        jobs = [j for j in fleet.rekey_jobs(plan, rotate_lost) if j.rel not in own]
        if not self.check_mode:
            remove_stale_temps(self.repo)
        ids = tuple(self.keyring.identities) if self.keyring else None
        staged = fleet.run_jobs(jobs, ids, self.check_mode, root=self.repo)
        fleet.refuse_failures(self.what, staged, False)
        self._staged = staged
        # Every write lands inside the repository: a link that leads out of it is refused.
        sink = engine.NullSink() if self.check_mode else engine.StagedSink(root=self.repo)
        self._sink = sink
        self._marker_sink = engine.NullSink() if self.check_mode else engine.StagedSink(root=self.repo)
        try:
            if self.config.text != self.config_before:
                sink.write(self.config.path, self.config.text.encode("utf-8"))
                self._touch(fleet.CONFIG_NAME)
            for rel, sf in self.files.items():
                if rel in self._removals:
                    continue
                self._own_to_rule(rel, sf, rotate_lost)
                if sf.changed:
                    self._mkdir(rel)
                    sf.write(sink)
                    self._touch(rel)
            plain = [(sink, r, d) for r, d in self._copies.items()]
            plain += [(sink, r, t.encode("utf-8")) for r, t in self._texts.items()]
            plain += [(self._marker_sink, r, t.encode("utf-8")) for r, t in self._markers.items()]
            for to, rel, data in plain:
                if not self._same(rel, data):
                    self._mkdir(rel)
                    to.write(self.path(rel), data)
                    self._touch(rel)
        except BaseException:
            self.discard()
            raise
        names = fleet.recipient_names(self.config)
        for job in jobs:
            r = staged.results[job.rel]
            if r["status"] == "changed":
                self.rekeyed.append(job.rel)
                self._touch(job.rel)
                self.changes.append(fleet.change_record(job.rel, plan.by_rel[job.rel].rule, r["added"],
                                                        r["removed"], names, job.rotate))
        for rel in self._removals:
            self._touch(rel)

    def _same(self, rel: str, data: bytes) -> bool:
        try:
            return read_regular(self.path(rel), CONFIG_LIMIT, "repository file") == data
        except FileNotFoundError:
            return False

    def _mkdir(self, rel: str) -> None:
        if not self.check_mode:
            self._made += make_dirs(os.path.dirname(self.path(rel)), 0o755)

    def _touch(self, rel: str) -> None:
        if rel not in self.touched:
            self.touched.append(rel)

    @property
    def rotated(self) -> list[str]:
        """Files that get a new data key."""
        return [c["path"] for c in self.changes if c.get("rotated")]

    def discard(self) -> None:
        """Throw away everything staged (nothing was visible), and the directories made for it."""
        if self._staged is not None:
            self._staged.discard()
        for sink in (self._sink, self._marker_sink):
            if isinstance(sink, engine.StagedSink):
                sink.discard()
        remove_made_dirs(self._made)

    def publish(self) -> list[str]:
        """Make every staged file visible at once, then remove what goes; return the touched paths.

        Every path is recorded as not yet committed before anything changes, so
        the next commit in the repository takes them, also after a kill.
        """
        if self.check_mode or self._staged is None:
            return self.touched
        pairs = list(getattr(self._sink, "staged", [])) + self._staged.pairs
        pairs += list(getattr(self._marker_sink, "staged", []))
        try:
            if self._removals:
                vcs.record_pending(self.repo, [self.path(r) for r in self._removals])
            fleet.publish(self.repo, self.what, pairs)
        except BaseException:
            self.discard()  # publish put nothing in place (else it said what is new)
            raise
        for rel in self._removals:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(rel))
        return self.touched


def _has(sf: engine.SopsFile, keypath: tuple[str, ...]) -> bool:
    try:
        sf.get(list(keypath))
        return True
    except engine.SopsKeyPathError:
        return False
