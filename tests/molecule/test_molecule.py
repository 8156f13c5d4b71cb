"""Molecule scenarios on real podman containers, reached over real SSH, as part of `make test`.

Skipped only when podman is unavailable on a developer machine; with CI set in the environment a
missing podman is a failure, not a skip. The base image is built once per session
(molecule/_shared/build-image.sh skips the build when the image exists;
NIXFLEET_MOLECULE_REBUILD=1 forces it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MOLECULE_DIR = os.path.join(REPO, "molecule")
BUILD_IMAGE = os.path.join(MOLECULE_DIR, "_shared", "build-image.sh")
VENV_BIN = os.path.dirname(sys.executable)
SCENARIOS = sorted(
    d for d in os.listdir(MOLECULE_DIR)
    if not d.startswith("_") and os.path.isfile(os.path.join(MOLECULE_DIR, d, "molecule.yml"))
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, ".collections"),
        SOPS_DISABLE_VERSION_CHECK="1",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        NO_COLOR="1",
        PATH=VENV_BIN + os.pathsep + env.get("PATH", ""),
    )
    return env


def _podman_problem() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install -y podman runc debootstrap)"
    proc = subprocess.run(["podman", "info"], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        return f"podman does not work here: {proc.stderr.strip()[-500:]}"
    return None


def _tail(text: str, lines: int = 120) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def molecule_image() -> float:
    """Build (or reuse) the shared base image once; returns the seconds it took."""
    problem = _podman_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"molecule scenarios must run in CI: {problem}")
        pytest.skip(problem)
    start = time.monotonic()
    proc = subprocess.run([BUILD_IMAGE], cwd=REPO, env=_env(), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=1200, check=False)
    if proc.returncode != 0:
        pytest.fail(f"building the molecule base image failed:\n{_tail(proc.stdout + proc.stderr)}")
    return time.monotonic() - start


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(molecule_image: float, scenario: str) -> None:
    proc = subprocess.run(
        [os.path.join(VENV_BIN, "molecule"), "test", "-s", scenario],
        cwd=REPO, env=_env(), capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1800, check=False,
    )
    assert proc.returncode == 0, f"molecule test -s {scenario} failed:\n{_tail(proc.stdout + proc.stderr)}"
