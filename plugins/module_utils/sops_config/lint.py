# Copyright: nixfleet.sops contributors
# MIT License
"""Findings about a ``.sops.yaml`` and the files it covers."""

from __future__ import annotations

import os


def is_sops_file(path: str) -> bool:
    """True when ``path`` holds sops metadata, as the sops engine reads it (also when that metadata is broken)."""
    from .. import sops as engine  # the engine needs pyrage; .sops.yaml edits alone do not

    if not (os.path.isfile(path) and os.access(path, os.R_OK)):
        return False
    try:
        engine.load(path)
    except engine.SopsNotEncryptedError:
        return False
    except engine.SopsError:
        return True  # sops metadata is there, only broken
    return True

