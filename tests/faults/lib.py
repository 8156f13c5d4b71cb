"""The bad-input and fault suite's common parts: a world to break, a snapshot to compare, the checks.

Every case asserts what a user cares about when something goes wrong: a non-zero exit, one clear line
that names what was wrong and where, no private key material anywhere in the output, and the files
exactly as they were (content, mode, owner; links as links).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.nixfleet.sops.plugins.module_utils import age, failpoints, sshkeys

from tests.lib.inproc import run_module_inproc
from tests.lib.secrets_repo import SecretsRepo, make_repo

NOBODY = 65534
# Key material, not its name: an identity has dozens of characters after its prefix; a PEM block has a body.
SECRET_RE = re.compile(r"AGE-SECRET-KEY-(PQ-)?1[0-9A-Za-z]{8,}|AGE-PLUGIN-[A-Z0-9-]+1[0-9A-Za-z]{8,}"
                       r"|PRIVATE KEY-----\s*\S|b3BlbnNzaC1rZXktdjE")
TEMP_RE = re.compile(r"\.nixfleet-[A-Za-z0-9_]{6,}\.tmp$")


def snapshot(*roots: str, ignore_temps: bool = False) -> dict[str, Any]:
    """Every path under ``roots`` (``.git`` objects aside): content digest, mode, owner; links as links."""
    out: dict[str, Any] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != ".git")
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                if ignore_temps and TEMP_RE.search(name):
                    continue
                st = os.lstat(p)
                if stat.S_ISLNK(st.st_mode):
                    body: tuple = ("link", os.readlink(p))
                elif stat.S_ISREG(st.st_mode):
                    body = ("file", hashlib.sha256(open(p, "rb").read()).hexdigest())
                else:
                    body = (stat.S_IFMT(st.st_mode),)
                out[p] = (body, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return out


@dataclass
class World:
    """A secrets repository in git with an admin key, plus a directory of hostile things to point at."""

    base: str
    repo: SecretsRepo
    admin_keys: str
    bad: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return self.repo.path

    def roots(self) -> list[str]:
        return [self.repo.path, os.path.join(self.base, "hostile"), os.path.join(self.base, "home")]

    def snapshot(self, ignore_temps: bool = False) -> dict[str, Any]:
        return snapshot(*self.roots(), ignore_temps=ignore_temps)


def make_world(tmp_path) -> World:
    """The repository (git, two hosts) and the hostile directory: a FIFO, a directory, a 200 MB sparse
    file, binary garbage, an alias bomb, a link out of the tree, a file another user owns."""
    base = str(tmp_path)
    repo = make_repo(base, hosts=("alpha", "beta"))
    subprocess.run(["git", "-C", repo.path, "config", "user.email", "t@example.invalid"], check=True)
    subprocess.run(["git", "-C", repo.path, "config", "user.name", "t"], check=True)
    home = os.path.join(base, "home")
    os.makedirs(home, mode=0o700)
    keys = os.path.join(home, "keys.txt")
    with open(os.open(keys, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
        fh.write(age.format_identity_file(repo.identities["admin"]))
    hostile = os.path.join(base, "hostile")
    os.makedirs(hostile)
    bad = {"fifo": os.path.join(hostile, "fifo"), "dir": os.path.join(hostile, "dir"),
           "sparse": os.path.join(hostile, "sparse"), "garbage": os.path.join(hostile, "garbage"),
           "bomb": os.path.join(hostile, "bomb.yaml"), "link_out": os.path.join(hostile, "link_out"),
           "foreign": os.path.join(hostile, "foreign"), "missing": os.path.join(hostile, "missing"),
           "empty": os.path.join(hostile, "empty"), "pubkey": os.path.join(hostile, "id.pub"),
           "recipient_file": os.path.join(hostile, "recipient.txt")}
    os.mkfifo(bad["fifo"])
    os.mkdir(bad["dir"])
    with open(bad["sparse"], "wb") as fh:
        fh.truncate(200 << 20)
    with open(bad["garbage"], "wb") as fh:
        fh.write(bytes(range(256)) * 4)
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]
    with open(bad["bomb"], "w") as fh:
        fh.write("\n".join(lines) + "\ncreation_rules: *i\n")
    os.symlink("/etc/passwd", bad["link_out"])
    with open(bad["foreign"], "w") as fh:
        fh.write(age.format_identity_file(age.generate_identity()))
    os.chown(bad["foreign"], NOBODY, NOBODY)
    open(bad["empty"], "w").close()
    with open(bad["pubkey"], "w") as fh:
        fh.write(sshkeys.generate("x@y").public_line + "\n")
    with open(bad["recipient_file"], "w") as fh:
        fh.write(repo.recipient("admin") + "\n")
    return World(base, repo, keys, bad)


def flip(recipient: str) -> str:
    """The recipient with one character changed (its bech32 checksum no longer matches)."""
    i = len(recipient) // 2
    return recipient[:i] + ("q" if recipient[i] != "q" else "p") + recipient[i + 1:]


def run_inproc(module: str, args: dict[str, Any], env: dict[str, str] | None = None, check: bool = False):
    """A module run in this process with ``env`` (failpoints re-read)."""
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    failpoints.reset()
    try:
        return run_module_inproc(module, args, check=check)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        failpoints.reset()


def assert_clear_failure(res: Any, *needles: str) -> None:
    """Failed, non-zero, one line that contains every ``needles`` regex, and no key material anywhere."""
    msg = res.msg
    assert res.failed and res.rc != 0, f"expected a failure, got: {res.result}"
    assert msg and "\n" not in msg.strip(), f"not one line: {msg!r}"
    assert "Traceback" not in msg and "unexpected " not in msg, f"not a clear error: {msg}"
    for needle in needles:
        assert re.search(needle, msg), f"{needle!r} not in {msg!r}"
    for text in (res.stdout, res.stderr, repr(res.result)):
        assert not SECRET_RE.search(text), f"key material in the output: {text[:300]}"


Args = Callable[["World"], dict[str, Any]]


class Cases(list):
    """The bad-input cases of a test module: (id, module, args(world), needles), registered with ``case``."""

    def case(self, module: str, name: str, needles: tuple[str, ...]) -> Callable[[Args], Args]:
        """Register ``args(world)`` as a bad-input case of ``module`` whose error must match ``needles``."""

        def add(fn: Args) -> Args:
            self.append((f"{module}:{name}", module, fn, needles))
            return fn

        return add


def assert_bad_input_changes_nothing(world: World, module: str, args: Args, needles: tuple[str, ...]) -> None:
    """Run ``module`` in-process with ``args(world)``: one clear line naming ``needles``, and no file changed."""
    params = args(world)
    before = world.snapshot()
    res = run_inproc(module, params)
    assert_clear_failure(res, *needles)
    assert world.snapshot() == before
