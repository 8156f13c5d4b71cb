# Copyright: nixfleet.sops contributors
# MIT License
"""``.sops.yaml`` as code: anchors, creation rules and sops' rule matching.

Vocabulary: a *recipient* is an ``age1…`` public key, an *identity* an
``AGE-SECRET-KEY-1…`` private key, an *anchor* the YAML anchor name that
``.sops.yaml`` gives a recipient (``- &griefling age1…``).

The pieces: ``parse`` (positioned YAML parse on libyaml, alias-expansion
limit, yaml.v3's reading of aliases and merge keys), ``regex`` (path_regex
with the real RE2, one ``re2.Set`` for all rules), ``model`` (what one text
means, computed once per text version), ``editor`` / ``edit_anchors`` /
``edit_rules`` (surgical text edits, each one verified transaction), ``lint``
(findings, over files the caller passes) and ``config`` (``SopsConfig``, the
facade the rest of the collection uses).

Why surgical text edits: people keep comments, blank lines, their own quoting
and two indentation styles in one file. Any YAML dumper normalises at least
one of those, so ruamel.yaml is used only to PARSE (events, with positions)
and every edit inserts, deletes or replaces exact lines or spans of the
original text. After each edit the new text is parsed again and what sops
would read from it compared with what the edit intended; a mismatch is an
error and nothing is written.

Rule matching follows sops 3.11 (config/config.go): the first rule whose
``path_regex`` (Go RE2, unanchored search) matches wins, a rule without
``path_regex`` matches everything, and the path is made relative to the
config file's directory by trimming that directory's absolute path.
"""

from __future__ import annotations

from .common import NoMatchingRuleError, SopsConfigError, check_anchor_name, relative_to_config
from .config import SopsConfig
from .lint import RepoFile, is_sops_file, lint
from .model import Anchor, ConfigModel, CreationRule
from .parse import MAX_ALIAS_EXPANSION, parse_text
from .regex import PathMatcher, compile_path_regex, path_regex_matches

__all__ = [
    "SopsConfigError",
    "NoMatchingRuleError",
    "SopsConfig",
    "Anchor",
    "CreationRule",
    "check_anchor_name",
    "compile_path_regex",
    "path_regex_matches",
    "PathMatcher",
    "ConfigModel",
    "RepoFile",
    "lint",
    "parse_text",
    "MAX_ALIAS_EXPANSION",
    "relative_to_config",
    "is_sops_file",
]
