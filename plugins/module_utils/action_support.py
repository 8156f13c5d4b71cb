# Copyright: nixfleet.sops contributors
# MIT License
"""Controller-side help for the collection's action plugins.

Ansible's debug mode (``ANSIBLE_DEBUG=1``) prints every module's arguments
when a task finishes, ``no_log`` ones included: its documentation warns that
debug output can hold secrets. An action plugin that hands private key material
to a module passes its arguments as :class:`MaskedArgs`, whose printed form
hides those values; the module itself still receives them unchanged (the
payload is built from the dict's items, not from its text).
"""

from __future__ import annotations

from typing import Any

MASK = "********"


class MaskedArgs(dict):
    """Module arguments whose printed form (repr/str) hides the values of ``secret_keys``."""

    def __init__(self, data: dict[str, Any], secret_keys: tuple[str, ...]) -> None:
        super().__init__(data)
        self.secret_keys = secret_keys

    def __repr__(self) -> str:
        return repr({k: (MASK if k in self.secret_keys and v is not None else v) for k, v in self.items()})

    __str__ = __repr__
