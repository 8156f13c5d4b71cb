# Copyright: nixfleet.sops contributors
# MIT License
from __future__ import annotations


class ModuleDocFragment:
    """The identity options every module that opens sops files takes, and the libraries opening them needs
    (a module lists only what it needs besides these; ansible-doc shows the union)."""

    DOCUMENTATION = r"""
requirements:
  - cryptography >= 42
  - pyrage >= 1.2
  - ruamel.yaml >= 0.18
  - google-re2 >= 1.1
  - bcrypt >= 4 (passphrase-protected OpenSSH keys)
options:
  identity_files:
    description:
      - Files with identities that can open the sops files - age key files (X25519 C(AGE-SECRET-KEY-1…),
        post-quantum C(AGE-SECRET-KEY-PQ-1…) and plugin C(AGE-PLUGIN-…) lines), passphrase-protected age
        identity files (C(age -p)), and OpenSSH ed25519 or RSA private keys (encrypted ones too). An ed25519 key
        opens both C(ssh-ed25519) stanzas (as sops uses it) and the C(age1…) recipient ssh-to-age derives from
        it (as sops-nix uses it).
      - A line of a key file that is not an identity is skipped with a warning naming the file and line.
      - When neither this nor O(age_keys) is given, identities are searched as sops does
        (C(SOPS_AGE_KEY), C(SOPS_AGE_KEY_FILE), C(SOPS_AGE_KEY_CMD), C(SOPS_AGE_SSH_PRIVATE_KEY_FILE),
        C(~/.ssh/id_ed25519), C(~/.ssh/id_rsa), C($XDG_CONFIG_HOME/sops/age/keys.txt) or
        C(~/.config/sops/age/keys.txt)).
      - C(age_keyfile) (community.sops's name for one such file) is an alias.
    type: list
    elements: path
    default: []
    aliases: [age_keyfile]
  age_keys:
    description:
      - Literal C(AGE-SECRET-KEY-1…), C(AGE-SECRET-KEY-PQ-1…) or C(AGE-PLUGIN-…) identities. Never logged.
      - C(age_key) (community.sops's name) is an alias; a key file's text given there (several lines, comments
        included) is read as a key file is.
    type: list
    elements: str
    default: []
    aliases: [age_key]
  identity_passphrase:
    description:
      - Passphrase of the passphrase-protected identities (age identity files encrypted with C(age -p), and
        encrypted OpenSSH keys). Never logged. There is no interactive prompt.
      - Mutually exclusive in practice with O(identity_passphrase_command), which is used when this is not set.
    type: str
  identity_passphrase_command:
    description:
      - Command whose standard output (less one trailing newline) is that passphrase, for example
        C(pass show age/identity). Run at most once per task, without a shell.
    type: str
  age_plugin_secret:
    description:
      - Answer to an age plugin's request for a secret, such as the PIN of a YubiKey (C(age-plugin-yubikey)).
        Never logged. Plugins are found on C(PATH) as C(age-plugin-<name>), as age and sops find them, and
        run once per task for all files, so the secret is asked once.
    type: str
  age_plugin_secret_command:
    description:
      - Command whose standard output (less one trailing newline) is that secret; run at most once per task.
    type: str
"""
