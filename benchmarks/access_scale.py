"""Access from the inventory at fleet scale: ``playbooks/access.yml`` with nothing to do.

The repository is the fleet-scale benchmark's (benchmarks/fleet_scale.py, built
with the real sops and cached under benchmarks/out/): every host has ``&hostNNNN``
and ``&rain_hostNNNN``, a rule ``sops/hostNNNN\\.yaml$``, and
``sops/shared\\.yaml$`` names the admin and every host. On top of it, an
inventory puts the hosts in three groups (desktops 40 %, servers 40 %, vms
20 %) and declares five secret categories:

  base     sops/shared\\.yaml$   nixos              (the existing rule, handed over with the marker comment)
  desktop  sops/desktop\\.yaml$  desktops
  server   sops/server\\.yaml$   servers
  network  sops/network\\.yaml$  servers, vms
  cli      sops/cli\\.yaml$      desktops, vms      (every 50th host adds or removes it: nixfleet_categories)

It times, on a copy of the repository:

  (a) first run   access.yml creates four managed rules (hundreds of members each) and rekeys their files
  (b) no-op       access.yml again, nothing to do (the figure the issue bounds at 5 s for 2,000 hosts),
                  best and median of --repeat runs
  (c) move        host0000 moved from desktops to servers in the inventory: four rules edited, four
                  files rekeyed, two of them (desktop, cli) get a new data key; one commit

  python benchmarks/access_scale.py --hosts 2000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), ".collections"))

from ansible_collections.nixfleet.sops.plugins.module_utils import age  # noqa: E402
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine  # noqa: E402
from fleet_scale import build, copy, git, host_name, playbook, sops_binary  # noqa: E402

MARKER = "# managed by nixfleet.sops access: category {name} (edit the inventory, not this rule)"
CATEGORIES = {
    "base": {"path_regex": r"sops/shared\.yaml$", "groups": ["nixos"]},
    "desktop": {"path_regex": r"sops/desktop\.yaml$", "groups": ["desktops"]},
    "server": {"path_regex": r"sops/server\.yaml$", "groups": ["servers"]},
    "network": {"path_regex": r"sops/network\.yaml$", "groups": ["servers", "vms"]},
    "cli": {"path_regex": r"sops/cli\.yaml$", "groups": ["desktops", "vms"]},
}


def groups_of(n: int, moved: bool = False) -> dict[str, list[str]]:
    """Desktops 40 %, servers 40 %, vms 20 %; ``moved``: host0000 is a server instead of a desktop."""
    hosts = [host_name(i) for i in range(n)]
    a, b = n * 2 // 5, n * 4 // 5
    groups = {"desktops": hosts[:a], "servers": hosts[a:b], "vms": hosts[b:]}
    if moved:
        groups["desktops"].remove(hosts[0])
        groups["servers"].append(hosts[0])
    return groups


def prepare(repo: str, keyfile: str) -> None:
    """Hand the shared rule over to access (marker comment) and add one file per new category."""
    path = os.path.join(repo, ".sops.yaml")
    text = open(path).read()
    shared = "  - path_regex: sops/shared\\.yaml$\n"
    assert shared in text
    with open(path, "w") as fh:
        fh.write(text.replace(shared, "  " + MARKER.format(name="base") + "\n" + shared))
    admin_id = next(ln.strip() for ln in open(keyfile) if ln.startswith("AGE-SECRET-KEY-"))
    admin = age.recipient_from_identity(admin_id)
    for name in ("desktop", "server", "network", "cli"):
        engine.encrypt_file(os.path.join(repo, "sops", f"{name}.yaml"), {name: {"password": f"secret-of-{name}"}},
                            [[admin]])
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "categories")


def inventory(path: str, repo: str, keyfile: str, n: int, moved: bool = False) -> str:
    """A YAML inventory: fleet vars and categories in all.vars, three groups under nixos."""
    lines = ["all:", "  vars:", f"    nixfleet_secrets_repo: {repo}", f"    nixfleet_identity_files: [{keyfile}]",
             "    nixfleet_admin_anchors: [admin]",
             f"    nixfleet_secret_categories: {json.dumps(CATEGORIES)}",
             "  hosts:", "    localhost:", "      ansible_connection: local",
             "      ansible_python_interpreter: '{{ ansible_playbook_python }}'",
             "  children:", "    nixos:", "      children:"]
    for g, hosts in groups_of(n, moved).items():
        lines += [f"        {g}:", "          hosts:"]
        for h in hosts:
            if int(h[len("host"):]) % 50 == 7:
                verb = "remove" if g != "servers" else "add"
                lines += [f"            {h}:", f"              nixfleet_categories: {{{verb}: [cli]}}"]
            else:
                lines.append(f"            {h}:")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, nargs="+", default=[2000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    sops = sops_binary(False)
    rows = []
    for n in args.hosts:
        print(f"{n} hosts:", flush=True)
        base = os.path.join(os.path.abspath(args.out), f"fleet-{n}")
        template, keyfile = build(base, n, sops)
        work = os.path.join(base, "work")
        os.makedirs(work, exist_ok=True)
        repo = copy(template, os.path.join(work, "access"))
        prepare(repo, keyfile)
        inv = inventory(os.path.join(work, "inventory-access.yml"), repo, keyfile, n)
        first = playbook("access.yml", inv)
        head = git_head(repo)
        noop = [playbook("access.yml", inv) for _unused in range(args.repeat)]
        assert git_head(repo) == head, "the no-op runs committed something"
        move = playbook("access.yml", inventory(inv, repo, keyfile, n, moved=True))
        touched = git_out(repo, "show", "--name-only", "--format=", "HEAD").split()
        want = [".sops.yaml", "sops/cli.yaml", "sops/desktop.yaml", "sops/network.yaml", "sops/server.yaml"]
        assert sorted(touched) == want, touched
        row = {"hosts": n, "first_s": round(first, 2), "noop_best_s": round(min(noop), 2),
               "noop_median_s": round(statistics.median(noop), 2), "move_s": round(move, 2)}
        rows.append(row)
        print(f"  (a) first run {first:.2f} s  (b) no-op best {min(noop):.2f} s, median "
              f"{statistics.median(noop):.2f} s over {len(noop)} runs  (c) move one host {move:.2f} s", flush=True)
    print("\n| hosts | (a) first run | (b) nothing to do (best / median) | (c) move one host |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['hosts']} | {r['first_s']} s | {r['noop_best_s']} s / {r['noop_median_s']} s | {r['move_s']} s |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


def git_out(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, check=True).stdout.strip()


def git_head(repo: str) -> str:
    return git_out(repo, "rev-parse", "HEAD")


if __name__ == "__main__":
    main()
