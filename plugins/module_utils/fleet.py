# Copyright: nixfleet.sops contributors
# MIT License
"""Fleet-wide operations on a secrets repository: one plan, then rekey, rotate, audit, bootstrap.

A :class:`Plan` is one walk of the repository (``fsutil.walk_files``), one
read of each file's sops metadata (in worker processes when there are many)
and one rule match per file (``.sops.yaml``'s model matches every path with
one RE2 set). Rekey, rotate, the audit and bootstrap all consume a plan;
bootstrap edits ``.sops.yaml`` in memory and asks the same plan what the
edited rules change (:meth:`Plan.with_config`) instead of reading the
repository again.

Every write is planned first: each file that needs a change is opened,
changed and staged beside itself (nothing visible yet); if one cannot be
opened, nothing is written (unless the caller asks to continue with the
rest). Then the paths are recorded as not yet committed (``vcs``) and every
staged file is renamed into place, all or none (``fsutil.commit_all``).

When worker processes read a large repository, a rekey's workers also change
and stage each file that needs it as they read it (:class:`EarlyJobs`): each
file is read, planned and rewritten in one pass. The scanning process still
plans from the whole scan and decides before anything becomes visible.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import failpoints, vcs
from . import sops as engine
from .age import AgeKeyError, recipient_kind, redact, validate_identity, validate_recipient
from .errors import NixfleetError
from .fsutil import (
    KEY_FILE_LIMIT,
    PartialCommitError,
    UnsafePathError,
    commit_all,
    discard_staged,
    read_regular,
    remove_stale_temps,
    walk_files,
)
from .sops_config import NoMatchingRuleError, SopsConfig, SopsConfigError, compile_path_regex

CONFIG_NAME = ".sops.yaml"
_PARALLEL_THRESHOLD = 64
# From this many files, reading their metadata in one process per core pays for starting them (~0.2 ms a
# file against ~40 ms for the pool): a 2,000-file no-op rekey reads in 0.3 s instead of 0.5 s on 2 cores.
_SCAN_PARALLEL_FILES = 1000
# Up to this many files, workers hand the parsed files that need a change back to the scanning process
# (memory: tens of kB each); above it, the rekey reads them again, as a batch of rekey.yml does anyway.
_SCAN_HANDOFF_FILES = 5000


class FleetError(NixfleetError, RuntimeError):
    """An operation refused to write; the message lists the files and what to do."""

    def __init__(self, message: str, files: Sequence[dict[str, str]] = ()) -> None:
        super().__init__(message)
        self.files = list(files)


# --------------------------------------------------------------------------- reading the repository
@dataclass
class FileState:
    """What one file is, read once (a worker's answer; public data only)."""

    rel: str
    kind: str  # "sops" | "plain" | "broken"
    recipients: list[list[str]] = field(default_factory=list)
    threshold: int = 0
    foreign: list[dict[str, list[str]]] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)  # (group, recipient) with a broken stanza
    error: str = ""


# Files the plan opened, kept for the work that follows in this process (and in workers forked
# after it): a fleet operation reads and parses each file once. Keyed by path, checked against the
# file's identity (device, inode, size, mtime) so a file changed since is read again.
_OPENED: dict[str, tuple[tuple[int, int, int, int], engine.SopsFile]] = {}
_OPENED_MAX = 50_000


def _identity(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def open_sops_file(path: str) -> engine.SopsFile:
    """The file as the plan read it when it has not changed since, else read now."""
    kept = _OPENED.pop(path, None)
    if kept is not None and kept[0] == _identity(path):
        return kept[1]
    return engine.SopsFile.open(path)


def _read_state(job: tuple[str, str]) -> FileState:
    """Read one file's sops metadata (runs in workers)."""
    repo, rel = job
    path = os.path.join(repo, rel)
    try:
        ident = _identity(path)
        sf = engine.SopsFile.open(path)
    except engine.SopsNotEncryptedError:
        return FileState(rel, "plain")
    except engine.SopsError as exc:
        return FileState(rel, "broken", error=exc.message)
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop a fleet scan
        return FileState(rel, "broken", error=f"cannot read its sops metadata ({type(exc).__name__})")
    meta = sf.metadata
    if ident is not None and len(_OPENED) < _OPENED_MAX:
        _OPENED[path] = (ident, sf)
    return FileState(rel, "sops", meta.recipients, meta.shamir_threshold, meta.foreign_keys,
                     [(p.group, p.recipient) for p in meta.stanza_problems()])


@dataclass
class EarlyJobs:
    """Work a scan's workers do on a file they have just read and found in need of a change.

    ``make`` gives the file's job from its plan (None: leave it to the caller).
    The worker runs it at once, staging the new file beside the old one
    (nothing is visible), and hands back only the outcome: each file is read,
    planned and rewritten in one pass of the workers, instead of every parsed
    file going back to the scanning process and out again to a second set of
    workers. The caller still plans from the whole scan and decides: run_jobs
    keeps an early outcome only for the very job it would run, and
    Plan.discard_early() removes the staged files of a run that refuses.
    Used only up to ``limit`` candidate files (an operation that would then
    only plan must not stage), and never with age plugins, whose keys are
    asked for once for the whole run (see _prefetch).
    """

    make: Callable[[FilePlan], Job | None]
    identities: tuple[str, ...] | None
    check_mode: bool
    root: str
    limit: int | None = None


# Set by Plan.scan while workers read: (the scanning process, its config, repository, strict, whether to hand
# parsed files back, EarlyJobs or None). A worker sends back the file it parsed when the file needs a change,
# so the work that follows (in processes forked from the scanning one) does not read and check it again; or,
# with EarlyJobs, does that work itself.
_SCAN: tuple[int, Any, str, bool, bool, EarlyJobs | None] | None = None


def _scan_one(job: tuple[str, str]) -> tuple[FileState, tuple[Any, ...] | None]:
    """_read_state, and in a worker for a file its rule asks to change: ("opened", (identity, parsed
    file)) to hand back, or ("staged", job, outcome) when the scan runs EarlyJobs; else None."""
    st = _read_state(job)
    if _SCAN is None or os.getpid() == _SCAN[0] or st.kind != "sops":
        return st, None
    _unused, config, repo, strict, handoff, early = _SCAN
    path = os.path.join(*job)
    kept = _OPENED.pop(path, None)
    try:
        plan = Plan(repo, config, [st], strict)
        if not plan.files or not plan.files[0].needs_change:
            return st, None
        work = early.make(plan.files[0]) if early is not None else None
    except Exception:  # noqa: BLE001 - the parent plans again and reports what is wrong
        return st, None
    if work is not None:
        if kept is not None:
            _OPENED[path] = kept  # for _work_one's open_sops_file
        return st, ("staged", work, _work_one((work, early.identities, early.check_mode, early.root)))
    return (st, ("opened", kept)) if handoff and kept is not None else (st, None)


def _map(fn: Callable[[Any], Any], items: list[Any], workers: int | None) -> list[Any]:
    """Map in processes when there is enough work to pay for them, in order."""
    n = workers if workers is not None else (os.cpu_count() or 1)
    if n <= 1 or len(items) < _PARALLEL_THRESHOLD:
        return [fn(i) for i in items]
    ctx = multiprocessing.get_context("fork")
    chunk = max(1, len(items) // (n * 8))
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
        return list(pool.map(fn, items, chunksize=chunk))


@dataclass
class FilePlan:
    """One sops file against its rule: the recipients it has and the ones the rule wants."""

    path: str
    rel: str
    current: list[list[str]] = field(default_factory=list)
    wanted: list[list[str]] | None = None
    wanted_threshold: int | None = None
    current_threshold: int | None = None
    rule: str | None = None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    error: str | None = None
    foreign: list[dict[str, list[str]]] | None = None  # the rule's other master keys per group
    current_foreign: list[dict[str, list[str]]] = field(default_factory=list)
    broken_stanzas: list[tuple[int, str]] = field(default_factory=list)

    @property
    def needs_change(self) -> bool:
        """Whether ``sops updatekeys`` would rewrite it (recipients, threshold, other keys, a broken stanza)."""
        if self.wanted is None:
            return False
        threshold_differs = bool(self.wanted_threshold) and self.wanted_threshold != self.current_threshold
        kept_broken = any(g < len(self.wanted) and r in self.wanted[g] for g, r in self.broken_stanzas)
        return (bool(self.added or self.removed) or self._groups_differ() or threshold_differs or kept_broken
                or self._foreign_differs())

    def _groups_differ(self) -> bool:
        return self.wanted is not None and [set(g) for g in self.current] != [set(g) for g in self.wanted]

    def _foreign_differs(self) -> bool:
        if self.foreign is None:
            return False
        have = [{k: sorted(v) for k, v in g.items() if v} for g in self.current_foreign]
        want = [{k: sorted(v) for k, v in g.items() if v} for g in self.foreign]
        return any(a != b for a, b in zip(have, want, strict=False)) or (any(want) and len(have) != len(want))

    @property
    def readers(self) -> set[str]:
        """Every recipient that can open it now, over all key groups."""
        return {r for g in self.current for r in g}


def check_rules(config: SopsConfig) -> None:
    """Refuse a ``.sops.yaml`` whose rules cannot be trusted, naming the line: broken aliases,
    bad ``path_regex``, invalid recipients. Checked once, up front, so a broken config is never
    mistaken for "no rule matches" or for a missing identity."""
    for rule in config.rules:
        if rule.path_regex:
            compile_path_regex(rule.path_regex)
        for g, group in enumerate(rule.key_groups):
            members = rule.members[g] if g < len(rule.members) else []
            for i, r in enumerate(group):
                try:
                    validate_recipient(r)
                except AgeKeyError as exc:
                    token = members[i] if i < len(members) and len(members) == len(group) else ""
                    who = f" (anchor &{token[1:]})" if token.startswith("*") else ""
                    raise SopsConfigError(
                        f"{config.path}, line {rule.line}: {rule.describe()} names an invalid recipient{who}: "
                        f"{redact(str(exc))}; fix .sops.yaml (nixfleet.sops.sops_recipient)"
                    ) from None


class Plan:
    """A secrets repository read once: every file's state and the rule sops picks for each."""

    def __init__(self, repo: str, config: SopsConfig, states: list[FileState], strict: bool = True) -> None:
        self.repo = repo
        self.config = config
        self.states = states
        self.strict = strict
        self.files: list[FilePlan] = []
        self.not_sops: list[str] = []
        self.unreadable: list[dict[str, str]] = []
        self.no_rule: list[str] = []
        # Jobs the scan's workers already ran (EarlyJobs): relative path -> (job, outcome with staged temps).
        self.early: dict[str, tuple[Job, dict[str, Any]]] = {}
        self._match()

    @classmethod
    def scan(cls, repo: str, config: SopsConfig | None = None, include: Sequence[str] = (),
             workers: int | None = None, strict: bool = True, files: Sequence[str] | None = None,
             early: EarlyJobs | None = None) -> Plan:
        """Read ``.sops.yaml`` (unless given) and the metadata of every file; match each to its rule.

        ``strict`` refuses a config whose rules cannot be trusted (check_rules);
        the audit plans leniently, since it reports those faults itself. ``files``
        (paths relative to ``repo``) reads only those, e.g. one batch of a large rekey.
        ``early``: when workers read, they also run each changing file's job
        (see EarlyJobs); the outcomes wait in ``self.early`` for run_jobs.
        """
        repo = os.path.abspath(repo)
        config = config if config is not None else load_config(repo)
        if strict:
            check_rules(config)
        rels = iter_candidate_files(repo, include, files)
        many = workers if workers is not None else (None if len(rels) >= _SCAN_PARALLEL_FILES else 1)
        config.prepare_matching()  # once, before workers fork (each would build its own)
        if early is not None and early.limit is not None and len(rels) > early.limit:
            early = None
        global _SCAN
        handoff = len(rels) <= _SCAN_HANDOFF_FILES
        _SCAN = (os.getpid(), config, repo, strict, handoff, early) if handoff or early is not None else None
        try:
            results = _map(_scan_one, [(repo, r) for r in rels], many)
        finally:
            _SCAN = None
        plan = cls(repo, config, [st for st, _unused in results], strict)
        for st, extra in results:
            if extra is None:
                continue
            if extra[0] == "staged":
                plan.early[st.rel] = (extra[1], extra[2])
            elif len(_OPENED) < _OPENED_MAX:
                _OPENED[os.path.join(repo, st.rel)] = extra[1]
        return plan

    def discard_early(self) -> None:
        """Remove what the scan's workers staged (a run that refuses, or that only plans, writes nothing)."""
        discard_staged([tmp for _unused, outcome in self.early.values() for tmp, _target in outcome.get("staged", [])])
        self.early = {}

    def with_config(self, config: SopsConfig) -> Plan:
        """The same files matched against another ``.sops.yaml`` text (pending edits): no file is read."""
        if self.strict:
            check_rules(config)
        return Plan(self.repo, config, self.states, self.strict)

    def _match(self) -> None:
        for st in self.states:
            if st.kind == "plain":
                self.not_sops.append(st.rel)
            elif st.kind == "broken":
                self.unreadable.append({"path": st.rel, "error": st.error})
            else:
                self.files.append(self._file_plan(st))
        self.by_rel = {fp.rel: fp for fp in self.files}

    def _file_plan(self, st: FileState) -> FilePlan:
        full = os.path.join(self.repo, st.rel)
        fp = FilePlan(path=full, rel=st.rel, current=st.recipients, current_threshold=st.threshold,
                      current_foreign=st.foreign, broken_stanzas=st.problems)
        try:
            rule = self.config.rule_for(full)
        except SopsConfigError as exc:
            if self.strict and not isinstance(exc, NoMatchingRuleError):
                raise
            self.no_rule.append(st.rel)
            return fp
        fp.rule = rule.path_regex
        fp.wanted = [list(g) for g in rule.key_groups]
        fp.foreign = [dict(g) for g in rule.foreign] if any(rule.foreign) or any(st.foreign) else None
        fp.wanted_threshold = rule.shamir_threshold
        cur = set().union(*map(set, st.recipients)) if st.recipients else set()
        want = set().union(*map(set, fp.wanted)) if fp.wanted else set()
        fp.added, fp.removed = sorted(want - cur), sorted(cur - want)
        if not want and not any(rule.foreign):
            fp.error = f"{rule.describe()} names no recipient"
        return fp

    def changed(self) -> list[FilePlan]:
        """Sops files whose recipients differ from their rule's (what a rekey rewrites)."""
        return [fp for fp in self.files if fp.needs_change]

    def select(self, path_regex: str | None = None, recipient: str | None = None,
               anchor: str | None = None) -> list[FilePlan]:
        """Sops files matching a path regex and/or readable now by a recipient (or an anchor's recipient)."""
        if anchor:
            anchors = self.config.anchors()
            if anchor not in anchors:
                raise FleetError(f"{self.config.path}: no anchor &{anchor}; known anchors: "
                                 f"{', '.join(sorted(anchors))}")
            recipient = anchors[anchor].recipient
        elif recipient:
            try:
                recipient = validate_recipient(recipient)
            except AgeKeyError as exc:
                raise FleetError(f"recipient: {exc}") from None
        pat = compile_user_regex(path_regex, "path_regex") if path_regex else None
        return [fp for fp in self.files
                if (not pat or pat.search(fp.rel)) and (not recipient or recipient in fp.readers)]


Scan = Plan  # the name callers used before the plan existed


def config_path(repo: str) -> str:
    """``.sops.yaml`` of the secrets repository ``repo``."""
    return os.path.join(repo, CONFIG_NAME)


def load_config(repo: str) -> SopsConfig:
    """``.sops.yaml`` of the secrets repository ``repo`` (an absolute path)."""
    if not os.path.exists(config_path(repo)):
        raise FleetError(f"{repo} has no {CONFIG_NAME}: is this the secrets repository?")
    return SopsConfig.load(config_path(repo))


def compile_user_regex(pattern: str, what: str) -> re.Pattern[str]:
    """Compile a regex a user passed as ``what``; a bad one is an error naming the parameter."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise FleetError(f"{what} {pattern!r} is not a valid regular expression: {exc}") from None


def iter_candidate_files(repo: str, include: Sequence[str] = (), files: Sequence[str] | None = None) -> list[str]:
    """Files under ``repo`` that may be sops files, relative, sorted; ``include`` limits to path regexes,
    ``files`` to exactly these relative paths (each must be a file under ``repo``)."""
    pats = [compile_user_regex(p, "include") for p in include]
    rels = [rel for rel in walk_files(repo) if rel != CONFIG_NAME and (not pats or any(p.search(rel) for p in pats))]
    if files is None:
        return rels
    wanted = set(files)
    missing = sorted(wanted.difference(rels))
    if missing:
        raise FleetError(f"files: {missing[0]} is not a file under {repo}"
                         + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else "")
                         + "; give paths relative to the repository, as changed_files lists them")
    return [rel for rel in rels if rel in wanted]


def scan(repo: str, include: Sequence[str] = (), workers: int | None = None, strict: bool = True,
         config: SopsConfig | None = None, files: Sequence[str] | None = None) -> Plan:
    """Plan.scan: the repository read once (see :class:`Plan`)."""
    return Plan.scan(repo, config, include, workers, strict, files)


# --------------------------------------------------------------------------- the work, per file
_KEYRINGS: dict[tuple[str, ...], Any] = {}


def _keyring(identities: tuple[str, ...] | None) -> Any:
    """One parsed keyring per process and identity set; forked workers inherit its caches."""
    key = identities or ("<search like sops>",)
    kr = _KEYRINGS.get(key)
    if kr is None:
        kr = engine.keyring(list(identities) if identities is not None else None)
        _KEYRINGS[key] = kr
    return kr


@dataclass
class Job:
    """One file to change: ``rekey`` to its rule, or ``rotate`` its data key (after a rekey, if both)."""

    path: str
    rel: str
    groups: list[list[str]] | None = None
    threshold: int | None = None
    foreign: list[dict[str, list[str]]] | None = None
    rotate: bool = False
    rewrap_all: bool = False  # wrap for every recipient (sops updatekeys), not only the added and broken ones


def _work_one(args: tuple[Job, tuple[str, ...] | None, bool, str | None]) -> dict[str, Any]:
    """Open one file, change it, stage its new version unless checking (runs in workers)."""
    job, identities, check_mode, root = args
    sink = engine.NullSink() if check_mode else engine.StagedSink(root=root)
    try:
        sf = open_sops_file(job.path).unlock(_keyring(identities))
        changed, added, removed = False, set(), set()
        if job.groups is not None:
            changed, added, removed = sf.updatekeys(job.groups, shamir_threshold=job.threshold, foreign=job.foreign,
                                                    rewrap_all=job.rewrap_all)
        if job.rotate:
            sf.rotate()
            changed = True
        sf.write(sink)
    except engine.SopsError as exc:
        _discard(sink)
        return {"status": "failed", "error": exc.message}
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop a fleet run
        _discard(sink)
        return {"status": "failed", "error": f"{type(exc).__name__}: {redact(str(exc))}"}
    if not changed:
        return {"status": "unchanged"}
    return {"status": "changed", "added": sorted(added), "removed": sorted(removed),
            "staged": getattr(sink, "staged", [])}


def _discard(sink: Any) -> None:
    if isinstance(sink, engine.StagedSink):
        sink.discard()


def _prefetch(kr: Any, jobs: list[Job]) -> None:
    """Open data keys (and wrap for plugin recipients) in this process, batched, before workers fork.

    Only needed for plugins: a YubiKey is asked once for the whole run instead
    of once per file; the forked workers find the results in the caches.
    """
    wants_plugin = [j for j in jobs if j.groups and _plugin_recipients(j.groups)]
    if not getattr(kr, "_plugins", None) and not wants_plugin:
        return
    opened: dict[Any, bytes] = {}
    metas = {}
    for j in jobs:
        try:
            metas[j.path] = engine.SopsFile.open(j.path).metadata
        except engine.SopsError:
            continue
    opened = kr.unwrap_many(((path, gi), group) for path, meta in metas.items()
                            for gi, group in enumerate(meta.key_groups))
    from .sops.keys import wrap_many

    wrap_many([(j.path, opened[(j.path, 0)], [r for r in j.groups[0] if recipient_kind(r).startswith("plugin:")])
               for j in wants_plugin if j.groups and len(j.groups) == 1 and (j.path, 0) in opened], kr.ui)


def _plugin_recipients(groups: Iterable[Iterable[str]]) -> bool:
    return any(recipient_kind(r).startswith("plugin:") for g in groups for r in g)


def plugins_involved(identities: tuple[str, ...] | None, config: SopsConfig) -> bool:
    """Whether a run with these identities against these rules may ask an age plugin (see _prefetch).
    True as well when the identities or rules cannot be read: the run's own steps report that."""
    try:
        return bool(getattr(_keyring(identities), "_plugins", None)) or any(
            _plugin_recipients(rule.key_groups) for rule in config.rules)
    except Exception:  # noqa: BLE001 - reported by the scan (rules) or the first job (identities)
        return True


@dataclass
class Staged:
    """The outcome of running jobs: per file a result; staged temps not yet visible."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, str]]:
        return [{"path": rel, "error": r["error"]} for rel, r in self.results.items() if r["status"] == "failed"]

    @property
    def changed(self) -> list[str]:
        return [rel for rel, r in self.results.items() if r["status"] == "changed"]

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [p for r in self.results.values() for p in r.get("staged", [])]

    def discard(self) -> None:
        discard_staged([tmp for tmp, _unused in self.pairs])


def run_jobs(jobs: list[Job], identities: tuple[str, ...] | None, check_mode: bool,
             workers: int | None = None, root: str | None = None, plan: Plan | None = None) -> Staged:
    """Run every job (in workers when there are many), staging each new file; nothing is visible yet.

    ``root`` (the repository) is where every file must land: a symlink leading out of it fails the job.
    ``plan``: a job its scan's workers already ran (Plan.early) is not run again; what they staged for
    any other job is discarded.
    """
    early = plan.early if plan is not None else {}
    done: dict[str, dict[str, Any]] = {}
    for j in jobs:
        got = early.get(j.rel)
        if got is not None and got[0] == j:
            done[j.rel] = early.pop(j.rel)[1]
    if plan is not None:
        plan.discard_early()
    todo = [j for j in jobs if j.rel not in done]
    if todo and not check_mode:
        _prefetch(_keyring(identities), todo)
    results = dict(zip([j.rel for j in todo], _map(_work_one, [(j, identities, check_mode, root) for j in todo],
                                                   workers), strict=True))
    failpoints.hit("fleet.staged")
    return Staged({j.rel: done[j.rel] if j.rel in done else results[j.rel] for j in jobs})


def refuse_failures(what: str, staged: Staged, continue_on_error: bool) -> None:
    """All or nothing: when a file that needs a change failed, discard every staged file and raise."""
    failed = staged.failed
    if not failed or continue_on_error:
        return
    staged.discard()
    listing = "; ".join(f"{f['path']}: {f['error']}" for f in failed[:20])
    more = f" (and {len(failed) - 20} more)" if len(failed) > 20 else ""
    no_identity = any("no identity" in f["error"] or "key groups" in f["error"] for f in failed)
    hint = ("Give an identity that can open them (SOPS_AGE_KEY_FILE or identity_files), or set continue_on_error "
            "to handle the others." if no_identity else "Set continue_on_error to handle the others.")
    raise FleetError(f"{what} refused: {len(failed)} of {len(failed) + len(staged.changed)} files that need a "
                     f"change cannot be opened or rewritten, so nothing was written: {listing}{more}. {hint}", failed)


def publish(repo: str, what: str, pairs: list[tuple[str, str]], record: bool = True) -> None:
    """Make staged files visible, all or none; record them as not yet committed first."""
    if not pairs:
        return
    root = os.path.realpath(repo) + os.sep
    # Each target is a directory entry a rename replaces (a link there is replaced, not followed): what must
    # stay inside the repository is each target's directory, resolved once per directory.
    inside = {d: (os.path.realpath(d) + os.sep).startswith(root) for d in {os.path.dirname(t) for _u, t in pairs}}
    outside = [target for _unused, target in pairs if not inside[os.path.dirname(target)]]
    if outside:
        discard_staged([tmp for tmp, _unused in pairs])
        raise FleetError(f"{what} refused: {outside[0]} is outside the repository {repo} (a symlink in the "
                         "repository leads there); nothing was written. Replace the link with the file itself.")
    try:
        if record:
            vcs.record_pending(repo, [target for _unused, target in pairs])
    except BaseException:
        discard_staged([tmp for tmp, _unused in pairs])
        raise
    try:
        commit_all(pairs)
    except PartialCommitError as exc:
        rel = [os.path.relpath(p, repo) for p in exc.done]
        left = [os.path.relpath(p, repo) for p in exc.left]
        raise FleetError(
            f"{what} stopped while renaming new files into place ({exc}): {len(rel)} files are new "
            f"({', '.join(rel[:10]) or 'none'}), {len(left)} are unchanged ({', '.join(left[:10])}); every file "
            f"is valid. Fix the cause and run {what} again.",
            [{"path": p, "error": "not renamed into place"} for p in left]) from None
    except OSError as exc:
        raise FleetError(f"{what} could not put its new files in place ({exc.filename or ''}: {exc.strerror}); "
                         "nothing was written, every file is as it was") from None
    failpoints.hit("fleet.published")


# --------------------------------------------------------------------------- results
@dataclass
class OpResult:
    """What a fleet operation did (or would do in check mode). Public data only."""

    changed_files: list[str] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    # Recipients (anchor names where known) added to and removed from any file: rekey only.
    recipients: dict[str, list[str]] | None = None
    # Only planned, nothing written (more files than plan_only_above): changed_files are still to do.
    planned: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed_files": self.changed_files,
            "changes": self.changes,
            # "failed" and "skipped" are reserved words in Ansible results.
            "failed_files": self.failed,
            "skipped_files": self.skipped,
            "counts": self.counts,
            **({"recipients": self.recipients} if self.recipients is not None else {}),
            "planned": self.planned,
        }

    def summary(self, what: str, check_mode: bool = False) -> str:
        """One line for the task output, whatever the number of files; per-file detail stays in ``changes``."""
        c = self.counts
        verb = f"would be {what}" if check_mode else f"to be {what} in batches" if self.planned else what
        line = f"{c.get('changed', 0)} of {c.get('sops_files', 0)} sops files {verb}"
        if "unchanged" in c:
            line += f", {c['unchanged']} unchanged"
        if self.recipients is not None:
            line += "".join(f"; recipients {how}: {_few(self.recipients[how])}"
                            for how in ("added", "removed") if self.recipients[how])
        extra = [f"{c[k]} {label}" for k, label in (("failed", "failed"), ("not_sops", "not sops-encrypted"),
                                                    ("no_rule", "without a creation rule")) if c.get(k)]
        return line + (f"; {', '.join(extra)}" if extra else "")


def _few(names: list[str], limit: int = 3) -> str:
    """A list for a one-line summary: the first ``limit`` names and how many more."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _label(recipient: str, names: dict[str, str]) -> str:
    name = names.get(recipient)
    return f"{name} ({recipient})" if name else recipient


def change_record(rel: str, rule: str | None, added: Iterable[str], removed: Iterable[str], names: dict[str, str],
                  rotated: bool = False) -> dict[str, Any]:
    """One file's change as operations report it: recipients named by their anchors (public data only)."""
    return {"path": rel, "rule": rule, "added": [_label(x, names) for x in added],
            "removed": [_label(x, names) for x in removed], **({"rotated": True} if rotated else {})}


def recipient_names(config: SopsConfig) -> dict[str, str]:
    """recipient -> anchor name, for readable reports."""
    return {a.recipient: name for name, a in config.anchors().items()}


def _skipped(plan: Plan) -> list[dict[str, str]]:
    out = [{"path": p, "reason": "not sops-encrypted"} for p in plan.not_sops]
    out += [{"path": p, "reason": "no creation rule in .sops.yaml matches it"} for p in plan.no_rule]
    return out + [{"path": u["path"], "reason": u["error"]} for u in plan.unreadable]


def _refuse_unreadable(what: str, plan: Plan, rels: Iterable[str] | None, continue_on_error: bool) -> None:
    """A sops file whose metadata does not parse is never skipped silently."""
    wanted = set(rels) if rels is not None else None
    bad = [u for u in plan.unreadable if wanted is None or u["path"] in wanted]
    if bad and not continue_on_error:
        listing = "; ".join(f"{u['path']}: {u['error']}" for u in bad[:10])
        raise FleetError(f"{what} refused: {len(bad)} file(s) have sops metadata that cannot be read, so nothing "
                         f"was written: {listing}. Restore them from version control, or set continue_on_error.",
                         [{"path": u["path"], "error": u["error"]} for u in bad])


def rekey_jobs(plan: Plan, rotate_lost: bool = False, rewrap_all: bool = False) -> list[Job]:
    """A job per file whose recipients differ from its rule; ``rotate_lost`` also rotates the data key
    of a file that loses a recipient (revocation: whoever had the old data key must not read new values);
    ``rewrap_all`` wraps the data key afresh for every recipient of a file that changes (SopsFile.updatekeys)."""
    bad = sorted({fp.error for fp in plan.changed() if fp.error})
    if bad:
        raise FleetError("rekey refused: " + ", ".join(bad) + ". Fix .sops.yaml first.")
    return [rekey_job(fp, rotate_lost, rewrap_all) for fp in plan.changed()]


def rekey_job(fp: FilePlan, rotate_lost: bool = False, rewrap_all: bool = False) -> Job | None:
    """The job that brings one changing file to its rule (None when its rule is faulty: rekey_jobs says why)."""
    if fp.error:
        return None
    return Job(fp.path, fp.rel, fp.wanted, fp.wanted_threshold, fp.foreign, rotate=rotate_lost and bool(fp.removed),
               rewrap_all=rewrap_all)


def rekey(
    repo: str,
    identities: Iterable[str] | None = None,
    include: Sequence[str] = (),
    check_mode: bool = False,
    continue_on_error: bool = False,
    workers: int | None = None,
    config: SopsConfig | None = None,
    plan: Plan | None = None,
    rotate_lost: bool = False,
    files: Sequence[str] | None = None,
    plan_only_above: int | None = None,
    rewrap_all: bool = False,
) -> OpResult:
    """Bring every sops file to the recipients its creation rule names (``sops updatekeys`` for the fleet).

    Only files whose recipients differ are written; the data key stays, so
    values, MAC and lastmodified are untouched (unless ``rotate_lost``: files
    that lose a recipient also get a new data key). When a file that needs a
    change cannot be opened, nothing is written and FleetError lists the
    files (unless ``continue_on_error``). ``config`` (an edited, unsaved
    ``.sops.yaml``) lets check mode plan against pending edits; ``plan`` reuses
    a plan already made; ``files`` (relative paths) limits the rekey to those.
    When more than ``plan_only_above`` files need a change, nothing is written:
    the result is the check-mode plan (``planned``), for the caller to rekey in
    batches of ``files``, reporting progress between them. A file that changes
    keeps its sound stanzas and gets new ones for the recipients added and any
    broken one, unless ``rewrap_all`` (every stanza afresh, as sops does).
    """
    repo = os.path.abspath(repo)
    ids = tuple(identities) if identities is not None else None
    if not check_mode:
        remove_stale_temps(repo)  # before anything is staged: the scan's workers may stage already
    if plan is None:
        config = config if config is not None else load_config(repo)
        early = None if plugins_involved(ids, config) else EarlyJobs(
            lambda fp: rekey_job(fp, rotate_lost, rewrap_all), ids, check_mode, repo, plan_only_above)
        plan = Plan.scan(repo, config, include, workers, files=files, early=early)
    elif config is not None:
        plan = plan.with_config(config)
    try:
        jobs = rekey_jobs(plan, rotate_lost, rewrap_all)
        _refuse_unreadable("rekey", plan, None, continue_on_error)
    except BaseException:
        plan.discard_early()
        raise
    planned = not check_mode and plan_only_above is not None and len(jobs) > plan_only_above
    dry = check_mode or planned
    if planned:
        plan.discard_early()
    staged = run_jobs(jobs, ids, dry, workers, root=repo, plan=plan)
    refuse_failures("rekey", staged, continue_on_error)
    if not dry:
        publish(repo, "rekey", staged.pairs)
    names = recipient_names(plan.config)
    res = OpResult(failed=staged.failed, skipped=_skipped(plan), planned=planned)
    added: set[str] = set()
    removed: set[str] = set()
    for job in jobs:
        r = staged.results[job.rel]
        if r["status"] == "changed":
            res.changed_files.append(job.rel)
            res.changes.append(change_record(job.rel, plan.by_rel[job.rel].rule, r["added"], r["removed"], names,
                                             job.rotate))
            added.update(r["added"])
            removed.update(r["removed"])
    res.counts = {"sops_files": len(plan.files), "changed": len(res.changed_files),
                  "unchanged": len(plan.files) - len(res.changed_files) - len(res.failed),
                  "failed": len(res.failed), "not_sops": len(plan.not_sops), "no_rule": len(plan.no_rule),
                  "recipients_added": len(added), "recipients_removed": len(removed)}
    res.recipients = {"added": sorted(names.get(r, r) for r in added),
                      "removed": sorted(names.get(r, r) for r in removed)}
    return res


def select_files(sc: Plan, path_regex: str | None = None, recipient: str | None = None,
                 anchor: str | None = None) -> list[FilePlan]:
    """Plan.select (kept for callers of the old name)."""
    return sc.select(path_regex, recipient, anchor)


def rotate(
    repo: str,
    identities: Iterable[str] | None = None,
    path_regex: str | None = None,
    recipient: str | None = None,
    anchor: str | None = None,
    check_mode: bool = False,
    continue_on_error: bool = False,
    workers: int | None = None,
    plan: Plan | None = None,
    files: Sequence[str] | None = None,
    plan_only_above: int | None = None,
) -> OpResult:
    """Data-key rotation (``sops rotate``) for all files, those matching ``path_regex``, those
    ``recipient``/``anchor`` can read, or exactly ``files`` (relative paths). Every value is
    re-encrypted under a new data key; rotation always changes the selected files.

    Like rekey, it refuses (writes nothing) when a selected file cannot be
    opened or its metadata cannot be read, unless ``continue_on_error``; and
    like rekey, more than ``plan_only_above`` selected files are only planned.
    """
    plan = plan or Plan.scan(repo, workers=workers, files=files)
    todo = plan.select(path_regex, recipient, anchor)
    if files is not None:
        wanted = set(files)
        todo = [fp for fp in todo if fp.rel in wanted]
    selected = None if (path_regex is None and recipient is None and anchor is None and files is None) else {
        u["path"] for u in plan.unreadable
        if (not path_regex or compile_user_regex(path_regex, "path_regex").search(u["path"]))
        and (files is None or u["path"] in set(files))}
    _refuse_unreadable("rotate", plan, selected, continue_on_error)
    ids = tuple(identities) if identities is not None else None
    planned = not check_mode and plan_only_above is not None and len(todo) > plan_only_above
    dry = check_mode or planned
    if not dry:
        remove_stale_temps(plan.repo)
    staged = run_jobs([Job(fp.path, fp.rel, rotate=True) for fp in todo], ids, dry, workers, root=plan.repo)
    refuse_failures("rotate", staged, continue_on_error)
    if not dry:
        publish(plan.repo, "rotate", staged.pairs)
    res = OpResult(failed=staged.failed, skipped=_skipped(plan), planned=planned)
    res.changed_files = staged.changed
    res.changes = [{"path": rel, "rotated": True} for rel in res.changed_files]
    res.counts = {"sops_files": len(plan.files), "changed": len(res.changed_files),
                  "unchanged": len(plan.files) - len(res.changed_files) - len(res.failed), "failed": len(res.failed),
                  "not_sops": len(plan.not_sops)}
    return res


# --------------------------------------------------------------------------- module helpers
def collect_identities(
    identity_files: Sequence[str] = (),
    age_keys: Sequence[str] = (),
    passphrase: str | None = None,
    passphrase_command: str | None = None,
    plugin_secret: str | None = None,
    plugin_secret_command: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[str] | None:
    """Identities from key files and literal keys, every passphrase-protected one opened now.

    ``identity_files``: age key files (X25519, post-quantum, plugin lines; a
    line that is none of them is skipped and ``warn`` named with file and
    line), passphrase-protected age identity files (``age -p``) and OpenSSH
    ed25519/RSA private keys (encrypted ones too). ``passphrase`` or
    ``passphrase_command`` (run once) opens the protected ones.
    ``plugin_secret``/``plugin_secret_command`` answer an age plugin's
    request for a PIN, once per run (see sops.keys.set_plugin_ui).

    Returns None when no identity, file or passphrase is given, meaning:
    search like sops does (SOPS_AGE_KEY_FILE, ~/.config/sops/age/keys.txt, …);
    with only a passphrase, that search is done here, so protected files it
    finds are opened once for the whole run.
    """
    from .ageplugin import PluginUI, SecretSource
    from .identities import identity_texts, unlock_all
    from .sops.keys import set_plugin_ui

    secret = SecretSource(plugin_secret, plugin_secret_command, "age plugin secret")
    set_plugin_ui(PluginUI(secret if secret else None))
    source = SecretSource(passphrase, passphrase_command, "identity passphrase")
    skip = warn or (lambda _msg: None)
    if not identity_files and not age_keys:
        if not source:
            return None
        found, _unused = engine.find_identities(warn=skip)
        try:
            return unlock_all(found, source, "a passphrase-protected identity found like sops", skip)
        except AgeKeyError as exc:
            raise FleetError(str(exc)) from None
    out: list[str] = []
    for path in identity_files:
        try:
            data = read_regular(path, KEY_FILE_LIMIT, "key file")
        except UnsafePathError as exc:
            raise FleetError(f"identity file {exc.message}") from None
        except OSError as exc:
            raise FleetError(f"{path}: cannot read identity file: {exc.strerror}") from None
        try:
            found = identity_texts(data, path, skip)
            if not found:
                raise AgeKeyError(f"{path}: no age identity found (the file is empty or has only comments)")
            out.extend(unlock_all(found, source, path, skip))
        except AgeKeyError as exc:
            raise FleetError(str(exc) if path in str(exc) else f"{path}: {exc}") from None
    for i, text in enumerate(age_keys):
        # One identity, or a key file's text as community.sops's age_key and SOPS_AGE_KEY take it.
        keys = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        for key in keys or [text]:
            try:
                out.append(validate_identity(key, kinds=None))
            except ValueError as exc:
                raise FleetError(f"age_keys[{i}]: {exc}") from None
    return out


def changes_diff(changes: list[dict[str, Any]], repo: str) -> dict[str, str]:
    """A --diff of recipients per file (public data only)."""
    before, after = [], []
    for ch in changes:
        for r in ch.get("removed", []):
            before.append(f"{ch['path']}: {r}\n")
        for r in ch.get("added", []):
            after.append(f"{ch['path']}: {r}\n")
        if ch.get("rotated"):
            before.append(f"{ch['path']}: data key (old)\n")
            after.append(f"{ch['path']}: data key (new)\n")
    return {"before": "".join(before), "after": "".join(after), "before_header": f"{repo} (recipients)",
            "after_header": f"{repo} (recipients)"}
