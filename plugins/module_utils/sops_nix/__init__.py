# Copyright: nixfleet.sops contributors
# MIT License
"""sops-nix on a host, checked against the host's own sops-nix manifest (the parts of the verifier).

- ``rootfs``: the host's tree under a root prefix, symlinks resolved inside it;
- ``accounts``: the host's users and groups;
- ``manifests``: where the activation (or the systemd unit) names its manifest, and loading it;
- ``report``: faults, key sources, the result the module returns;
- ``verifier``: one host being checked (the context every check receives);
- ``key_sources``, ``user_keys``, ``generation``: the target-side checks;
- ``sops_files``: the controller-side check of the secrets repository's files.

Everything but ``sops_files.file_recipients`` runs on the target with Python's
standard library only; imports are absolute so that AnsiballZ bundles them.
``sops_nix_check.verify`` runs the checks.
"""
