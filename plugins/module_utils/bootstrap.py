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

import contextlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

from . import age, breakglass, failpoints, fleet, keyinventory, sshkeys
from . import sops as engine
from .changeset import Changeset, ChangesetError, open_existing, value_at
from .fsutil import CONFIG_LIMIT, atomic_write, ensure_private_dir, read_regular, walk_files
from .keypairs import would_generate
from .sops_config import SopsConfig, check_anchor_name

HOST_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
HOST_KEY_NAME = "ssh_host_ed25519_key"
# Where a host's keys live in sops/<host>.yaml, and the suffix of a new key a rotation in progress keeps
# beside the current one (rotation.py): ssh_host_ed25519_key.next, keys/age-next, deploy-keys-next/<repo>.
USER_KEY = ("keys", "age")
USER_KEY_NEXT = ("keys", "age-next")
DEPLOY_KEYS = "deploy-keys"
DEPLOY_KEYS_NEXT = "deploy-keys-next"
NEXT = ".next"


class BootstrapError(ChangesetError):
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


def host_file(host: str) -> str:
    """The host's own sops file (user key, deploy keys, its secrets), relative to the repository."""
    return f"sops/{host}.yaml"


def host_key_file(host: str) -> str:
    """The file holding the host's private SSH key, for admins only."""
    return f"sops/host-keys/{host}.yaml"


def host_rule(host: str) -> str:
    """``path_regex`` of the rule bootstrap creates for :func:`host_file`."""
    return rf"sops/{re.escape(host)}\.yaml$"


def host_key_rule(host: str) -> str:
    """``path_regex`` of the rule bootstrap creates for :func:`host_key_file` (admins only)."""
    return rf"sops/host-keys/{re.escape(host)}\.yaml$"


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
    adopt_stored_key: bool = False  # take a stored host key whose recipient differs from the registered one
    # Anchors every rule the host gets also names when they exist (the break-glass key).
    always_members: list[str] = field(default_factory=lambda: ["break_glass"])
    extra_members: list[str] = field(default_factory=list, repr=False)

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
        return host_file(self.host)

    @property
    def host_key_file(self) -> str:
        return host_key_file(self.host)

    @property
    def host_rule(self) -> str:
        return host_rule(self.host)

    @property
    def host_key_rule(self) -> str:
        return host_key_rule(self.host)


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
    return value_at(open_existing(path, identities, error=BootstrapError), keypath)


_value = value_at


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


@dataclass
class HostKeys:
    """A host's keys, reused from the repository or new (private parts: never returned, never logged)."""

    host: sshkeys.Ed25519Keypair
    user: str = field(repr=False)
    deploy: dict[str, sshkeys.Ed25519Keypair] = field(default_factory=dict)
    generated: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)

    @property
    def host_recipient(self) -> str:
        return self.host.age_recipient

    @property
    def user_recipient(self) -> str:
        return age.recipient_from_identity(self.user)


def _host_key(spec: HostSpec, key_sf: engine.SopsFile | None, config: SopsConfig, keys_out: list[list[str]]
              ) -> sshkeys.Ed25519Keypair:
    """The stored host key, or a new one; a stored key that is not the registered one is refused."""
    pem = None if "host" in spec.regenerate else _value(key_sf, [HOST_KEY_NAME])
    if not pem:
        keys_out[0].append("host key")
        return sshkeys.generate(f"root@{spec.host}")
    kp = _parse_stored(lambda: sshkeys.from_private(pem), spec.host_key_file, HOST_KEY_NAME)
    registered = config.anchors().get(spec.host)
    if registered is not None and registered.recipient != kp.age_recipient and not spec.adopt_stored_key:
        raise BootstrapError(
            f"{spec.host}: {spec.host_key_file} holds a host key whose recipient ({kp.age_recipient}) is not the "
            f"one .sops.yaml registers for &{spec.host} ({registered.recipient}); refusing to change the host's "
            "recipient silently. If that stored key is the right one, set adopt_stored_key; to make a new key, "
            "set regenerate: [host]")
    keys_out[1].append("host key")
    return kp


def _host_keys(spec: HostSpec, key_sf: engine.SopsFile | None, host_sf: engine.SopsFile | None,
               config: SopsConfig) -> HostKeys:
    """Reuse what the repository holds for the host, generate the rest."""
    generated: list[str] = []
    reused: list[str] = []
    host_kp = _host_key(spec, key_sf, config, [generated, reused])
    user = None if "user" in spec.regenerate else _value(host_sf, list(USER_KEY))
    if user:
        user = _parse_stored(lambda: age.validate_identity(user), spec.host_file, "keys/age")
        reused.append("user key")
    else:
        user = age.generate_identity()
        generated.append("user key")
    deploy: dict[str, sshkeys.Ed25519Keypair] = {}
    for name in spec.deploy_repos:
        pem = None if "deploy" in spec.regenerate else _value(host_sf, [DEPLOY_KEYS, name])
        if pem:
            deploy[name] = _parse_stored(lambda pem=pem: sshkeys.from_private(pem), spec.host_file,
                                         f"deploy-keys/{name}")
            reused.append(f"deploy key {name}")
        else:
            deploy[name] = sshkeys.generate(f"{spec.host}-{name}-deploy")
            generated.append(f"deploy key {name}")
    return HostKeys(host_kp, user, deploy, generated, reused)


def _register(config: SopsConfig, repo: str, spec: HostSpec, keys: HostKeys) -> bool:
    """The host's anchors and rules in .sops.yaml (in memory); True when the text changed."""
    admins = list(spec.admins) + [a for a in spec.extra_members if a not in spec.admins]
    before = config.text
    config.ensure_recipient(spec.host, keys.host_recipient, group=spec.host_group)
    config.ensure_recipient(spec.user_anchor, keys.user_recipient, group=spec.user_group)
    config.ensure_rule(spec.host_key_rule, anchors=admins, exclusive=True)
    config.ensure_rule(spec.host_rule, anchors=[*admins, spec.host, spec.user_anchor])
    if spec.shared_rule and config.find_rule(spec.shared_rule) is not None:
        config.ensure_rule_member(spec.shared_rule, spec.host)
    _check_rule_target(config, repo, spec.host_key_file, spec.host_key_rule, spec.host)
    _check_rule_target(config, repo, spec.host_file, spec.host_rule, spec.host)
    host_key_rule = config.rule_for(os.path.join(repo, spec.host_key_file))
    leaked = {spec.host, spec.user_anchor} & set(host_key_rule.anchors)
    if leaked or keys.host_recipient in host_key_rule.recipients or keys.user_recipient in host_key_rule.recipients:
        raise BootstrapError(f"{spec.host}: the rule for {spec.host_key_file} must name admins only")
    return config.text != before


def ensure_host_keys(
    repo: str, spec: HostSpec, identities: list[str] | None = None, check_mode: bool = False
) -> BootstrapResult:
    """Register a host's keys in the secrets repository (see the module docstring). Idempotent.

    One plan of the repository (one walk, one metadata read per file), one
    parse of .sops.yaml edited in memory, each of the host's files opened and
    written once, every write staged and renamed all or none after every file
    that needs a change proved it can be opened (a :class:`Changeset`). Check
    mode runs the same decisions and reports, for keys it would generate, that
    they would be generated (never a key that the real run would not make).
    """
    repo = os.path.abspath(repo)
    config = SopsConfig.load(fleet.config_path(repo))
    res = BootstrapResult(config_before=config.text)
    anchors = config.anchors()
    missing = [a for a in spec.admins if a not in anchors]
    if missing:
        raise BootstrapError(
            f"{spec.host}: admin anchor(s) {', '.join('&' + a for a in missing)} not in {config.path}; "
            f"known anchors: {', '.join(sorted(anchors)) or 'none'}")
    glass = breakglass.anchor_of(config, keyinventory.Inventory.load(repo))
    spec.extra_members = [a for a in dict.fromkeys([*spec.always_members, glass]) if a and a in anchors]
    cs = Changeset(fleet.Plan.scan(repo, config), identities, check_mode, "bootstrap", BootstrapError)
    keys = _host_keys(spec, cs.open(spec.host_key_file), cs.open(spec.host_file), config)
    res.generated, res.reused = keys.generated, keys.reused
    _register(config, repo, spec, keys)
    res.config_after = config.text
    cs.set_values(spec.host_key_file, {(HOST_KEY_NAME,): keys.host.private_pem.decode(),
                                       (HOST_KEY_NAME + ".pub",): keys.host.public_line})
    cs.set_values(spec.host_file, {USER_KEY: keys.user, **{
        (DEPLOY_KEYS, name): kp.private_pem.decode() for name, kp in keys.deploy.items()}})
    inventory = _record_keys(repo, spec, keys)
    if inventory.changed:
        cs.write_text(keyinventory.INVENTORY_PATH, inventory.text)
    cs.stage()  # every other file must open before anything is written
    res.touched, res.rekeyed, res.changed = cs.touched, cs.rekeyed, bool(cs.touched)
    if check_mode:
        res.config_after = _mask_new(res.config_after, keys)
    else:
        cs.publish()
    res.public = _public(spec, keys, check_mode)
    return res


def _record_keys(repo: str, spec: HostSpec, keys: HostKeys) -> keyinventory.Inventory:
    inv = keyinventory.Inventory.load(repo)
    inv.record(spec.host, "host", keys.host_recipient, host=spec.host)
    inv.record(spec.user_anchor, "user", keys.user_recipient, host=spec.host)
    for name, kp in keys.deploy.items():
        inv.record(f"{spec.host}-{name}", "deploy", kp.public_line, host=spec.host)
    return inv


def _mask_new(text: str, keys: HostKeys) -> str:
    """Check mode's .sops.yaml: a recipient the real run would generate is shown as such, never invented."""
    if "host key" in keys.generated:
        text = text.replace(keys.host_recipient, "<new host key, generated by the real run>")
    if "user key" in keys.generated:
        text = text.replace(keys.user_recipient, "<new user key, generated by the real run>")
    return text


def _public(spec: HostSpec, keys: HostKeys, check_mode: bool) -> dict[str, Any]:
    """What the module returns: public keys only; in check mode, no key the real run would not make."""
    new = set(keys.generated) if check_mode else set()

    def shown(what: str, value: str) -> str:
        return would_generate(what) if what in new else value

    return {
        "host": spec.host,
        "host_public_key": shown("host key", keys.host.public_line),
        "host_recipient": shown("host key", keys.host_recipient),
        "user_anchor": spec.user_anchor,
        "user_recipient": shown("user key", keys.user_recipient),
        "deploy_public_keys": {name: shown(f"deploy key {name}", kp.public_line) for name, kp in keys.deploy.items()},
    }


# --------------------------------------------------------------------------- extra files
@dataclass
class StagedFile:
    """A file of the staged tree: path relative to the new root, mode, owner (public facts only)."""

    path: str
    mode: str
    owner: str = "root"


class _Tree:
    """The staged tree under ``dest``: files written privately, directories with the modes NixOS expects."""

    def __init__(self, dest: str, home: str, persist: str) -> None:
        self.dest, self.home, self.persist = dest, home, persist
        self.files: list[StagedFile] = []
        self.dir_modes: dict[str, int] = {}

    def put(self, rel: str, data: str, mode: int, owner: str = "root") -> None:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            wanted = 0o700 if d in (self.home, f"{self.persist}/{self.home}".strip("/"), "root", "root/.ssh") or \
                d.endswith(("/.config", "/.config/sops", "/.config/sops/age")) else 0o755
            self.dir_modes.setdefault(d, wanted)
            full = os.path.join(self.dest, d)
            if not os.path.isdir(full):
                os.mkdir(full, self.dir_modes[d])
            os.chmod(full, self.dir_modes[d])
        atomic_write(os.path.join(self.dest, rel), data, mode=mode, private=mode & 0o077 == 0)
        self.files.append(StagedFile(rel, f"{mode:04o}", owner))

    def dirs(self, user_base: str, user: str) -> list[StagedFile]:
        owner = {d: user if d == user_base or d.startswith(user_base + "/") else "root" for d in self.dir_modes}
        return [StagedFile(d, f"{m:04o}", owner[d]) for d, m in sorted(self.dir_modes.items())]


def _identity_lines(*identities: str | None) -> str:
    """A key file holding each identity given (the current one first), as sops-nix and sops read it."""
    return "".join(age.format_identity_file(i, stamp=False) for i in identities if i)


def stage_extra_files(
    repo: str,
    host: str,
    user: str,
    dest: str,
    persist_prefix: str = "",
    user_home: str | None = None,
    deploy_repos: list[str] | None = None,
    identities: list[str] | None = None,
    next_keys: bool = False,
) -> tuple[list[StagedFile], list[StagedFile]]:
    """Write the ``--extra-files`` tree for ``host`` under ``dest`` (created 0700); return (files, dirs).

    ``etc/ssh/ssh_host_ed25519_key`` (0600) and ``.pub`` (0644), under the
    persist prefix too when impermanence is on; ``var/lib/sops-nix/key.txt``
    (0600, derived from the host key, as sops-nix's ssh-to-age would); the
    user's ``.config/sops/age/keys.txt`` (0600, under the persist prefix when
    impermanence is on); ``root/.ssh/<repo>-deploy`` (0600). Directories get
    the modes NixOS expects (0755, home 0700, .ssh 0700).

    ``next_keys`` adds the new keys a key rotation in progress keeps beside the
    current ones (rotation.py): ``ssh_host_ed25519_key.next`` (+ ``.pub``) and
    its identity as a second line of ``key.txt``, the new user identity as a
    second line of ``keys.txt``, ``root/.ssh/<repo>-deploy.next``. Each of the
    host's two files is opened once.
    """
    validate_host(host)
    validate_user(user, host)
    persist = persist_prefix.strip("/")
    if persist and (".." in persist.split("/") or not re.match(r"^[A-Za-z0-9._/-]+$", persist)):
        raise BootstrapError(f"{host}: persist prefix {persist_prefix!r} is not a plain absolute path like /persist")
    home = (user_home or f"/home/{user}").strip("/")
    if ".." in home.split("/"):
        raise BootstrapError(f"{host}: user home {user_home!r} is not a plain path")
    if os.path.lexists(dest):
        ensure_private_dir(dest)  # refuses a link, a file, or a directory another user owns: before any key is read
    kr = engine.keyring(identities)
    key_path, host_path = os.path.join(repo, host_key_file(host)), os.path.join(repo, host_file(host))
    key_sf = open_existing(key_path, kr, error=BootstrapError)
    host_sf = open_existing(host_path, kr, error=BootstrapError)
    pem = value_at(key_sf, [HOST_KEY_NAME])
    if not pem:
        raise BootstrapError(f"{host}: no host key in {key_path}; run the host_keys step (bootstrap.yml) first")
    host_kp = sshkeys.from_private(pem)
    user_identity = value_at(host_sf, list(USER_KEY))
    if not user_identity:
        raise BootstrapError(f"{host}: no user age key under keys/age in {host_path}; run host_keys first")
    next_host = value_at(key_sf, [HOST_KEY_NAME + NEXT]) if next_keys else None
    next_kp = sshkeys.from_private(next_host) if next_host else None
    key_txt = _identity_lines(age.ssh_private_key_to_identity(host_kp.private_pem),
                              age.ssh_private_key_to_identity(next_kp.private_pem) if next_kp else None)

    ensure_private_dir(dest)
    os.chmod(dest, 0o700)
    tree = _Tree(dest, home, persist)
    for prefix in [""] + ([persist] if persist else []):
        base = f"{prefix}/" if prefix else ""
        for suffix, kp in (("", host_kp), (NEXT, next_kp)):
            if kp is not None:
                tree.put(f"{base}etc/ssh/{HOST_KEY_NAME}{suffix}", kp.private_pem.decode(), 0o600)
                tree.put(f"{base}etc/ssh/{HOST_KEY_NAME}{suffix}.pub", kp.public_line + "\n", 0o644)
        tree.put(f"{base}var/lib/sops-nix/key.txt", key_txt, 0o600)
    user_base = f"{persist}/{home}" if persist else home
    next_user = value_at(host_sf, list(USER_KEY_NEXT)) if next_keys else None
    tree.put(f"{user_base}/.config/sops/age/keys.txt", _identity_lines(user_identity, next_user), 0o600, owner=user)
    for name in deploy_repos or []:
        validate_repo_name(name, host)
        pem = value_at(host_sf, [DEPLOY_KEYS, name])
        if not pem:
            raise BootstrapError(f"{host}: no deploy key deploy-keys/{name} in {host_path}; run host_keys first")
        tree.put(f"root/.ssh/{name}-deploy", pem, 0o600)
        next_pem = value_at(host_sf, [DEPLOY_KEYS_NEXT, name]) if next_keys else None
        if next_pem:
            tree.put(f"root/.ssh/{name}-deploy{NEXT}", next_pem, 0o600)
    failpoints.hit("extra_files.staged", dest)
    return tree.files, tree.dirs(user_base, user)


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
            for rel in walk_files(c):
                if rel.endswith(".nix"):
                    with contextlib.suppress(OSError):  # a FIFO or a huge file is no host configuration
                        text += read_regular(os.path.join(c, rel), CONFIG_LIMIT, "nix file").decode(
                            "utf-8", "replace") + "\n"
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
