"""What a large rekey prints: bytes and longest line of `playbooks/rekey.yml` output, default and -v.

Builds a git secrets repository of N sops files (10 hosts, N/10 files each, plus a shared
file), gives every rule one more recipient, and runs rekey.yml on a copy per verbosity.
Also checks each run made the same single commit of the same files.

  python benchmarks/rekey_output.py --files 1000
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO_ROOT, ".collections"))
sys.path.insert(0, REPO_ROOT)

from ansible_collections.nixfleet.sops.plugins.module_utils import age  # noqa: E402
from ansible_collections.nixfleet.sops.plugins.module_utils.sops_config import SopsConfig  # noqa: E402

from tests.lib.runner import run_playbook  # noqa: E402
from tests.lib.secrets_repo import make_repo  # noqa: E402


def git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--verbosity", type=int, nargs="*", default=[0, 1])
    ap.add_argument("--batch-size", type=int, help="nixfleet_batch_size (default: the playbook's)")
    ap.add_argument("--playbook", default="rekey.yml", help="another rekey playbook to compare (e.g. an older one)")
    ns = ap.parse_args()
    base = tempfile.mkdtemp(prefix="nixfleet-rekey-output-")
    try:
        hosts = tuple(f"h{i:02d}" for i in range(10))
        repo = make_repo(base, hosts=hosts, files_per_host=max(1, ns.files // 10))
        cfg = SopsConfig.load(repo.file(".sops.yaml"))
        cfg.ensure_recipient("laptop", age.recipient_from_identity(age.generate_identity()), group="users")
        for rule in cfg.rules:
            cfg.ensure_rule_member(rule.path_regex, "laptop")
        cfg.save()
        git(repo.path, "commit", "-qam", "add laptop")
        for v in ns.verbosity:
            copy = os.path.join(base, f"copy-v{v}")
            shutil.copytree(repo.path, copy, symlinks=True)
            t0 = time.monotonic()
            extra = {"nixfleet_secrets_repo": copy}
            if ns.batch_size:
                extra["nixfleet_batch_size"] = ns.batch_size
            run = run_playbook(ns.playbook, extra, verbosity=v,
                               env={"SOPS_AGE_KEY_FILE": repo.keyfile("admin")})
            took = time.monotonic() - t0
            if run.rc != 0:
                raise SystemExit(run.stdout[-3000:] + run.stderr[-3000:])
            files = git(copy, "show", "--name-only", "--format=", "HEAD").split()
            longest = max(len(line) for line in run.stdout.splitlines())
            print(f"-v{v}: {len(run.stdout.encode())} bytes, {len(run.stdout.splitlines())} lines, longest line "
                  f"{longest} chars, {took:.1f} s; commit '{git(copy, 'log', '-1', '--format=%s').strip()}' "
                  f"with {len(files)} files")
            if v == 0:
                print("\n".join("    " + line for line in run.stdout.splitlines() if line.strip())[-4000:])
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
