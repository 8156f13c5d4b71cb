# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations

DOCUMENTATION = r"""
name: secret
short_description: Read a decrypted value from a sops file
version_added: "0.1.0"
description:
  - Decrypts a sops file on the controller (natively, no sops binary) and returns the value at a key path,
    or the whole document when no O(key) is given.
  - "Relative paths are looked up like the C(ansible.builtin.file) lookup does: in the role's or play's
    C(files/) directory, then relative to the role, the playbook directory, and (ad-hoc) the current
    directory. Absolute paths are used as they are."
  - Binary sops files (any extension other than C(.yaml), C(.yml), C(.json), C(.env), C(.ini)) return their
    decrypted text; they have no key paths.
  - Errors name the file and the key path, never a value. The MAC is checked, so a value changed outside
    sops is an error, not a silent read.
options:
  _terms:
    description: The sops file(s). One value is returned per file.
    type: list
    elements: path
    required: true
  key:
    description:
      - "The key path: a string split on C(/) as sops-nix splits its C(key) option (V(keys/age)), a list
        (V([\"deploy-keys\", \"nix-config\"]); integers index lists), or sops' syntax (V([\"keys\"][\"age\"]))."
      - Omit it to get the whole decrypted document (comments removed).
    type: raw
  identity_files:
    description:
      - Files with identities that can open the file (age key files, passphrase-protected age identity files,
        or OpenSSH ed25519/RSA private keys).
      - When neither this nor O(age_keys) is given, identities are searched as sops does
        (C(SOPS_AGE_KEY), C(SOPS_AGE_KEY_FILE), C(SOPS_AGE_KEY_CMD), C(SOPS_AGE_SSH_PRIVATE_KEY_FILE),
        C(~/.config/sops/age/keys.txt)), in the controller's environment.
    type: list
    elements: path
    default: []
  age_keys:
    description: Literal C(AGE-SECRET-KEY-1…) (or C(AGE-SECRET-KEY-PQ-1…), C(AGE-PLUGIN-…)) identities.
    type: list
    elements: str
    default: []
  identity_passphrase:
    description: Passphrase of passphrase-protected identity files (C(age -p)) and encrypted OpenSSH keys.
    type: str
  identity_passphrase_command:
    description: Command that prints that passphrase (run once per lookup, without a shell).
    type: str
  age_plugin_secret:
    description: Answer to an age plugin's request for a secret (a YubiKey PIN).
    type: str
  age_plugin_secret_command:
    description: Command that prints that secret (run once per lookup, without a shell).
    type: str
notes:
  - "The value is returned to the template; mark tasks that print or pass it on with C(no_log: true)."
seealso:
  - module: nixfleet.sops.sops_secret
author: nixfleet maintainers (@nixfleet)
"""

EXAMPLES = r"""
- name: Push the host's user age key
  ansible.builtin.copy:
    content: "{{ lookup('nixfleet.sops.secret', 'sops/griefling.yaml', key='keys/age') }}"
    dest: /home/ta/.config/sops/age/keys.txt
    mode: "0600"
  no_log: true

- name: A key path with a list, and an explicit identity file
  ansible.builtin.set_fact:
    deploy_key: >-
      {{ lookup('nixfleet.sops.secret', nixfleet_secrets_repo ~ '/sops/griefling.yaml',
                key=['deploy-keys', 'nix-config'], identity_files=['~/.config/sops/age/keys.txt']) }}
  no_log: true

- name: The whole decrypted document
  ansible.builtin.set_fact:
    griefling_secrets: "{{ lookup('nixfleet.sops.secret', 'sops/griefling.yaml') }}"
  no_log: true
"""

RETURN = r"""
_raw:
  description:
    - Per file, the decrypted value at O(key) (string, number, boolean, mapping or list), or the whole document.
  type: list
  elements: raw
"""

import os
from typing import Any

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase
from ansible.utils.display import Display
from ansible_collections.nixfleet.sops.plugins.module_utils.module_support import one_line


class LookupModule(LookupBase):
    """``lookup('nixfleet.sops.secret', FILE, key=…)``: decrypted values from sops files."""

    def run(self, terms: list[Any], variables: dict[str, Any] | None = None, **kwargs: Any) -> list[Any]:
        """One decrypted value (or document) per file in ``terms``."""
        from ansible_collections.nixfleet.sops.plugins.module_utils import fleet, secrets
        from ansible_collections.nixfleet.sops.plugins.module_utils.errors import NixfleetError
        from ansible_collections.nixfleet.sops.plugins.module_utils.module_support import MISSING_LIBS

        if MISSING_LIBS:
            from ansible.module_utils.basic import missing_required_lib

            raise AnsibleLookupError(missing_required_lib(next(iter(MISSING_LIBS))))
        self.set_options(var_options=variables, direct=kwargs)
        key = self.get_option("key")
        id_files = [os.path.expanduser(str(p)) for p in self.get_option("identity_files") or []]
        age_keys = [str(k) for k in self.get_option("age_keys") or []]
        out = []
        for term in terms:
            term = str(term)
            path = self._resolve(term, variables or {})
            try:
                keypath = secrets.parse_key_path(key, path) if key not in (None, "", []) else None
                ids = fleet.collect_identities(
                    id_files, age_keys,
                    passphrase=self.get_option("identity_passphrase"),
                    passphrase_command=self.get_option("identity_passphrase_command"),
                    plugin_secret=self.get_option("age_plugin_secret"),
                    plugin_secret_command=self.get_option("age_plugin_secret_command"),
                    warn=Display().warning,
                )
                out.append(secrets.read_secret(path, keypath, ids))
            except NixfleetError as exc:
                raise AnsibleLookupError(one_line(exc)) from None
            except OSError as exc:
                where = f"{exc.filename}: " if getattr(exc, "filename", None) else f"{path}: "
                raise AnsibleLookupError(f"{where}{exc.strerror or exc}") from None
        return out

    def _resolve(self, term: str, variables: dict[str, Any]) -> str:
        """``term`` as the file lookup finds it; a clear error when it is nowhere."""
        term = os.path.expanduser(term)
        if os.path.isabs(term):
            found = term
        else:
            found = self.find_file_in_search_path(variables, "files", term, ignore_missing=True)
        if not found or not os.path.exists(found):
            base = self.get_basedir(variables)
            raise AnsibleLookupError(
                f"{term}: sops file not found (searched the files/ directories of the role and play, "
                f"and relative to {base})")
        return found
