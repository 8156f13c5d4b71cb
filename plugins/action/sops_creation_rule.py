# Copyright: nixfleet.sops contributors
# MIT License
"""Action plugin of nixfleet.sops.sops_creation_rule: on the controller, the module runs without AnsiballZ
(see plugins/plugin_utils/controller_module.py); elsewhere, as any module."""

from __future__ import annotations

from ansible_collections.nixfleet.sops.plugins.plugin_utils.controller_module import ControllerModuleAction


class ActionModule(ControllerModuleAction):
    """Runs nixfleet.sops.sops_creation_rule."""
