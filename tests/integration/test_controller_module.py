"""The repository modules run on the controller without AnsiballZ (plugins/plugin_utils/controller_module.py).

What a user relies on: the result is the one Ansible's own module execution gives (the same fields, check
mode, diff, warnings, the task's environment); a module that dies fails its task with the signal named
instead of hanging the run; and ``nixfleet_in_process: false`` (or any remote connection) goes through
AnsiballZ as before.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

from ansible_collections.nixfleet.sops.plugins.module_utils import failpoints

from tests.lib.runner import ansible_env, run_playbook
from tests.lib.secrets_repo import make_repo, sops_decrypt

RESULT = re.compile(r'^\s*"msg": ("RESULT=.*")$', re.M)


def _repo_with_work(tmp_path):
    """A repository where beta has left the shared file: a rekey has one file to change."""
    repo = make_repo(str(tmp_path), hosts=("alpha", "beta"))
    repo.write_config([(r"sops/shared\.yaml$", ["admin", "alpha"]), (r"sops/alpha\.yaml$", ["admin", "alpha"]),
                       (r"sops/beta\.yaml$", ["admin", "beta"])], users=("admin",), hosts=("alpha", "beta"))
    return repo


def _play(tmp_path, repo, keyfile, extra_task="", task_vars=""):
    play = tmp_path / "play.yml"
    play.write_text(f"""
- name: Rekey
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Rekey
      nixfleet.sops.sops_rekey:
        repo: {repo.path}
        identity_files: [{keyfile}]
{extra_task}
      register: rekey
{task_vars}
    - name: Show the result
      ansible.builtin.debug:
        msg: "RESULT={{{{ rekey | to_json }}}}"
""")
    return str(play)


def _result(run):
    found = RESULT.search(run.stdout)
    assert found, run.stdout[-3000:] + run.stderr[-2000:]
    return json.loads(json.loads(found.group(1))[len("RESULT="):])


def test_same_result_as_through_ansiballz_in_check_mode_and_for_real(tmp_path, sops_bin):
    repo = _repo_with_work(tmp_path)
    play = _play(tmp_path, repo, repo.keyfile("admin"))
    results = {}
    for in_process in (True, False):
        # Set as an inventory variable might be: a template.
        run = run_playbook(play, check=True, diff=True, verbosity=3,
                           extra_vars={"nixfleet_in_process": f"{{{{ {in_process} }}}}"})
        assert run.rc == 0, run.stdout[-3000:]
        results[in_process] = _result(run)
        # Only the AnsiballZ path packs and runs a module file.
        assert ("AnsiballZ_sops_rekey.py" in run.stdout) is (not in_process), run.stdout[-3000:]
    assert results[True] == results[False]
    assert results[True]["changed_files"] == ["sops/shared.yaml"] and results[True]["changed"] is True
    assert results[True]["diff"], "diff mode gave no diff"
    # Check mode wrote nothing: beta still opens the shared file.
    assert sops_decrypt(sops_bin, repo.file("sops/shared.yaml"), repo.keyfile("beta")).returncode == 0

    run = run_playbook(play)
    assert run.rc == 0, run.stdout[-3000:]
    assert _result(run)["changed_files"] == ["sops/shared.yaml"]
    assert sops_decrypt(sops_bin, repo.file("sops/shared.yaml"), repo.keyfile("beta")).returncode != 0
    assert sops_decrypt(sops_bin, repo.file("sops/shared.yaml"), repo.keyfile("alpha")).returncode == 0


def test_warnings_come_back_with_the_result(tmp_path):
    repo = _repo_with_work(tmp_path)
    keyfile = tmp_path / "keys.txt"
    keyfile.write_text(open(repo.keyfile("admin"), encoding="utf-8").read() + "not-a-key-line\n")
    os.chmod(keyfile, 0o600)
    run = run_playbook(_play(tmp_path, repo, str(keyfile)), check=True)
    assert run.rc == 0, run.stdout[-3000:]
    result = _result(run)
    assert any(str(keyfile) in str(w) for w in result.get("warnings", [])), result
    assert "[WARNING]" in run.stdout + run.stderr and str(keyfile) in run.stdout + run.stderr


def test_the_tasks_environment_reaches_the_module(tmp_path):
    """SOPS_AGE_KEY_FILE set with the task's environment: keyword is where the module finds its identity."""
    repo = make_repo(str(tmp_path), hosts=("alpha", "beta"))
    # beta joins alpha's file: its data key must be opened to be given to beta.
    everyone = ["admin", "alpha", "beta"]
    repo.write_config([(r"sops/shared\.yaml$", everyone), (r"sops/alpha\.yaml$", everyone),
                       (r"sops/beta\.yaml$", ["admin", "beta"])], users=("admin",), hosts=("alpha", "beta"))
    play = _play(tmp_path, repo, repo.keyfile("admin"))
    with open(play, encoding="utf-8") as fh:
        text = fh.read().replace(f"identity_files: [{repo.keyfile('admin')}]", "identity_files: []")
    with open(play, "w", encoding="utf-8") as fh:
        fh.write(text)
    without = run_playbook(play)
    assert without.rc != 0, "the rekey opened files without any identity"
    with open(play, "w", encoding="utf-8") as fh:
        env = f"      environment:\n        SOPS_AGE_KEY_FILE: {repo.keyfile('admin')}\n"
        fh.write(text.replace("      register: rekey\n", "      register: rekey\n" + env))
    run = run_playbook(play)
    assert run.rc == 0, run.stdout[-3000:]
    assert _result(run)["changed_files"] == ["sops/alpha.yaml"]


def test_a_module_killed_fails_its_task_and_the_run_ends(tmp_path):
    repo = _repo_with_work(tmp_path)
    play = _play(tmp_path, repo, repo.keyfile("admin"))
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), play,
           "-i", os.path.join(os.path.dirname(__file__), "..", "lib", "localhost.yml")]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
                          env=ansible_env({failpoints.ENV: "write#1:kill"}))
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert "sops_rekey was killed by SIGKILL" in proc.stdout, proc.stdout[-3000:]
    assert time.monotonic() - started < 100
    # The file it was writing is whole: the next run finishes the work.
    run = run_playbook(play)
    assert run.rc == 0 and _result(run)["changed_files"] == ["sops/shared.yaml"], run.stdout[-3000:]
    again = run_playbook(play)
    assert _result(again)["changed_files"] == []


IMPORT = """
import sys
from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder
_AnsibleCollectionFinder(paths=[{coll!r}])._install()
from ansible_collections.nixfleet.sops.plugins.plugin_utils import controller_module
if {ours}:
    module = controller_module.import_module("sops_rekey")
else:
    import ansible_collections.nixfleet.sops.plugins.modules.sops_rekey as module
from ansible_collections.nixfleet.sops.plugins.module_utils import fleet
from ansible_collections.nixfleet.sops.plugins.module_utils.sops import file
print(" ".join(type(m.__spec__.loader).__name__ for m in (module, fleet, file)), fleet.__spec__.cached)
"""


def test_the_module_and_its_module_utils_are_imported_from_byte_code():
    """Ansible's collection loader compiles every file from source at every import (0.12-0.22 s a task for a
    repository module); the in-process path imports them with Python's loader, which keeps byte-code."""
    coll = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), ".collections")

    def loaders(ours):
        out = subprocess.run([sys.executable, "-c", IMPORT.format(coll=coll, ours=ours)], capture_output=True,
                             text=True, check=True, env=ansible_env())
        return out.stdout.split()

    *kinds, cached = loaders(True)
    assert kinds == ["SourceFileLoader"] * 3 and cached.endswith(".pyc"), (kinds, cached)
    *kinds, _cached = loaders(False)  # the same imports through Ansible's own loader: compiled from source
    assert "SourceFileLoader" not in kinds, kinds
