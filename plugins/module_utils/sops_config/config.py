# Copyright: nixfleet.sops contributors
# MIT License
"""``SopsConfig``: the public facade of a ``.sops.yaml`` (load, read, edit, save, validate).

It holds the text; reading goes to the model of the current text (computed
once per text version), edits to the transactional editor, findings to lint.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

from ..fsutil import CONFIG_LIMIT, UnsafePathError, atomic_write, read_regular, walk_files
from .common import SopsConfigError
from .edit_rules import RuleEdits
from .lint import RepoFile, is_sops_file, lint
from .model import Anchor, CreationRule
from .parse import Node


class SopsConfig(RuleEdits):
    """A ``.sops.yaml`` held as text, read through a positioned parse, edited surgically."""

    @classmethod
    def load(cls, path: str, missing_ok: bool = False) -> SopsConfig:
        """Read ``path``; with ``missing_ok`` a missing file is an empty config (created on save).

        A ``.sops.yaml`` that is a symlink out of its own directory is refused: the repository's
        rules would come from (and a save would go to) a file someone else may control."""
        if os.path.islink(path):
            real, home = os.path.realpath(path), os.path.realpath(os.path.dirname(os.path.abspath(path)))
            if os.path.commonpath([real, home]) != home:
                raise SopsConfigError(f"{path} is a symlink to {real}, outside {home}: replace the link with the "
                                      ".sops.yaml itself")
        try:
            text = read_regular(path, CONFIG_LIMIT, ".sops.yaml").decode("utf-8")
        except FileNotFoundError:
            if not missing_ok:
                raise SopsConfigError(f"{path}: no such file") from None
            text = ""
        except UnsafePathError as exc:
            raise SopsConfigError(exc.message) from None
        except OSError as exc:
            raise SopsConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise SopsConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        return cls(text, path)

    @property
    def changed(self) -> bool:
        """True when the text differs from what was loaded."""
        return self.text != self.original

    def save(self, path: str | None = None) -> bool:
        """Write the text atomically when it changed (or to another ``path``); return whether written."""
        target = path or self.path
        if path is None and not self.changed and os.path.exists(target):
            return False
        atomic_write(target, self.text.encode("utf-8"), default_mode=0o644)
        self.original = self.text
        return True

    @property
    def config_dir(self) -> str:
        """Absolute directory of the config file (what rule paths are relative to)."""
        return os.path.dirname(os.path.abspath(self.path))

    # ------------------------------------------------------------------ reading (the model)
    @property
    def keys_node(self) -> Node | None:
        """The ``keys:`` value node, if any."""
        return self.model.keys_node

    @property
    def rules_node(self) -> Node | None:
        """The ``creation_rules:`` value node, if any."""
        return self.model.rules_node

    @property
    def layout(self) -> str:
        """How ``keys:`` is shaped: ``mapping``, ``anchored_list``, ``flat`` or ``none``."""
        return self.model.layout

    def anchors(self) -> dict[str, Anchor]:
        """Every recipient anchor (anchored scalar) in document order, by name."""
        return self.model.anchors()

    def groups(self) -> dict[str, list[str]]:
        """Group name -> anchor names in it (``hosts``, ``users``; empty for a flat ``keys:`` list)."""
        return self.model.groups()

    @property
    def rules(self) -> list[CreationRule]:
        """The creation rules, in order (computed once per text version)."""
        return self.model.rules

    def find_rule(self, path_regex: str | None) -> CreationRule | None:
        """The first rule whose path_regex is exactly ``path_regex`` (None/'' = the catch-all)."""
        return self.model.find_rule(path_regex)

    def rule_for(self, path: str) -> CreationRule:
        """The rule sops 3.11 picks for ``path`` (absolute, or relative to the config dir)."""
        return self.model.rule_for(path)

    def prepare_matching(self) -> None:
        """Build the rule matcher now (once per text version), e.g. before forking workers that match paths.
        A config whose rules cannot be read is left for rule_for to report."""
        with contextlib.suppress(SopsConfigError):
            self.model.matcher()

    def snapshot(self) -> dict[str, Any]:
        """What the config means as sops reads it, as plain data (anchors, rules, other top-level keys)."""
        return self.model.snapshot()

    # ------------------------------------------------------------------ validate
    def validate(self, scan_files: bool = True, files: Iterable[RepoFile] | None = None) -> list[dict[str, Any]]:
        """Findings about the config: list of ``{kind, message, line?, anchor?, path?}`` (see ``lint.lint``).

        With ``files`` (the repository's files, as a fleet walk found them)
        those are checked against the rules; otherwise, with ``scan_files``,
        the config's directory is walked here.
        """
        if files is None and scan_files:
            files = (RepoFile(rel) for rel in self.iter_files())
        return lint(self.model, files, lambda rel: is_sops_file(os.path.join(self.config_dir, rel)))

    def iter_files(self) -> Iterator[str]:
        """Paths (relative to the config dir) of the files under it, as every fleet operation walks them."""
        config = os.path.basename(self.path)
        yield from (rel for rel in walk_files(self.config_dir) if rel != config)
