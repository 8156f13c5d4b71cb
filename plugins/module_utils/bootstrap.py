# Copyright: nixfleet.sops contributors
# MIT License
"""A new host's keys, registered in the secrets repository: what `just install` did by hand.

``ensure_host_keys`` runs on the controller. For one host it:

1. reuses the keys the secrets repository already holds for it (a reinstall
   keeps its host key, so nothing needs rekeying), generating only what is
   missing: the SSH host key (ed25519), the per-host user age key and one
   deploy key per repository;
2. registers ``&<host>`` (the SSH key converted to age) and ``&<user>_<host>``
   in ``.sops.yaml``, a creation rule for ``sops/<host>.yaml`` (admins, host,
   host user), a rule for ``sops/host-keys/<host>.yaml`` that names the admins
   only (no key that lives on a host can read the host's private SSH key), and
   the host's membership of the shared rule;
3. stores the user identity under ``keys/age`` and the deploy keys under
   ``deploy-keys/<repo>`` in ``sops/<host>.yaml``, and the SSH private key in
   ``sops/host-keys/<host>.yaml``;
4. rekeys every file whose rule changed, records the keys in the key
   inventory, and returns the paths it touched (for one commit).

``stage_extra_files`` writes the tree nixos-anywhere's ``--extra-files``
copies onto the new root, decrypted from the repository, into a private
directory.

Return values hold public material only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from . import age, fleet, keyinventory, secrets, sshkeys
from . import sops as engine
from .errors import NixfleetError
from .fsutil import atomic_write, ensure_private_dir, make_dirs
from .sops_config import SopsConfig, check_anchor_name

HOST_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
HOST_KEY_NAME = "ssh_host_ed25519_key"


class BootstrapError(NixfleetError, ValueError):
    """Bad input or a repository state bootstrap must not paper over; names host, file and fix."""


def validate_host(name: Any) -> str:
    """A host name usable as a file name, YAML anchor and DNS label, or BootstrapError."""
    if not isinstance(name, str) or not HOST_RE.match(name):
        raise BootstrapError(
            f"host name {name!r} is not allowed: use lower-case letters, digits and '-' (a DNS label, "
            "e.g. griefling or web-01); it becomes a file name and a YAML anchor"
        )
    return name


def validate_user(name: Any, host: str) -> str:
    """A Unix user name that is safe in ``&<user>_<host>`` and paths, or BootstrapError."""
    if not isinstance(name, str) or not USER_RE.match(name):
        raise BootstrapError(f"{host}: primary user {name!r} is not a valid user name (e.g. rain)")
    return name


def validate_repo_name(name: Any, host: str) -> str:
    """A deploy-key repository name (used in file names and ssh aliases)."""
    if not isinstance(name, str) or not REPO_RE.match(name) or name in (".", ".."):
        raise BootstrapError(f"{host}: deploy key repository {name!r} is not a valid name (e.g. nix-config)")
    return name


@dataclass
class HostSpec:
    """What a host gets. Paths are relative to the secrets repository."""

    host: str
    user: str
    admins: list[str]
    deploy_repos: list[str] = field(default_factory=list)
    host_group: str = "hosts"
    user_group: str = "users"
    shared_rule: str | None = r"sops/shared\.yaml$"
    regenerate: list[str] = field(default_factory=list)  # host, user, deploy

    def __post_init__(self) -> None:
        validate_host(self.host)
        validate_user(self.user, self.host)
        self.deploy_repos = [validate_repo_name(r, self.host) for r in self.deploy_repos]
        if not self.admins:
            raise BootstrapError(f"{self.host}: at least one admin anchor is needed (the operator's recipient)")
        for a in self.admins:
            check_anchor_name(a, "admin anchor")
        unknown = set(self.regenerate) - {"host", "user", "deploy"}
        if unknown:
            raise BootstrapError(f"{self.host}: regenerate accepts host, user, deploy; not {sorted(unknown)}")

    @property
    def user_anchor(self) -> str:
        return f"{self.user}_{self.host}"

    @property
    def host_file(self) -> str:
        return f"sops/{self.host}.yaml"

    @property
    def host_key_file(self) -> str:
        return f"sops/host-keys/{self.host}.yaml"

    @property
    def host_rule(self) -> str:
        return rf"sops/{re.escape(self.host)}\.yaml$"

    @property
    def host_key_rule(self) -> str:
        return rf"sops/host-keys/{re.escape(self.host)}\.yaml$"


@dataclass
class BootstrapResult:
    """What ensure_host_keys did or would do. Public data only."""

    changed: bool = False
    touched: list[str] = field(default_factory=list)
    generated: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    rekeyed: list[str] = field(default_factory=list)
    public: dict[str, Any] = field(default_factory=dict)
    config_before: str = ""
    config_after: str = ""

    def touch(self, rel: str) -> None:
        if rel not in self.touched:
            self.touched.append(rel)
        self.changed = True


def _read_existing(path: str, keypath: list[str], identities: Any) -> str | None:
    """The value at keypath, None when the file or key path is absent; an unopenable file is an error."""
    if not os.path.exists(path):
        return None
    try:
        value = secrets.read_secret(path, keypath, identities)
    except engine.SopsKeyPathError:
        return None
    except engine.SopsNoIdentityError as exc:
        raise BootstrapError(
            f"{path} exists but no admin identity opens it, so its keys cannot be reused and will not be "
            f"replaced: {exc}. Give the admin identity (SOPS_AGE_KEY_FILE or identity_files)."
        ) from None
    return value if isinstance(value, str) else None


def _parse_stored(parse: Any, rel: str, keypath: str) -> Any:
    """Parse a key stored in the repository; a bad one is an error naming the file and key path."""
    try:
        return parse()
    except age.AgeKeyError as exc:
        raise BootstrapError(
            f"{rel} {keypath}: the stored key is not usable ({exc}); fix it with sops, or regenerate it "
            "(regenerate: [host|user|deploy]) knowing that the old key is then replaced"
        ) from None


def _check_rule_target(config: SopsConfig, repo: str, rel: str, wanted_regex: str, host: str) -> None:
    """The file must be governed by its own rule, not shadowed by an earlier broader one."""
    rule = config.rule_for(os.path.join(repo, rel))
    if rule.path_regex != wanted_regex:
        raise BootstrapError(
            f"{host}: in {config.path}, {rule.describe()} (line {rule.line}) comes before the rule "
            f"{wanted_regex!r} and would decide the recipients of {rel}; move the broader rule below it"
        )


def ensure_host_keys(
    repo: str, spec: HostSpec, identities: list[str] | None = None, check_mode: bool = False
) -> BootstrapResult:
    """Register a host's keys in the secrets repository (see the module docstring). Idempotent."""
    repo = os.path.abspath(repo)
    res = BootstrapResult()
    cfg_path = fleet.config_path(repo)
    config = SopsConfig.load(cfg_path)
    res.config_before = config.text
    anchors = config.anchors()
    missing = [a for a in spec.admins if a not in anchors]
    if missing:
        raise BootstrapError(
            f"{spec.host}: admin anchor(s) {', '.join('&' + a for a in missing)} not in {cfg_path}; "
            f"known anchors: {', '.join(sorted(anchors)) or 'none'}"
        )
    kr = engine.keyring(identities)
    host_key_path = os.path.join(repo, spec.host_key_file)
    host_file_path = os.path.join(repo, spec.host_file)

    # 1. keys: reuse what the repository holds, generate the rest
    host_pem = None if "host" in spec.regenerate else _read_existing(host_key_path, [HOST_KEY_NAME], kr)
    if host_pem:
        host_kp = _parse_stored(lambda: sshkeys.from_private(host_pem), spec.host_key_file, HOST_KEY_NAME)
        res.reused.append("host key")
    else:
        host_kp = sshkeys.generate(f"root@{spec.host}")
        res.generated.append("host key")
    user_identity = None if "user" in spec.regenerate else _read_existing(host_file_path, ["keys", "age"], kr)
    if user_identity:
        user_identity = _parse_stored(lambda: age.validate_identity(user_identity), spec.host_file, "keys/age")
        res.reused.append("user key")
    else:
        user_identity = age.generate_identity()
        res.generated.append("user key")
    deploy: dict[str, sshkeys.Ed25519Keypair] = {}
    for name in spec.deploy_repos:
        pem = None if "deploy" in spec.regenerate else _read_existing(host_file_path, ["deploy-keys", name], kr)
        if pem:
            deploy[name] = _parse_stored(lambda pem=pem: sshkeys.from_private(pem), spec.host_file,
                                         f"deploy-keys/{name}")
            res.reused.append(f"deploy key {name}")
        else:
            deploy[name] = sshkeys.generate(f"{spec.host}-{name}-deploy")
            res.generated.append(f"deploy key {name}")
    host_recipient = host_kp.age_recipient
    user_recipient = age.recipient_from_identity(user_identity)

    # 2. .sops.yaml
    edits = [
        config.ensure_recipient(spec.host, host_recipient, group=spec.host_group),
        config.ensure_recipient(spec.user_anchor, user_recipient, group=spec.user_group),
        config.ensure_rule(spec.host_key_rule, anchors=list(spec.admins), exclusive=True),
        config.ensure_rule(spec.host_rule, anchors=[*spec.admins, spec.host, spec.user_anchor]),
    ]
    if spec.shared_rule and config.find_rule(spec.shared_rule) is not None:
        edits.append(config.ensure_rule_member(spec.shared_rule, spec.host))
    _check_rule_target(config, repo, spec.host_key_file, spec.host_key_rule, spec.host)
    _check_rule_target(config, repo, spec.host_file, spec.host_rule, spec.host)
    host_key_rule = config.rule_for(host_key_path)
    leaked = {spec.host, spec.user_anchor} & set(host_key_rule.anchors)
    if leaked or host_recipient in host_key_rule.recipients or user_recipient in host_key_rule.recipients:
        raise BootstrapError(f"{spec.host}: the rule for {spec.host_key_file} must name admins only")
    res.config_after = config.text
    # Before anything is written: every file the new rules change must open with the admin
    # identities, else the rekey at the end would refuse and leave a half-registered host.
    plan = fleet.rekey(repo, kr.identities if kr else None, check_mode=True, config=config)
    if any(edits):
        res.touch(".sops.yaml")
        if not check_mode:
            config.save()

    # 3. secrets (a dry run still decides changed exactly as a real run); one write per file
    def put(path: str, rel: str, values: dict[tuple[str, ...], str]) -> None:
        changes = secrets.ensure_secrets(path, values, identities=kr, config=cfg_path, dry_run=check_mode)
        if any(c.changed for c in changes):
            res.touch(rel)

    if check_mode and config.text != res.config_before:
        # The new rules exist only in memory, so the files cannot be dry-run against them; a
        # changed .sops.yaml means a new or re-keyed host, whose two files are then written.
        res.touch(spec.host_key_file)
        res.touch(spec.host_file)
    else:
        make_dirs(os.path.dirname(host_key_path), 0o755)
        put(host_key_path, spec.host_key_file, {(HOST_KEY_NAME,): host_kp.private_pem.decode(),
                                                 (HOST_KEY_NAME + ".pub",): host_kp.public_line})
        put(host_file_path, spec.host_file, {("keys", "age"): user_identity, **{
            ("deploy-keys", name): kp.private_pem.decode() for name, kp in deploy.items()}})

    # 4. rekey what the new rules changed, record the keys
    rk = plan if check_mode else fleet.rekey(repo, kr.identities if kr else None)
    for rel in rk.changed_files:
        res.rekeyed.append(rel)
        res.touch(rel)
    inv = [
        keyinventory.record(repo, spec.host, "host", host_recipient, host=spec.host, check_mode=check_mode),
        keyinventory.record(repo, spec.user_anchor, "user", user_recipient, host=spec.host, check_mode=check_mode),
    ]
    for name, kp in deploy.items():
        inv.append(keyinventory.record(repo, f"{spec.host}-{name}", "deploy", kp.public_line, host=spec.host,
                                       check_mode=check_mode))
    if any(inv):
        res.touch(keyinventory.INVENTORY_PATH)

    res.public = {
        "host": spec.host,
        "host_public_key": host_kp.public_line,
        "host_recipient": host_recipient,
        "user_anchor": spec.user_anchor,
        "user_recipient": user_recipient,
        "deploy_public_keys": {name: kp.public_line for name, kp in deploy.items()},
    }
    return res


# --------------------------------------------------------------------------- extra files
@dataclass
class StagedFile:
    """A file of the staged tree: path relative to the new root, mode, owner (public facts only)."""

    path: str
    mode: str
    owner: str = "root"


def _host_key_from_repo(repo: str, host: str, identities: Any) -> sshkeys.Ed25519Keypair:
    path = os.path.join(repo, "sops", "host-keys", f"{host}.yaml")
    pem = _read_existing(path, [HOST_KEY_NAME], identities)
    if not pem:
        raise BootstrapError(f"{host}: no host key in {path}; run the host_keys step (bootstrap.yml) first")
    return sshkeys.from_private(pem)


def stage_extra_files(
    repo: str,
    host: str,
    user: str,
    dest: str,
    persist_prefix: str = "",
    user_home: str | None = None,
    deploy_repos: list[str] | None = None,
    identities: list[str] | None = None,
) -> tuple[list[StagedFile], list[StagedFile]]:
    """Write the ``--extra-files`` tree for ``host`` under ``dest`` (created 0700); return (files, dirs).

    ``etc/ssh/ssh_host_ed25519_key`` (0600) and ``.pub`` (0644), under the
    persist prefix too when impermanence is on; ``var/lib/sops-nix/key.txt``
    (0600, derived from the host key, as sops-nix's ssh-to-age would); the
    user's ``.config/sops/age/keys.txt`` (0600, under the persist prefix when
    impermanence is on); ``root/.ssh/<repo>-deploy`` (0600). Directories get
    the modes NixOS expects (0755, home 0700, .ssh 0700).
    """
    validate_host(host)
    validate_user(user, host)
    persist = persist_prefix.strip("/")
    if persist and (".." in persist.split("/") or not re.match(r"^[A-Za-z0-9._/-]+$", persist)):
        raise BootstrapError(f"{host}: persist prefix {persist_prefix!r} is not a plain absolute path like /persist")
    home = (user_home or f"/home/{user}").strip("/")
    if ".." in home.split("/"):
        raise BootstrapError(f"{host}: user home {user_home!r} is not a plain path")
    kr = engine.keyring(identities)
    host_kp = _host_key_from_repo(repo, host, kr)
    host_file = os.path.join(repo, "sops", f"{host}.yaml")
    user_identity = _read_existing(host_file, ["keys", "age"], kr)
    if not user_identity:
        raise BootstrapError(f"{host}: no user age key under keys/age in {host_file}; run host_keys first")
    sopsnix_identity = age.ssh_private_key_to_identity(host_kp.private_pem)

    ensure_private_dir(dest)
    os.chmod(dest, 0o700)
    files: list[StagedFile] = []
    dir_modes: dict[str, int] = {}

    def put(rel: str, data: str, mode: int, owner: str = "root") -> None:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            wanted = 0o700 if d in (home, f"{persist}/{home}".strip("/"), "root", "root/.ssh") or \
                d.endswith(("/.config", "/.config/sops", "/.config/sops/age")) else 0o755
            dir_modes.setdefault(d, wanted)
            full = os.path.join(dest, d)
            if not os.path.isdir(full):
                os.mkdir(full, dir_modes[d])
            os.chmod(full, dir_modes[d])
        atomic_write(os.path.join(dest, rel), data, mode=mode, private=mode & 0o077 == 0)
        files.append(StagedFile(rel, f"{mode:04o}", owner))

    roots = [""] + ([persist] if persist else [])
    for prefix in roots:
        base = f"{prefix}/" if prefix else ""
        put(f"{base}etc/ssh/ssh_host_ed25519_key", host_kp.private_pem.decode(), 0o600)
        put(f"{base}etc/ssh/ssh_host_ed25519_key.pub", host_kp.public_line + "\n", 0o644)
        put(f"{base}var/lib/sops-nix/key.txt", age.format_identity_file(sopsnix_identity, stamp=False), 0o600)
    user_base = f"{persist}/{home}" if persist else home
    put(f"{user_base}/.config/sops/age/keys.txt", age.format_identity_file(user_identity, stamp=False), 0o600,
        owner=user)
    for name in deploy_repos or []:
        validate_repo_name(name, host)
        pem = _read_existing(host_file, ["deploy-keys", name], kr)
        if not pem:
            raise BootstrapError(f"{host}: no deploy key deploy-keys/{name} in {host_file}; run host_keys first")
        put(f"root/.ssh/{name}-deploy", pem, 0o600)
    owner = {d: user if d == user_base or d.startswith(user_base + "/") else "root" for d in dir_modes}
    dirs = [StagedFile(d, f"{m:04o}", owner[d]) for d, m in sorted(dir_modes.items())]
    return files, dirs


def detect_persist_prefix(nix_config: str, host: str) -> str:
    """Guess the impermanence prefix from the host's disko/impermanence config, as the old recipe did.

    Looks in ``hosts/<host>`` (and ``hosts/nixos/<host>``) of the nix-config
    repository for an impermanence or encrypted-bcachefs layout and a
    ``/persist``-style mount point. Returns "" when none is found.
    """
    validate_host(host)
    candidates = [os.path.join(nix_config, "hosts", host), os.path.join(nix_config, "hosts", "nixos", host)]
    text = ""
    for c in candidates:
        if os.path.isdir(c):
            for dirpath, _, filenames in os.walk(c):
                for fn in filenames:
                    if fn.endswith(".nix"):
                        with open(os.path.join(dirpath, fn), encoding="utf-8", errors="replace") as fh:
                            text += fh.read() + "\n"
    if not re.search(r"impermanence|btrfs-luks-impermanence|bcachefs[^\n]*encrypt", text):
        return ""
    m = re.search(r"""["'](/persist[A-Za-z0-9_/-]*)["']""", text)
    return m.group(1) if m else "/persist"


__all__ = [
    "BootstrapError",
    "BootstrapResult",
    "HostSpec",
    "StagedFile",
    "detect_persist_prefix",
    "ensure_host_keys",
    "stage_extra_files",
    "validate_host",
]
