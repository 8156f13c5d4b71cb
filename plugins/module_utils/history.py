# Copyright: nixfleet.sops contributors
# MIT License
"""What a key could read at any point of a secrets repository's git history (a revocation's blast radius).

Revoking a host does not revoke what it already read: every version of a
sops file that listed one of its recipients is still in git history, and the
host (or whoever took its key) can decrypt those old ciphertexts. So the
report lists, per file and per key path, the first commit at which the host
could read it; those credentials must be changed at their source.

Only public data is read: ``.sops.yaml`` versions (the host's anchors), the
``sops`` metadata of each file version (its recipients) and the key paths of
the document (keys are plain text in a sops file, values are not). Each blob
is read once, with ``git cat-file --batch``.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import sops as engine
from .errors import NixfleetError
from .sops.tree import Comment

CONFIG_NAME = ".sops.yaml"


class HistoryError(NixfleetError):
    """git could not be read; the message names the repository and the command."""


@dataclass
class Event:
    """A file version appearing in a commit: (commit, its time, path, blob)."""

    commit: str
    time: int
    path: str
    blob: str


@dataclass
class FileExposure:
    """One file the key could read: since when, whether it still can, and which key paths."""

    path: str
    first_commit: str
    first_time: int
    readable_now: bool = False
    key_paths: dict[str, str] = field(default_factory=dict)  # key path -> first commit it was readable

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "first_commit": self.first_commit, "first_time": self.first_time,
                "readable_now": self.readable_now,
                "key_paths": [{"key": k, "first_commit": c} for k, c in sorted(self.key_paths.items())]}


def _git(repo: str, *args: str, data: bytes | None = None) -> bytes:
    proc = subprocess.run(["git", "-C", repo, *args], input=data, capture_output=True, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise HistoryError(f"{repo}: git {args[0]} failed: {detail[-1] if detail else proc.returncode}")
    return proc.stdout


def events(repo: str) -> list[Event]:
    """Every file version added or changed by any commit (all refs, merges against each parent), oldest first."""
    out = _git(repo, "log", "--all", "--reverse", "--topo-order", "-m", "--raw", "--no-abbrev", "-z",
               "--format=%x01%H %ct")
    found: list[Event] = []
    commit, when = "", 0
    fields = out.split(b"\0")
    i = 0
    while i < len(fields):
        item = fields[i]
        if b"\x01" in item:
            commit, _unused, ts = item.split(b"\x01", 1)[1].strip().partition(b" ")
            commit, when = commit.decode(), int(ts or 0)
            i += 1
            continue
        item = item.lstrip(b"\n")
        if item.startswith(b":"):
            parts = item[1:].split()
            status = parts[4].decode() if len(parts) > 4 else ""
            path = fields[i + 1].decode("utf-8", "surrogateescape") if i + 1 < len(fields) else ""
            i += 2
            if status.startswith(("R", "C")):
                path = fields[i].decode("utf-8", "surrogateescape")  # renames carry the new path after the old
                i += 1
            if not status.startswith("D") and parts[1].decode() != "160000":
                found.append(Event(commit, when, path, parts[3].decode()))
            continue
        i += 1
    return found


def read_blobs(repo: str, blobs: Iterable[str]) -> Iterator[tuple[str, bytes]]:
    """(blob id, content) for each blob, through one ``git cat-file --batch``."""
    ids = list(dict.fromkeys(blobs))
    if not ids:
        return
    out = _git(repo, "cat-file", "--batch", data=("\n".join(ids) + "\n").encode())
    pos = 0
    for blob in ids:
        nl = out.index(b"\n", pos)
        header = out[pos:nl].split()
        if len(header) < 3 or header[1] == b"missing":
            pos = nl + 1
            continue
        size = int(header[2])
        yield blob, out[nl + 1 : nl + 1 + size]
        pos = nl + 1 + size + 1


def anchor_recipients(repo: str, anchors: Iterable[str], evs: list[Event]) -> set[str]:
    """Every recipient the given anchors held in any version of ``.sops.yaml``."""
    names = [a for a in anchors if a]
    if not names:
        return set()
    pattern = re.compile(r"&(" + "|".join(re.escape(a) for a in names) + r")[ \t]+['\"]?([^'\"\s#]+)")
    found: set[str] = set()
    for _blob, data in read_blobs(repo, [e.blob for e in evs if e.path.rsplit("/", 1)[-1] == CONFIG_NAME]):
        for m in pattern.finditer(data.decode("utf-8", "replace")):
            found.add(m.group(2))
    return found


def key_paths(tree: Any, prefix: str = "") -> list[str]:
    """The key paths of a document (``a/b/[0]``), from its encrypted form: keys are plain text in sops files."""
    if isinstance(tree, dict):
        out = []
        for k, v in tree.items():
            if isinstance(k, Comment):
                continue
            out += key_paths(v, f"{prefix}/{k}" if prefix else str(k))
        return out or ([prefix] if prefix else [])
    if isinstance(tree, list):
        items = [v for v in tree if not isinstance(v, Comment)]
        out = []
        for i, v in enumerate(items):
            out += key_paths(v, f"{prefix}/[{i}]" if prefix else f"[{i}]")
        return out or [prefix]
    return [prefix]


def _readable(path: str, data: bytes, recipients: set[str]) -> list[str] | None:
    """The key paths of this file version when one of ``recipients`` can read it, else None."""
    try:
        sf = engine.SopsFile(path, data)
    except engine.SopsError:
        return None
    listed = {" ".join(r.split()[:2]) if r.startswith("ssh-") else r for g in sf.recipients for r in g}
    if not listed & recipients:
        return None
    if sf.format == "binary":
        return ["data"]
    try:
        docs = sf.encrypted_documents
    except engine.SopsError:
        return ["(unparsable document)"]
    out: list[str] = []
    for n, doc in enumerate(docs):
        out += [p if n == 0 else f"[document {n}]/{p}" for p in key_paths(doc)]
    return out


def blast_radius(repo: str, recipients: Iterable[str], anchors: Iterable[str] = (),
                 current: dict[str, list[str]] | None = None) -> list[FileExposure]:
    """Every file and key path that ``recipients`` (or any recipient ``anchors`` ever held) could read.

    ``current`` maps the working tree's sops files to their recipients now
    (from the fleet plan), for ``readable_now``. Sorted by path.
    """
    evs = events(repo)
    wanted = {" ".join(r.split()[:2]) if r.startswith("ssh-") else r for r in recipients}
    wanted |= anchor_recipients(repo, anchors, evs)
    candidates = [e for e in evs if e.path.rsplit("/", 1)[-1] != CONFIG_NAME and not e.path.startswith(".nixfleet/")]
    readable: dict[str, list[str] | None] = {}
    by_blob = {e.blob: e.path for e in candidates}
    for blob, data in read_blobs(repo, by_blob):
        readable[blob] = _readable(by_blob[blob], data, wanted)
    result: dict[str, FileExposure] = {}
    for e in candidates:
        keys = readable.get(e.blob)
        if not keys:
            continue
        fx = result.setdefault(e.path, FileExposure(e.path, e.commit, e.time))
        for k in keys:
            fx.key_paths.setdefault(k, e.commit)
    for path, listed in (current or {}).items():
        if set(listed) & wanted and path in result:
            result[path].readable_now = True
    return [result[p] for p in sorted(result)]
