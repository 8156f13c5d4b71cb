"""One name per concept in every module's documented options (COMMON names: repo, config, bookmark,
identity_files, commit_message); the old names survive only as aliases. New modules are held to it too."""

from __future__ import annotations

import glob
import os
import re

import pytest
import yaml

from tests.lib.runner import REPO

MODULES = sorted(glob.glob(os.path.join(REPO, "plugins", "modules", "*.py")))
# Names that must not be an option's own name: the canonical one to use instead.
RETIRED = {"secrets_repo": "repo", "vcs_bookmark": "bookmark", "message": "commit_message",
           "config_path": "config", "age_keyfile": "identity_files", "age_key": "age_keys"}


def _options(path: str) -> dict:
    src = open(path).read()
    doc = yaml.safe_load(re.search(r'DOCUMENTATION = r"""(.*?)"""', src, re.S).group(1))
    return doc.get("options") or {}


@pytest.mark.parametrize("path", MODULES, ids=[os.path.basename(m)[:-3] for m in MODULES])
def test_canonical_option_names(path):
    opts = _options(path)
    wrong = {name: RETIRED[name] for name in opts if name in RETIRED}
    assert not wrong, f"use the canonical names (old ones as aliases): {wrong}"
    if "repo" in opts:
        assert "secrets_repo" in (opts["repo"].get("aliases") or []), "repo keeps secrets_repo as an alias"
    for name, spec in opts.items():
        desc = " ".join(spec.get("description") if isinstance(spec.get("description"), list)
                        else [spec.get("description", "")])
        if name == "path" and re.match(r"Path of the C\(\.sops\.yaml\)", desc):
            pytest.fail("the .sops.yaml option is called config (path as an alias)")
