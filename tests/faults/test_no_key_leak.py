"""No private key anywhere on the controller but where it belongs, after -vvv, ANSIBLE_DEBUG=1 and a kill.

The demo bootstrap runs three times with every place Ansible and the collection write to (HOME,
TMPDIR, XDG_RUNTIME_DIR, Ansible's local and remote temp) inside the test's directory: once at -vvv
with ANSIBLE_DEBUG=1, once killed (the whole process group) right after the private staging was
written, and once more to finish. Then every file there, and every line the runs printed, is searched
for private key material. Allowed: the operator's own key file, and the demo host's root filesystem
(it stands in for the target, where the keys are meant to be); sops files are searched too (their
values are encrypted, so a clear key in one is a leak).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from ansible_collections.nixfleet.sops.plugins.module_utils import failpoints

from tests.faults.lib import SECRET_RE
from tests.lib.runner import REPO, ansible_env, run_playbook


def _demo(tmp_path):
    inv = tmp_path / "inventory"
    inv.mkdir()
    text = open(os.path.join(REPO, "inventory", "demo.yml")).read()
    text = text.replace('nixfleet_demo_dir: "{{ inventory_dir }}/../demo"', f'nixfleet_demo_dir: "{tmp_path}/demo"')
    (inv / "demo.yml").write_text(text)
    return str(inv / "demo.yml")


def _env(tmp_path, **extra):
    dirs = {name: tmp_path / name for name in ("home", "tmp", "run", "ansible-local", "ansible-remote")}
    for d in dirs.values():
        d.mkdir(mode=0o700, exist_ok=True)
    return {"HOME": str(dirs["home"]), "TMPDIR": str(dirs["tmp"]), "XDG_RUNTIME_DIR": str(dirs["run"]),
            "ANSIBLE_LOCAL_TEMP": str(dirs["ansible-local"]), "ANSIBLE_REMOTE_TEMP": str(dirs["ansible-remote"]),
            **extra}


def _leaks(root, allowed):
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in allowed]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if path in allowed or os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as fh:
                if SECRET_RE.search(fh.read().decode("utf-8", "replace")):
                    found.append(path)
    return found


def test_no_private_key_outside_its_place_after_verbose_debug_and_killed_runs(tmp_path):
    inventory = _demo(tmp_path)
    outputs = []
    first = run_playbook("demo.yml", inventory=inventory, verbosity=3, env=_env(tmp_path, ANSIBLE_DEBUG="1"))
    outputs += [first.stdout, first.stderr]
    assert first.rc == 0, first.stdout[-3000:]
    # Make the push happen again, then kill the whole run once the private staging is written.
    host_root = tmp_path / "demo" / "hosts" / "griefling"
    for dirpath, _dirs, files in os.walk(host_root):
        for name in files:
            if name in ("keys.txt", "ssh_host_ed25519_key"):
                os.unlink(os.path.join(dirpath, name))
    killed = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-vvv", "-i", inventory,
         os.path.join(REPO, "playbooks", "demo.yml")], capture_output=True, text=True, start_new_session=True,
        env=ansible_env(_env(tmp_path, **{failpoints.ENV: "extra_files.staged:killplaybook"})), check=False)
    outputs += [killed.stdout, killed.stderr]
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stdout[-2000:])
    staging = [os.path.join(d, n) for d, ns, _unused in os.walk(tmp_path / "run") for n in ns if n.startswith("extra-")]
    assert staging, "the kill left no staging behind: the point was never reached"
    last = run_playbook("demo.yml", inventory=inventory, env=_env(tmp_path))
    outputs += [last.stdout, last.stderr]
    assert last.rc == 0, last.stdout[-3000:]
    assert "staging of an interrupted earlier run" in last.stdout + last.stderr
    assert not [s for s in staging if os.path.exists(s)], "the interrupted run's staging is still there"

    allowed = {str(host_root), str(tmp_path / "demo" / "admin" / "keys.txt")}
    assert _leaks(str(tmp_path), allowed) == []
    for text in outputs:
        match = SECRET_RE.search(text)
        assert match is None, text[max(0, match.start() - 200):match.end() + 50]
