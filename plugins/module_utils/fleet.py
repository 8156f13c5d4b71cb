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
from .fsutil import remove_stale_temps
from .sops_config import SopsConfig, SopsConfigError

CONFIG_NAME = ".sops.yaml"
# Directories under the secrets repo that never hold sops files.
_SKIP_DIRS = {".git", ".jj", ".hg", ".nixfleet", ".direnv", "result", "node_modules"}
_PARALLEL_THRESHOLD = 64


class FleetError(RuntimeError):
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


def iter_candidate_files(repo: str, include: Sequence[str] = ()) -> list[str]:
    """Files under ``repo`` that may be sops files, relative, sorted; ``include`` limits to path regexes."""
    pats = [re.compile(p) for p in include]
    out = []
    for dirpath, dirnames, filenames in os.walk(repo):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for fn in filenames:
            full = os.path.join(dirpath, fn)
            rel = os.path.relpath(full, repo)
            if rel == CONFIG_NAME or fn.startswith(".nixfleet-sops.lock") or os.path.islink(full):
                continue
            if fn.endswith(".tmp") and fn.startswith("."):
                continue  # an atomic write's temp file (a killed run may leave one)
            if pats and not any(p.search(rel) for p in pats):
                continue
            out.append(rel)
    return sorted(out)


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


def scan(repo: str, include: Sequence[str] = (), workers: int | None = None) -> Scan:
    """Read ``.sops.yaml`` and the metadata of every sops file, and match each file to its rule."""
    repo = os.path.abspath(repo)
    cfg_path = config_path(repo)
    if not os.path.exists(cfg_path):
        raise FleetError(f"{repo} has no {CONFIG_NAME}: is this the secrets repository?")
    config = SopsConfig.load(cfg_path)
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
        except SopsConfigError:
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


def _check_open(job: tuple[str, tuple[str, ...] | None]) -> str | None:
    path, identities = job
    try:
        engine.load(path).data_key(_keyring(identities))
    except engine.SopsError as exc:
        return str(exc)
    return None


def _apply_updatekeys(job: tuple[str, list[list[str]], int | None, tuple[str, ...] | None]) -> str | None:
    path, groups, threshold, identities = job
    try:
        engine.updatekeys(path, groups, _keyring(identities), shamir_threshold=threshold)
    except engine.SopsError as exc:
        return str(exc)
    return None


def _apply_rotate(job: tuple[str, tuple[str, ...] | None]) -> str | None:
    path, identities = job
    try:
        engine.rotate(path, _keyring(identities))
    except engine.SopsError as exc:
        return str(exc)
    return None


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
    return out


def _preflight(
    jobs: list[FilePlan], identities: tuple[str, ...] | None, workers: int | None, continue_on_error: bool, what: str
) -> tuple[list[FilePlan], list[dict[str, str]]]:
    """Check every file can be opened before writing any; refuse (or drop them) when some cannot."""
    errors = _map(_check_open, [(fp.path, identities) for fp in jobs], workers)
    failed = [{"path": fp.rel, "error": err} for fp, err in zip(jobs, errors, strict=True) if err]
    if failed and not continue_on_error:
        listing = "; ".join(f"{f['path']}: {f['error']}" for f in failed[:20])
        more = f" (and {len(failed) - 20} more)" if len(failed) > 20 else ""
        raise FleetError(
            f"{what} refused: {len(failed)} of {len(jobs)} files that need a change cannot be opened with the "
            f"available identities, so nothing was written: {listing}{more}. Give an identity that can open them "
            "(SOPS_AGE_KEY_FILE or identity_files), or set continue_on_error to handle the others.",
            failed,
        )
    bad = {f["path"] for f in failed}
    return [fp for fp in jobs if fp.rel not in bad], failed


def rekey(
    repo: str,
    identities: Iterable[str] | None = None,
    include: Sequence[str] = (),
    check_mode: bool = False,
    continue_on_error: bool = False,
    workers: int | None = None,
) -> OpResult:
    """Bring every sops file to the recipients its creation rule names (``sops updatekeys`` for the fleet).

    Only files whose recipients differ are written; the data key stays, so
    values, MAC and lastmodified are untouched. Raises FleetError, writing
    nothing, when a file that needs a change cannot be opened (unless
    ``continue_on_error``) or a rule names no recipient.
    """
    ids = tuple(identities) if identities is not None else None
    sc = scan(repo, include, workers)
    names = recipient_names(sc.config)
    broken = [fp for fp in sc.files if fp.error]
    if broken:
        raise FleetError(
            "rekey refused: " + "; ".join(f"{fp.rel}: {fp.error}" for fp in broken) + ". Fix .sops.yaml first.",
            [{"path": fp.rel, "error": fp.error or ""} for fp in broken],
        )
    todo = [fp for fp in sc.files if fp.needs_change]
    if not check_mode:
        remove_stale_temps(repo)
    res = OpResult(skipped=_skipped(sc) + [{"path": u["path"], "reason": u["error"]} for u in sc.unreadable])
    todo, res.failed = _preflight(todo, ids, workers, continue_on_error, "rekey")
    if not check_mode and todo:
        errors = _map(_apply_updatekeys, [(fp.path, fp.wanted, fp.wanted_threshold, ids) for fp in todo], workers)
        for fp, err in zip(todo, errors, strict=True):
            if err:
                res.failed.append({"path": fp.rel, "error": err})
        todo = [fp for fp, err in zip(todo, errors, strict=True) if not err]
    for fp in todo:
        res.changed_files.append(fp.rel)
        res.changes.append(
            {
                "path": fp.rel,
                "rule": fp.rule,
                "added": [_label(r, names) for r in fp.added],
                "removed": [_label(r, names) for r in fp.removed],
            }
        )
    res.counts = {
        "sops_files": len(sc.files),
        "changed": len(res.changed_files),
        "unchanged": len(sc.files) - len(res.changed_files) - len(res.failed),
        "failed": len(res.failed),
        "not_sops": len(sc.not_sops),
        "no_rule": len(sc.no_rule),
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
    pat = re.compile(path_regex) if path_regex else None
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
        remove_stale_temps(repo)
    res = OpResult(skipped=_skipped(sc) + [{"path": u["path"], "reason": u["error"]} for u in sc.unreadable])
    todo, res.failed = _preflight(todo, ids, workers, continue_on_error, "rotate")
    if not check_mode and todo:
        errors = _map(_apply_rotate, [(fp.path, ids) for fp in todo], workers)
        res.failed += [{"path": fp.rel, "error": e} for fp, e in zip(todo, errors, strict=True) if e]
        todo = [fp for fp, e in zip(todo, errors, strict=True) if not e]
    res.changed_files = [fp.rel for fp in todo]
    res.changes = [{"path": fp.rel, "rotated": True} for fp in todo]
    res.counts = {"sops_files": len(sc.files), "changed": len(todo), "failed": len(res.failed),
                  "not_sops": len(sc.not_sops)}
    return res


# --------------------------------------------------------------------------- module helpers
def collect_identities(identity_files: Sequence[str] = (), age_keys: Sequence[str] = ()) -> list[str] | None:
    """Identities from key files (age key files or ed25519 SSH private keys) and literal keys.

    Returns None when neither is given, meaning: search like sops does
    (SOPS_AGE_KEY_FILE, ~/.config/sops/age/keys.txt, …).
    """
    from .age import parse_identities, ssh_private_key_to_identity, validate_identity

    if not identity_files and not age_keys:
        return None
    out: list[str] = []
    for path in identity_files:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise FleetError(f"{path}: cannot read identity file: {exc.strerror}") from None
        if b"PRIVATE KEY-----" in data:
            out.append(ssh_private_key_to_identity(data))
        else:
            out.extend(parse_identities(data.decode("utf-8", "replace"), source=path))
    for i, key in enumerate(age_keys):
        try:
            out.append(validate_identity(key))
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
