"""A small fleet for the access tests: 3 inventory groups, 6 hosts, 5 secret categories.

The secrets repository is laid out as bootstrap leaves it: ``&admin``,
``&break_glass``, per host ``&<host>`` and ``&rain_<host>``, a hand-written
rule per host file (with comments), and one file per category encrypted to the
admin alone (as a person creates it before access hands it out).
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from ansible_collections.nixfleet.sops.plugins.module_utils import age
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine

from tests.lib.secrets_repo import SecretsRepo

GROUPS = {"desktops": ["d1", "d2"], "servers": ["s1", "s2"], "vms": ["v1", "v2"]}
HOSTS = [h for hs in GROUPS.values() for h in hs]
CATEGORIES: dict[str, dict[str, Any]] = {
    "base": {"path": "sops/shared.yaml", "groups": ["nixos"]},
    "desktop": {"path_regex": r"sops/desktop\.yaml$", "groups": ["desktops"]},
    "server": {"path_regex": r"sops/server\.yaml$", "groups": ["servers"]},
    "network": {"path_regex": r"sops/network\.yaml$", "groups": ["servers", "vms"], "hosts": ["d1"]},
    "cli": {"path_regex": r"sops/cli\.yaml$", "groups": ["desktops", "vms"]},
}
HOST_SETTINGS = {"v2": {"remove": ["cli"]}, "s1": {"add": ["cli"]}}  # their nixfleet_categories
# What the model above gives (admins and break-glass first, hosts in name order).
EXPECTED = {
    "base": ["admin", "break_glass", "d1", "d2", "s1", "s2", "v1", "v2"],
    "desktop": ["admin", "break_glass", "d1", "d2"],
    "server": ["admin", "break_glass", "s1", "s2"],
    "network": ["admin", "break_glass", "d1", "s1", "s2", "v1", "v2"],
    "cli": ["admin", "break_glass", "d1", "d2", "s1", "v1"],
}
CATEGORY_FILES = {"base": "sops/shared.yaml", "desktop": "sops/desktop.yaml", "server": "sops/server.yaml",
                  "network": "sops/network.yaml", "cli": "sops/cli.yaml"}


def inventory_groups(groups: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Ansible's ``groups`` for this inventory (nixos holds the three groups; localhost is ungrouped)."""
    groups = GROUPS if groups is None else groups
    nixos = [h for hs in groups.values() for h in hs]
    return {"all": ["localhost", *nixos], "ungrouped": ["localhost"], "nixos": nixos, **groups}


def config_text(repo: SecretsRepo) -> str:
    lines = ["# Secrets of the fleet (hand-written header).", "keys:", "  users:",
             f"    - &admin {repo.recipient('admin')}  # the operator",
             f"    - &break_glass {repo.recipient('break_glass')}"]
    lines += [f"    - &rain_{h} {repo.recipient('rain_' + h)}" for h in HOSTS]
    lines += ["  hosts:"] + [f"    - &{h} {repo.recipient(h)}" for h in HOSTS]
    lines += ["creation_rules:"]
    for h in HOSTS:
        lines += [f"  # {h}: its own secrets, readable by its user key too",
                  f"  - path_regex: sops/{h}\\.yaml$", "    key_groups:", "      - age:",
                  "          - *admin", f"          - *{h}", f"          - *rain_{h}  # user key"]
    return "\n".join(lines) + "\n"


def make_access_repo(base: str, git: bool = True) -> SecretsRepo:
    """The repository described above, committed to git."""
    path = os.path.join(base, "nix-secrets")
    os.makedirs(os.path.join(path, "sops"))
    repo = SecretsRepo(path=path)
    for a in ["admin", "break_glass", *HOSTS, *("rain_" + h for h in HOSTS)]:
        repo.identities[a] = age.generate_identity()
    with open(repo.file(".sops.yaml"), "w") as fh:
        fh.write(config_text(repo))
    for h in HOSTS:
        engine.encrypt_file(repo.file(f"sops/{h}.yaml"), {"host": h, "keys": {"age": f"user-key-of-{h}"}},
                            [[repo.recipient(a) for a in ("admin", h, "rain_" + h)]])
    for cat, rel in CATEGORY_FILES.items():
        engine.encrypt_file(repo.file(rel), {cat: {"password": f"secret-of-{cat}", "port": 8080}},
                            [[repo.recipient("admin")]])
    with open(repo.file("README.md"), "w") as fh:
        fh.write("the fleet's secrets\n")
    if git:
        for args in (["init", "-q"], ["config", "user.email", "t@example.invalid"], ["config", "user.name", "t"],
                     ["add", "-A"], ["commit", "-qm", "init"]):
            subprocess.run(["git", "-C", path, *args], check=True, capture_output=True)
    return repo


def tree(repo: SecretsRepo) -> dict[str, bytes]:
    """Every file of the work tree (not .git) with its bytes."""
    out = {}
    for root, dirs, files in os.walk(repo.path):
        dirs[:] = [d for d in dirs if d != ".git"]
        for f in files:
            full = os.path.join(root, f)
            out[os.path.relpath(full, repo.path)] = open(full, "rb").read()
    return out
