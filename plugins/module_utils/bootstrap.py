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
import stat
from dataclasses import dataclass, field
from typing import Any

from . import age, breakglass, failpoints, fleet, keyinventory, secrets, sshkeys
from . import sops as engine
from .errors import NixfleetError
from .fsutil import (
    CONFIG_LIMIT,
    atomic_write,
    ensure_private_dir,
    make_dirs,
    read_regular,
    remove_made_dirs,
    walk_files,
)
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
    sf = _open_existing(path, identities)
    return None if sf is None else _value(sf, keypath)


def _check_trusted(path: str, repo: str) -> None:
    """A key file bootstrap would adopt must be one the repository's owner (or root) wrote.

    Otherwise a local user who can write into the repository could plant a
    host key encrypted to the admin's public recipient and have it adopted.
    """
    st = os.lstat(path)
    trusted = {0, os.geteuid(), os.stat(repo).st_uid}
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode) or st.st_uid not in trusted or st.st_mode & 0o022:
        raise BootstrapError(
            f"{path} is not a regular file owned by you, root or the repository's owner and writable only by them "
            f"(uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}): refusing to trust the keys in it; check who "
            "wrote it (git log, git status) and remove or fix it")


def _open_existing(path: str, identities: Any, repo: str | None = None) -> engine.SopsFile | None:
    """``path`` opened once and decrypted with the admin identities, or None when it does not exist."""
    if not os.path.lexists(path):
        return None
    if repo is not None:
        _check_trusted(path, repo)
    sf = engine.SopsFile.open(path).unlock(identities)
    try:
        sf.documents()
    except engine.SopsNoIdentityError as exc:
        raise BootstrapError(
            f"{path} exists but no admin identity opens it, so its keys cannot be reused and will not be "
            f"replaced: {exc}. Give the admin identity (SOPS_AGE_KEY_FILE or identity_files)."
        ) from None
    return sf


def _value(sf: engine.SopsFile | None, keypath: list[str]) -> str | None:
    if sf is None:
        return None
    try:
        value = sf.get(keypath)
    except engine.SopsKeyPathError:
        return None
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
    user = None if "user" in spec.regenerate else _value(host_sf, ["keys", "age"])
    if user:
        user = _parse_stored(lambda: age.validate_identity(user), spec.host_file, "keys/age")
        reused.append("user key")
    else:
        user = age.generate_identity()
        generated.append("user key")
    deploy: dict[str, sshkeys.Ed25519Keypair] = {}
    for name in spec.deploy_repos:
        pem = None if "deploy" in spec.regenerate else _value(host_sf, ["deploy-keys", name])
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


def _fill(sf: engine.SopsFile | None, path: str, config: SopsConfig, values: dict[tuple[str, ...], str]
          ) -> engine.SopsFile:
    """The host's file with ``values``, at the recipients its rule names: created, or changed in place."""
    if sf is None:
        sf = secrets.new_file_for_rule(path, config, need_dir=False)
    for keypath, value in values.items():
        sf.set(list(keypath), value)
    rule = config.rule_for(path)
    sf.updatekeys(rule.key_groups, shamir_threshold=rule.shamir_threshold, foreign=rule.foreign)
    return sf


def ensure_host_keys(
    repo: str, spec: HostSpec, identities: list[str] | None = None, check_mode: bool = False
) -> BootstrapResult:
    """Register a host's keys in the secrets repository (see the module docstring). Idempotent.

    One plan of the repository (one walk, one metadata read per file), one
    parse of .sops.yaml edited in memory, each of the host's files opened and
    written once, every write staged and renamed all or none after every file
    that needs a change proved it can be opened. Check mode runs the same
    decisions and reports, for keys it would generate, that they would be
    generated (never a key that the real run would not make).
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
    plan = fleet.Plan.scan(repo, config)
    kr = engine.keyring(identities)
    key_path, host_path = os.path.join(repo, spec.host_key_file), os.path.join(repo, spec.host_file)
    key_sf, host_sf = _open_existing(key_path, kr, repo), _open_existing(host_path, kr, repo)
    keys = _host_keys(spec, key_sf, host_sf, config)
    res.generated, res.reused = keys.generated, keys.reused
    config_changed = _register(config, repo, spec, keys)
    res.config_after = config.text
    plan = plan.with_config(config)
    files = {
        spec.host_key_file: _fill(key_sf, key_path, config, {(HOST_KEY_NAME,): keys.host.private_pem.decode(),
                                                           (HOST_KEY_NAME + ".pub",): keys.host.public_line}),
        spec.host_file: _fill(host_sf, host_path, config, {("keys", "age"): keys.user, **{
            ("deploy-keys", name): kp.private_pem.decode() for name, kp in keys.deploy.items()}}),
    }
    jobs = [j for j in fleet.rekey_jobs(plan) if j.rel not in files]
    inventory = _record_keys(repo, spec, keys)
    ids = tuple(kr.identities) if kr else None
    staged = fleet.run_jobs(jobs, ids, check_mode, root=repo)  # every file must open before anything is written
    fleet.refuse_failures("bootstrap", staged, False)
    sink = engine.NullSink() if check_mode else engine.StagedSink(root=repo)
    made: list[str] = []
    try:
        if not check_mode:
            made = make_dirs(os.path.dirname(key_path), 0o755) + make_dirs(os.path.dirname(inventory.path), 0o755)
        if config_changed:
            sink.write(config.path, config.text.encode("utf-8"))
            res.touch(".sops.yaml")
        for rel, sf in files.items():
            if sf.write(sink):
                res.touch(rel)
        if inventory.changed:
            sink.write(inventory.path, inventory.text.encode("utf-8"))
            res.touch(keyinventory.INVENTORY_PATH)
    except BaseException:
        _discard(sink, staged)
        remove_made_dirs(made)
        raise
    res.rekeyed = staged.changed
    for rel in staged.changed:
        res.touch(rel)
    if check_mode:
        res.config_after = _mask_new(res.config_after, keys)
    else:
        try:
            fleet.publish(repo, "bootstrap", sink.staged + staged.pairs)
        except BaseException:
            remove_made_dirs(made)  # publish put nothing in place (else it says what is new)
            raise
    res.public = _public(spec, keys, check_mode)
    return res


def _record_keys(repo: str, spec: HostSpec, keys: HostKeys) -> keyinventory.Inventory:
    inv = keyinventory.Inventory.load(repo)
    inv.record(spec.host, "host", keys.host_recipient, host=spec.host)
    inv.record(spec.user_anchor, "user", keys.user_recipient, host=spec.host)
    for name, kp in keys.deploy.items():
        inv.record(f"{spec.host}-{name}", "deploy", kp.public_line, host=spec.host)
    return inv


def _discard(sink: Any, staged: fleet.Staged) -> None:
    staged.discard()
    if isinstance(sink, engine.StagedSink):
        sink.discard()


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
        return f"(a new {what} would be generated)" if what in new else value

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
    if os.path.lexists(dest):
        ensure_private_dir(dest)  # refuses a link, a file, or a directory another user owns: before any key is read
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
    failpoints.hit("extra_files.staged", dest)
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
