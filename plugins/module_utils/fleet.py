# Copyright: nixfleet.sops contributors
# MIT License
"""Fleet-wide operations on a secrets repository: rekey, rotate, audit.

Every operation plans first and writes second. The plan reads only sops
metadata (cheap) and checks that each file needing a write can be opened;
if one cannot, nothing is written (unless the caller asks to continue with
the rest). Each file is written atomically, so a run killed at any moment
leaves every file either as it was or as it should be.

Work on many files is spread over processes (the operations are CPU bound:
X25519 per recipient per file).
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import sops as engine
from .age import (
    AgeKeyError,
    redact,
    validate_identity,
    validate_recipient,
)
from .errors import NixfleetError
from .fsutil import (
    commit_staged,
    discard_staged,
    fsync_dir,
    remove_stale_temps,
    sync_staged,
    walk_files,
)
from .sops_config import NoMatchingRuleError, SopsConfig, SopsConfigError, compile_path_regex

CONFIG_NAME = ".sops.yaml"
_PARALLEL_THRESHOLD = 64


class FleetError(NixfleetError, RuntimeError):
    """An operation refused to write; the message lists the files and what to do."""

    def __init__(self, message: str, files: Sequence[dict[str, str]] = ()) -> None:
        super().__init__(message)
        self.files = list(files)


@dataclass
class FilePlan:
    """One sops file: the recipients it has and the ones its rule wants."""

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

    @property
    def needs_change(self) -> bool:
        threshold_differs = bool(self.wanted_threshold) and self.wanted_threshold != self.current_threshold
        return bool(self.added or self.removed) or self._groups_differ() or threshold_differs

    def _groups_differ(self) -> bool:
        if self.wanted is None:
            return False
        return [set(g) for g in self.current] != [set(g) for g in self.wanted]


@dataclass
class Scan:
    """What is in the repository: sops files, other files, files no rule covers."""

    repo: str
    config: SopsConfig
    files: list[FilePlan] = field(default_factory=list)
    not_sops: list[str] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    no_rule: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- discovery
def config_path(repo: str) -> str:
    """``.sops.yaml`` of the secrets repository ``repo``."""
    return os.path.join(repo, CONFIG_NAME)


def check_rules(config: SopsConfig) -> None:
    """Refuse a ``.sops.yaml`` whose rules cannot be trusted, naming the line: broken aliases,
    bad ``path_regex``, recipients that are not valid ``age1…`` keys. Checked once, up front,
    so a broken config is never mistaken for "no rule matches" or for a missing identity."""
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


def compile_user_regex(pattern: str, what: str) -> re.Pattern[str]:
    """Compile a regex a user passed as ``what``; a bad one is an error naming the parameter."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise FleetError(f"{what} {pattern!r} is not a valid regular expression: {exc}") from None


def iter_candidate_files(repo: str, include: Sequence[str] = ()) -> list[str]:
    """Files under ``repo`` that may be sops files, relative, sorted; ``include`` limits to path regexes."""
    pats = [compile_user_regex(p, "include") for p in include]
    return [rel for rel in walk_files(repo) if rel != CONFIG_NAME and (not pats or any(p.search(rel) for p in pats))]


def _read_meta(path: str) -> tuple[str, Any]:
    """('ok', recipients) | ('not_sops', reason) | ('error', message) — runs in workers."""
    try:
        sf = engine.load(path)
    except engine.SopsNotEncryptedError as exc:
        return "not_sops", str(exc)
    except engine.SopsError as exc:
        return "error", str(exc)
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop a fleet scan
        return "error", f"{path}: cannot read its sops metadata ({type(exc).__name__})"
    return "ok", (sf.recipients, sf.metadata.shamir_threshold)


def _map(fn: Callable[[Any], Any], items: list[Any], workers: int | None) -> list[Any]:
    """Map in processes when there is enough work to pay for them, in order."""
    n = workers if workers is not None else (os.cpu_count() or 1)
    if n <= 1 or len(items) < _PARALLEL_THRESHOLD:
        return [fn(i) for i in items]
    ctx = multiprocessing.get_context("fork")
    chunk = max(1, len(items) // (n * 8))
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
        return list(pool.map(fn, items, chunksize=chunk))


def scan(repo: str, include: Sequence[str] = (), workers: int | None = None, strict: bool = True) -> Scan:
    """Read ``.sops.yaml`` and the metadata of every sops file, and match each file to its rule.

    ``strict`` refuses a config whose rules cannot be trusted (check_rules); the
    audit scans leniently, since it reports those faults itself.
    """
    repo = os.path.abspath(repo)
    cfg_path = config_path(repo)
    if not os.path.exists(cfg_path):
        raise FleetError(f"{repo} has no {CONFIG_NAME}: is this the secrets repository?")
    config = SopsConfig.load(cfg_path)
    if strict:
        check_rules(config)
    result = Scan(repo=repo, config=config)
    rels = iter_candidate_files(repo, include)
    metas = _map(_read_meta, [os.path.join(repo, r) for r in rels], workers)
    for rel, (status, info) in zip(rels, metas, strict=True):
        full = os.path.join(repo, rel)
        if status == "not_sops":
            result.not_sops.append(rel)
            continue
        if status == "error":
            result.unreadable.append({"path": rel, "error": info})
            continue
        current, threshold = info
        fp = FilePlan(path=full, rel=rel, current=current, current_threshold=threshold)
        try:
            rule = config.rule_for(full)
        except SopsConfigError as exc:
            if strict and not isinstance(exc, NoMatchingRuleError):
                raise
            result.no_rule.append(rel)
            fp.rule = None
        else:
            fp.rule = rule.path_regex
            fp.wanted = [list(g) for g in rule.key_groups if g]
            fp.wanted_threshold = rule.shamir_threshold
            cur = set().union(*map(set, current)) if current else set()
            want = set().union(*map(set, fp.wanted)) if fp.wanted else set()
            fp.added = sorted(want - cur)
            fp.removed = sorted(cur - want)
            if not fp.wanted:
                fp.error = f"{rule.describe()} names no age recipient"
        result.files.append(fp)
    return result


# --------------------------------------------------------------------------- workers
_KEYRINGS: dict[tuple[str, ...], Any] = {}


def _keyring(identities: tuple[str, ...] | None) -> Any:
    """One parsed keyring per process and identity set (parsing costs more than a stanza)."""
    key = identities or ("<search like sops>",)
    kr = _KEYRINGS.get(key)
    if kr is None:
        kr = engine.keyring(list(identities) if identities is not None else None)
        _KEYRINGS[key] = kr
    return kr


def _rekey_one(job: tuple[str, list[list[str]] | None, int | None, tuple[str, ...] | None, bool]) -> dict[str, Any]:
    """Plan one file and, unless checking, stage its new version (nothing visible yet).

    One parse and at most one data-key unwrap per file: the whole per-file
    cost of a fleet rekey happens here, in a worker process.
    """
    path, groups, threshold, identities, check_mode = job
    sink = engine.NullSink() if check_mode else engine.StagedSink()
    try:
        sf = engine.SopsFile.open(path)
        if groups is None:
            return {"status": "no_rule"}
        changed, added, removed = sf.unlock(_keyring(identities)).updatekeys(groups, shamir_threshold=threshold)
        sf.write(sink)
    except engine.SopsNotEncryptedError:
        return {"status": "not_sops"}
    except engine.SopsError as exc:
        _discard(sink)
        return {"status": "failed", "error": exc.message}
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop a fleet run
        _discard(sink)
        return {"status": "failed", "error": f"{path}: {type(exc).__name__}: {exc}"}
    if not changed:
        return {"status": "unchanged"}
    return {"status": "changed", "added": sorted(added), "removed": sorted(removed),
            "staged": getattr(sink, "staged", [])}


def _discard(sink: Any) -> None:
    if isinstance(sink, engine.StagedSink):
        sink.discard()


def _rotate_one(job: tuple[str, tuple[str, ...] | None, bool]) -> dict[str, Any]:
    path, identities, check_mode = job
    sink = engine.NullSink() if check_mode else engine.StagedSink()
    try:
        sf = engine.SopsFile.open(path).unlock(_keyring(identities))
        sf.rotate()
        sf.write(sink)
    except engine.SopsError as exc:
        _discard(sink)
        return {"status": "failed", "error": exc.message}
    except Exception as exc:  # noqa: BLE001
        _discard(sink)
        return {"status": "failed", "error": f"{path}: {type(exc).__name__}: {exc}"}
    return {"status": "changed", "staged": getattr(sink, "staged", [])}


# --------------------------------------------------------------------------- results
@dataclass
class OpResult:
    """What a fleet operation did (or would do in check mode). Public data only."""

    changed_files: list[str] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed_files": self.changed_files,
            "changes": self.changes,
            # "failed" and "skipped" are reserved words in Ansible results.
            "failed_files": self.failed,
            "skipped_files": self.skipped,
            "counts": self.counts,
        }


def _label(recipient: str, names: dict[str, str]) -> str:
    name = names.get(recipient)
    return f"{name} ({recipient})" if name else recipient


def recipient_names(config: SopsConfig) -> dict[str, str]:
    """recipient -> anchor name, for readable reports."""
    return {a.recipient: name for name, a in config.anchors().items()}


def _skipped(sc: Scan) -> list[dict[str, str]]:
    out = [{"path": p, "reason": "not sops-encrypted"} for p in sc.not_sops]
    out += [{"path": p, "reason": "no creation rule in .sops.yaml matches it"} for p in sc.no_rule]
    out += [{"path": u["path"], "reason": u["error"]} for u in sc.unreadable]
    return out


def _finish(
    what: str, rels: list[str], results: list[dict[str, Any]], continue_on_error: bool, check_mode: bool
) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, str]]]:
    """All or nothing: commit every staged file, or (when one failed) discard them all and raise."""
    failed = [{"path": rel, "error": r["error"]} for rel, r in zip(rels, results, strict=True)
              if r["status"] == "failed"]
    changed = [(rel, r) for rel, r in zip(rels, results, strict=True) if r["status"] == "changed"]
    if failed and not continue_on_error:
        discard_staged([tmp for _, r in changed for tmp, _ in r.get("staged", [])])
        listing = "; ".join(f"{f['path']}: {f['error']}" for f in failed[:20])
        more = f" (and {len(failed) - 20} more)" if len(failed) > 20 else ""
        raise FleetError(
            f"{what} refused: {len(failed)} of {len(failed) + len(changed)} files that need a change cannot be "
            f"opened or rewritten, so nothing was written: {listing}{more}. Give an identity that can open them "
            "(SOPS_AGE_KEY_FILE or identity_files), or set continue_on_error to handle the others.",
            failed,
        )
    if not check_mode:
        dirs: set[str] = set()
        done: list[str] = []
        pending = [(rel, tmp, target) for rel, r in changed for tmp, target in r.get("staged", [])]
        try:
            sync_staged([tmp for _, tmp, _ in pending])
            for rel, tmp, target in pending:
                commit_staged(tmp, target, sync_dir=False)
                done.append(rel)
                dirs.add(os.path.dirname(target))
        except OSError as exc:
            discard_staged([tmp for _, tmp, _ in pending[len(done):]])
            if not done:
                raise FleetError(f"{what} could not make its new files durable ({exc.strerror}); nothing was "
                                 "written, every file is as it was") from None
            left = [rel for rel, _, _ in pending[len(done):]]
            raise FleetError(
                f"{what} stopped while renaming new files into place ({exc.filename or ''}: {exc.strerror}): "
                f"{len(done)} files are new ({', '.join(done[:10]) or 'none'}), {len(left)} are unchanged "
                f"({', '.join(left[:10])}); every file is valid. Fix the cause and run {what} again.",
                [{"path": rel, "error": "not renamed into place"} for rel in left],
            ) from None
        for d in dirs:
            fsync_dir(d)
    return changed, failed


def rekey(
    repo: str,
    identities: Iterable[str] | None = None,
    include: Sequence[str] = (),
    check_mode: bool = False,
    continue_on_error: bool = False,
    workers: int | None = None,
    config: SopsConfig | None = None,
) -> OpResult:
    """Bring every sops file to the recipients its creation rule names (``sops updatekeys`` for the fleet).

    Only files whose recipients differ are written; the data key stays, so
    values, MAC and lastmodified are untouched. Every new version is staged
    (written and fsynced beside its file) before any is renamed into place:
    when a file that needs a change cannot be opened, nothing is written and
    FleetError lists the files (unless ``continue_on_error``). ``config`` (an
    edited, unsaved ``.sops.yaml``) lets check mode plan against pending edits.
    """
    repo = os.path.abspath(repo)
    ids = tuple(identities) if identities is not None else None
    cfg_path = config_path(repo)
    if config is None:
        if not os.path.exists(cfg_path):
            raise FleetError(f"{repo} has no {CONFIG_NAME}: is this the secrets repository?")
        config = SopsConfig.load(cfg_path)
    check_rules(config)
    names = recipient_names(config)
    rels = iter_candidate_files(repo, include)
    jobs, rules, broken = [], [], {}
    for i, rel in enumerate(rels):
        full = os.path.join(repo, rel)
        try:
            rule = config.rule_for(full)
        except NoMatchingRuleError:
            jobs.append((full, None, None, ids, check_mode))
            rules.append(None)
            continue
        groups = [list(g) for g in rule.key_groups if g]
        if not groups:
            broken[i] = rule.describe()
            groups = None  # only asked whether it is a sops file
        jobs.append((full, groups, rule.shamir_threshold, ids, check_mode))
        rules.append(rule.path_regex)
    if not check_mode:
        remove_stale_temps(repo)
    results = _map(_rekey_one, jobs, workers)
    if broken:
        # Only a problem for the sops files under such a rule; plain files there are fine.
        bad = sorted({desc for i, desc in broken.items() if results[i]["status"] != "not_sops"})
        if bad:
            discard_staged([tmp for r in results for tmp, _ in r.get("staged", [])])
            raise FleetError("rekey refused: " + ", ".join(bad) + " names no age recipient. Fix .sops.yaml first.")
    changed, failed = _finish("rekey", rels, results, continue_on_error, check_mode)
    res = OpResult(failed=failed)
    by_status: dict[str, list[str]] = {}
    for rel, r in zip(rels, results, strict=True):
        by_status.setdefault(r["status"], []).append(rel)
    res.skipped = [{"path": p, "reason": "not sops-encrypted"} for p in by_status.get("not_sops", [])]
    res.skipped += [{"path": p, "reason": "no creation rule in .sops.yaml matches it"}
                    for p in by_status.get("no_rule", [])]
    rule_of = dict(zip(rels, rules, strict=True))
    for rel, r in changed:
        res.changed_files.append(rel)
        res.changes.append({"path": rel, "rule": rule_of[rel], "added": [_label(x, names) for x in r["added"]],
                            "removed": [_label(x, names) for x in r["removed"]]})
    sops_files = len(rels) - len(by_status.get("not_sops", []))
    res.counts = {
        "sops_files": sops_files,
        "changed": len(res.changed_files),
        "unchanged": len(by_status.get("unchanged", [])),
        "failed": len(failed),
        "not_sops": len(by_status.get("not_sops", [])),
        "no_rule": len(by_status.get("no_rule", [])),
    }
    return res


def select_files(
    sc: Scan, path_regex: str | None = None, recipient: str | None = None, anchor: str | None = None
) -> list[FilePlan]:
    """Files of a scan matching a path regex and/or readable by a recipient (or an anchor's recipient)."""
    if anchor:
        anchors = sc.config.anchors()
        if anchor not in anchors:
            raise FleetError(f"{sc.config.path}: no anchor &{anchor}; known anchors: {', '.join(sorted(anchors))}")
        recipient = anchors[anchor].recipient
    elif recipient:
        try:
            recipient = validate_recipient(recipient)
        except AgeKeyError as exc:
            raise FleetError(f"recipient: {exc}") from None
    pat = compile_user_regex(path_regex, "path_regex") if path_regex else None
    out = []
    for fp in sc.files:
        if pat and not pat.search(fp.rel):
            continue
        if recipient and not any(recipient in g for g in fp.current):
            continue
        out.append(fp)
    return out


def rotate(
    repo: str,
    identities: Iterable[str] | None = None,
    path_regex: str | None = None,
    recipient: str | None = None,
    anchor: str | None = None,
    check_mode: bool = False,
    continue_on_error: bool = False,
    workers: int | None = None,
) -> OpResult:
    """Data-key rotation (``sops rotate``) for all files, those matching ``path_regex``, or those
    ``recipient``/``anchor`` can read. Every value is re-encrypted under a new data key.

    Rotation always changes the selected files; check mode lists them.
    """
    ids = tuple(identities) if identities is not None else None
    sc = scan(repo, workers=workers)
    todo = select_files(sc, path_regex, recipient, anchor)
    if not check_mode:
        remove_stale_temps(sc.repo)
    rels = [fp.rel for fp in todo]
    results = _map(_rotate_one, [(fp.path, ids, check_mode) for fp in todo], workers)
    changed, failed = _finish("rotate", rels, results, continue_on_error, check_mode)
    res = OpResult(failed=failed, skipped=_skipped(sc))
    res.changed_files = [rel for rel, _ in changed]
    res.changes = [{"path": rel, "rotated": True} for rel in res.changed_files]
    res.counts = {"sops_files": len(sc.files), "changed": len(changed), "failed": len(failed),
                  "not_sops": len(sc.not_sops)}
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
        found, _ = engine.find_identities(warn=skip)
        try:
            return unlock_all(found, source, "a passphrase-protected identity found like sops", skip)
        except AgeKeyError as exc:
            raise FleetError(str(exc)) from None
    out: list[str] = []
    for path in identity_files:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise FleetError(f"{path}: cannot read identity file: {exc.strerror}") from None
        try:
            found = identity_texts(data, path, skip)
            if not found:
                raise AgeKeyError(f"{path}: no age identity found (the file is empty or has only comments)")
            out.extend(unlock_all(found, source, path, skip))
        except AgeKeyError as exc:
            raise FleetError(str(exc) if path in str(exc) else f"{path}: {exc}") from None
    for i, key in enumerate(age_keys):
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
