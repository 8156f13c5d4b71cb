"""A controller without a library the collection needs gets Ansible's missing_required_lib message naming it
(not "No module named ..."), through real Ansible."""

from __future__ import annotations

import subprocess
import sys

from tests.lib.runner import ansible_env, run_module

BLOCKER = '''
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "{lib}" or name.startswith("{lib}."):
            raise ImportError(f"No module named {{name!r}} (blocked by the test)")
        return None
sys.meta_path.insert(0, _Block())
'''


def _without(tmp_path, lib: str) -> dict[str, str]:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER.format(lib=lib))
    return {"PYTHONPATH": str(tmp_path)}


def test_rekey_without_pyrage_names_it(tmp_path):
    r = run_module("sops_rekey", {"repo": str(tmp_path)}, env=_without(tmp_path, "pyrage"))
    assert r.failed
    assert "Failed to import the required Python library (pyrage)" in r.msg, r.msg


def test_recipient_without_ruamel_names_it(tmp_path):
    r = run_module("sops_recipient", {"config": str(tmp_path / ".sops.yaml"), "name": "a", "recipient": "age1x"},
                   env=_without(tmp_path, "ruamel"))
    assert r.failed
    assert "Failed to import the required Python library (ruamel.yaml)" in r.msg, r.msg


def test_secret_lookup_without_pyrage_names_it(tmp_path):
    env = ansible_env(_without(tmp_path, "pyrage"))
    proc = subprocess.run([f"{sys.prefix}/bin/ansible", "localhost", "-i", "localhost,", "-c", "local", "-m",
                           "ansible.builtin.debug", "-a", "msg={{ lookup('nixfleet.sops.secret', 'x.yaml') }}"],
                          capture_output=True, text=True, env=env, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "Failed to import the required Python library (pyrage)" in proc.stdout + proc.stderr, proc.stdout
