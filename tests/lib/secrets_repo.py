"""Build throwaway secrets repositories for tests and benchmarks.

The layout is the one users keep: ``.sops.yaml`` with ``keys: {users, hosts}``
anchors and one creation rule per host file plus a shared rule, and
``sops/*.yaml`` files encrypted with the native engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO_ROOT, ".collections"))

from ansible_collections.nixfleet.sops.plugins.module_utils import age  # noqa: E402
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine  # noqa: E402


@dataclass
class SecretsRepo:
    path: str
    identities: dict[str, str] = field(default_factory=dict)  # anchor -> identity

    def recipient(self, anchor: str) -> str:
        return age.recipient_from_identity(self.identities[anchor])

    def keyfile(self, *anchors: str) -> str:
        """Write an age key file holding the identities of ``anchors``; return its path."""
        name = "_".join(anchors)
        path = os.path.join(os.path.dirname(self.path), f"keys-{os.path.basename(self.path)}-{name}.txt")
        with open(path, "w") as fh:
            fh.write("".join(age.format_identity_file(self.identities[a]) for a in anchors))
        os.chmod(path, 0o600)
        return path

    def file(self, rel: str) -> str:
        return os.path.join(self.path, rel)

    def write_config(self, rules: list[tuple[str, list[str]]], users=("admin",), hosts=()) -> None:
        lines = ["keys:", "  users:"]
        lines += [f"    - &{u} {self.recipient(u)}" for u in users]
        lines += ["  hosts:"] + [f"    - &{h} {self.recipient(h)}" for h in hosts]
        if not hosts:
            lines.pop()
        lines.append("creation_rules:")
        for regex, anchors in rules:
            lines += [f"  - path_regex: {regex}", "    key_groups:", "      - age:"]
            lines += [f"          - *{a}" for a in anchors]
        with open(os.path.join(self.path, ".sops.yaml"), "w") as fh:
            fh.write("\n".join(lines) + "\n")


def make_repo(
    base: str,
    hosts: list[str] | tuple[str, ...] = ("alpha", "beta"),
    files_per_host: int = 1,
    extra_recipients: int = 0,
    git: bool = True,
) -> SecretsRepo:
    """A repo with an admin, ``hosts``, a shared file for all, and per-host files for admin + host."""
    path = os.path.join(base, "nix-secrets")
    os.makedirs(os.path.join(path, "sops"), exist_ok=True)
    repo = SecretsRepo(path=path)
    anchors = ["admin", *hosts] + [f"extra{i}" for i in range(extra_recipients)]
    for a in anchors:
        repo.identities[a] = age.generate_identity()
    users = ["admin"] + [f"extra{i}" for i in range(extra_recipients)]
    rules = [(r"sops/shared\.yaml$", users + list(hosts))]
    rules += [(rf"sops/{h}(-\d+)?\.yaml$", users + [h]) for h in hosts]
    repo.write_config(rules, users=users, hosts=hosts)
    engine.encrypt_file(repo.file("sops/shared.yaml"), {"shared": {"wifi": "hunter2", "n": 1}},
                        [[repo.recipient(a) for a in users + list(hosts)]])
    for h in hosts:
        for i in range(files_per_host):
            name = f"sops/{h}.yaml" if i == 0 else f"sops/{h}-{i}.yaml"
            engine.encrypt_file(repo.file(name), {"host": h, "i": i, "keys": {"age": f"secret-{h}-{i}"}},
                                [[repo.recipient(a) for a in users + [h]]])
    with open(os.path.join(path, "README.md"), "w") as fh:
        fh.write("secrets\n")
    if git:
        def run(*a):
            subprocess.run(["git", "-C", path, *a], check=True, capture_output=True)

        run("init", "-q")
        run("config", "user.email", "test@example.invalid")
        run("config", "user.name", "test")
        run("add", "-A")
        run("commit", "-qm", "init")
    return repo


def sops_decrypt(sops_bin: str, path: str, keyfile: str) -> subprocess.CompletedProcess[str]:
    """Run the real sops to decrypt ``path`` with only the identities in ``keyfile``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPS_AGE")}
    env.update({"SOPS_AGE_KEY_FILE": keyfile, "SOPS_DISABLE_VERSION_CHECK": "1", "HOME": "/nonexistent"})
    return subprocess.run([sops_bin, "decrypt", path], capture_output=True, text=True, env=env, check=False)
