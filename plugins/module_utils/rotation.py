# Copyright: nixfleet.sops contributors
# MIT License
"""Key rotation of one host, in two phases, with a resumable journal in the secrets repository.

The manual procedure this replaces: add the new key keeping the old, rekey,
deploy, verify the new key works, remove the old key, rekey again, deploy again.

- Phase 1 (:func:`begin`): a new key per kind (``host``: the SSH host key and
  what sops-nix derives from it; ``user``: the primary user's age key;
  ``deploy``: the deploy keys) is stored encrypted in the repository beside the
  old one (``ssh_host_ed25519_key.next`` in ``sops/host-keys/<host>.yaml``,
  ``keys/age-next`` and ``deploy-keys-next/<repo>`` in ``sops/<host>.yaml``) and,
  for host and user keys, registered as ``&<anchor>_next`` in every key group
  of every rule that names ``*<anchor>``; every affected file is rekeyed. A
  re-run after an interruption finds the stored new key and continues with it.
  The playbook then puts the new keys on the host beside the old ones
  (``bootstrap.stage_extra_files(next_keys=True)``) and proves, on the host and
  here (:func:`verify`), that the new keys alone open what the host needs.
- Phase 2 (:func:`switch`): ``&<anchor>`` takes the new recipient, the
  ``_next`` anchor and its aliases go, every file the old key could read is
  rekeyed and gets a new data key, the new keys replace the old in the
  repository, the key inventory records the rotation. The playbook puts the
  final keys on the host (the old ones leave it), then :func:`finish` removes
  the journal.
- :func:`abort` undoes phase 1 (the old keys stay; the new ones leave the repository).

The journal (``.nixfleet/rotations/<host>.yaml``) holds public data only:
kinds, state, old and new recipients and public keys, dates, steps done. It
is written with the other changes of its phase, all at once, under the
repository lock the module holds; a run that finds it continues from its
state. The host-side steps are derived from the repository's state and are
idempotent, so a re-run simply does them again.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from . import age, failpoints, fleet, keyinventory, sshkeys, vcs
from . import sops as engine
from .bootstrap import (
    DEPLOY_KEYS,
    DEPLOY_KEYS_NEXT,
    HOST_KEY_NAME,
    NEXT,
    USER_KEY,
    USER_KEY_NEXT,
    host_file,
    host_key_file,
    validate_host,
    validate_repo_name,
    validate_user,
)
from .changeset import Changeset
from .errors import NixfleetError
from .keypairs import would_generate
from .module_support import note_missing_lib
from .sops_config import SopsConfig

# Guarded: without the library, modules fail with missing_required_lib (module_support.require_libs).
try:
    import yaml
except ImportError:
    HAS_PYYAML = False
    note_missing_lib("PyYAML")
else:
    HAS_PYYAML = True

KINDS = ("host", "user", "deploy")
JOURNAL_DIR = ".nixfleet/rotations"
PHASE1, PHASE2 = "phase1", "phase2"
NEXT_ANCHOR = "_next"
MAX_JOURNAL_BYTES = 1 << 20
HEADER = ("# Key rotation in progress (nixfleet.sops playbooks/rotate_keys.yml). Public data only.\n"
          "# Re-run the rotation to continue it, or roll it back with -e nixfleet_rotate_abort=true.\n")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader) if HAS_PYYAML else None


class RotationError(NixfleetError, ValueError):
    """A rotation cannot start, continue or be undone; the message names the host, the file and what to do."""


# --------------------------------------------------------------------------- the journal
def journal_rel(host: str) -> str:
    """The journal of ``host``'s rotation, relative to the repository."""
    return f"{JOURNAL_DIR}/{host}.yaml"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class Journal:
    """A rotation in progress (public data only)."""

    host: str
    kinds: list[str]
    state: str  # phase1: new keys beside the old; phase2: the old keys are gone from the repository
    started: str
    user: str | None = None
    deploy_repos: list[str] = field(default_factory=list)
    old: dict[str, str] = field(default_factory=dict)  # host, host_public_key, user, deploy/<repo>
    new: dict[str, str] = field(default_factory=dict)
    steps: list[dict[str, str]] = field(default_factory=list)

    @property
    def rel(self) -> str:
        """Where it lives in the repository."""
        return journal_rel(self.host)

    def step(self, name: str) -> None:
        """Record a step done, with the time."""
        self.steps.append({"step": name, "at": _now()})

    @property
    def text(self) -> str:
        """The journal as written."""
        return HEADER + yaml.safe_dump(asdict(self), sort_keys=False, default_flow_style=False, width=4096)

    def as_dict(self) -> dict[str, Any]:
        """The journal as the module returns it."""
        return asdict(self)


def _check_journal(data: Any, path: str, host: str) -> Journal:
    if not isinstance(data, dict):
        raise RotationError(f"{path}: not a rotation journal (expected a mapping); restore it from version control")
    try:
        j = Journal(**data)
    except TypeError:
        raise RotationError(f"{path}: unknown or missing fields; restore it from version control") from None
    strs = all(isinstance(v, str) for d in (j.old, j.new) if isinstance(d, dict) for v in d.values())
    if (j.host != host or j.state not in (PHASE1, PHASE2) or not isinstance(j.kinds, list)
            or not set(j.kinds) <= set(KINDS) or not j.kinds or not isinstance(j.old, dict)
            or not isinstance(j.new, dict) or not strs or not isinstance(j.deploy_repos, list)
            or not isinstance(j.steps, list)):
        raise RotationError(f"{path}: not a rotation journal of {host} (host, state, kinds or keys are wrong); "
                            "restore it from version control")
    if j.user is not None:
        validate_user(j.user, host)
    for name in j.deploy_repos:
        validate_repo_name(name, host)
    return j


def load_journal(repo: str, host: str) -> Journal | None:
    """The journal of ``host``'s rotation in progress, or None."""
    validate_host(host)
    path = os.path.join(repo, journal_rel(host))
    try:
        if os.path.getsize(path) > MAX_JOURNAL_BYTES:
            raise RotationError(f"{path}: too large for a rotation journal; restore it from version control")
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise RotationError(f"{path}: not UTF-8 text; restore it from version control") from None
    try:
        # Written without anchors: an alias is someone else's doing (an alias bomb).
        if any(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text, Loader=_Loader)):
            raise RotationError(f"{path}: YAML aliases are not allowed here; restore it from version control")
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise RotationError(f"{path}: not valid YAML ({exc.__class__.__name__}); restore it from version "
                            "control") from None
    return _check_journal(data, path, host)


# --------------------------------------------------------------------------- what to rotate
@dataclass
class RotationSpec:
    """Which keys of which host to rotate."""

    host: str
    kinds: list[str]
    user: str | None = None
    deploy_repos: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        validate_host(self.host)
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise RotationError(f"{self.host}: cannot rotate {', '.join(unknown)}: use host, user, deploy, all or due")
        if "user" in self.kinds and not self.user:
            raise RotationError(f"{self.host}: rotating the user key needs the primary user (nixfleet_primary_user)")
        if self.user:
            validate_user(self.user, self.host)
        self.deploy_repos = [validate_repo_name(r, self.host) for r in self.deploy_repos]
        if "deploy" in self.kinds and not self.deploy_repos:
            raise RotationError(f"{self.host}: no deploy keys to rotate (nixfleet_deploy_repos is empty)")


def anchor_of(kind: str, host: str, user: str | None) -> str:
    """The ``.sops.yaml`` anchor of a host's key of ``kind`` (host or user)."""
    return host if kind == "host" else f"{user}_{host}"


def due(entries: list[keyinventory.KeyEntry], host: str, max_age_days: dict[str, int],
        today: datetime.date | None = None) -> tuple[list[str], list[str]]:
    """The kinds of ``host``'s keys past the key-age policy, and the deploy keys (repositories) among them."""
    kinds: list[str] = []
    repos: list[str] = []
    for item in keyinventory.overdue(entries, max_age_days, today):
        if item["host"] != host or item["kind"] not in KINDS:
            continue
        if item["kind"] not in kinds:
            kinds.append(item["kind"])
        prefix = f"{host}-"
        if item["kind"] == "deploy" and item["anchor"].startswith(prefix):
            repos.append(item["anchor"][len(prefix):])
    return [k for k in KINDS if k in kinds], repos


def resolve_kinds(repo: str, host: str, requested: list[str], deploy_repos: list[str],
                  max_age_days: dict[str, int] | None = None) -> tuple[list[str], list[str]]:
    """``host|user|deploy|all|due`` to the kinds to rotate and the deploy repositories concerned."""
    unknown = sorted(set(requested) - {*KINDS, "all", "due"})
    if unknown:
        raise RotationError(f"{host}: kinds {', '.join(map(repr, unknown))} cannot be rotated; "
                            "use host, user, deploy, all or due")
    if not requested:  # continue the rotation in progress (begin() reads it from the journal), if any
        return [], []
    if "due" in requested:
        if set(requested) != {"due"}:
            raise RotationError(f"{host}: 'due' rotates what the key-age policy says; do not combine it")
        if not max_age_days:
            raise RotationError(f"{host}: 'due' needs the key-age policy (nixfleet_key_max_age_days)")
        try:
            policy = keyinventory.check_policy(max_age_days, "nixfleet_key_max_age_days")
        except keyinventory.InventoryError as exc:
            raise RotationError(f"{host}: {exc}") from None
        kinds, repos = due(keyinventory.load(repo), host, policy)
        return kinds, [r for r in deploy_repos if r in repos] or repos
    kinds = list(KINDS) if "all" in requested else list(requested)
    if "all" in requested and not deploy_repos:
        kinds.remove("deploy")
    return [k for k in KINDS if k in kinds], list(deploy_repos) if "deploy" in kinds else []


# --------------------------------------------------------------------------- results
@dataclass
class RotationResult:
    """What a step did (or would do). Public data only."""

    changed: bool = False
    state: str = ""  # phase1, phase2, done, aborted, or "" (no rotation)
    kinds: list[str] = field(default_factory=list)
    touched: list[str] = field(default_factory=list)
    rekeyed: list[str] = field(default_factory=list)
    rotated: list[str] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    old: dict[str, str] = field(default_factory=dict)
    new: dict[str, str] = field(default_factory=dict)
    generated: list[str] = field(default_factory=list)
    resumed: bool = False
    checked: list[dict[str, Any]] = field(default_factory=list)
    journal: dict[str, Any] | None = None
    config_before: str = ""
    config_after: str = ""
    msg: str = ""

    def as_dict(self) -> dict[str, Any]:
        """What the module returns (no diff texts)."""
        out = asdict(self)
        out.pop("config_before")
        out.pop("config_after")
        return out


def _from_journal(j: Journal, msg: str, **extra: Any) -> RotationResult:
    fields: dict[str, Any] = {"state": j.state, "kinds": list(j.kinds), "old": dict(j.old), "new": dict(j.new),
                              "journal": j.as_dict(), "msg": msg}
    return RotationResult(**{**fields, **extra})


def status(repo: str, host: str) -> RotationResult:
    """Where the rotation of ``host`` stands (nothing changes)."""
    j = load_journal(os.path.abspath(repo), host)
    if j is None:
        return RotationResult(msg=f"{host}: no key rotation in progress")
    return _from_journal(j, f"{host}: rotation of {', '.join(j.kinds)} keys in {j.state} since {j.started}")


# --------------------------------------------------------------------------- the keys
@dataclass
class _Keys:
    """A host's keys of one generation (old or new). Private parts: never returned, never logged."""

    host: sshkeys.Ed25519Keypair | None = None
    user: str | None = field(default=None, repr=False)
    deploy: dict[str, sshkeys.Ed25519Keypair] = field(default_factory=dict)
    generated: list[str] = field(default_factory=list)

    def public(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.host is not None:
            out["host"] = self.host.age_recipient
            out["host_public_key"] = self.host.public_line
        if self.user:
            out["user"] = age.recipient_from_identity(self.user)
        out.update({f"deploy/{name}": kp.public_line for name, kp in self.deploy.items()})
        return out


def _parse(parse: Any, rel: str, keypath: str) -> Any:
    try:
        return parse()
    except age.AgeKeyError as exc:
        raise RotationError(f"{rel} {keypath}: the stored key is not usable ({exc}); fix it with sops, or abort the "
                            "rotation (-e nixfleet_rotate_abort=true)") from None


def _keys_at(cs: Changeset, host: str, kinds: list[str], deploy_repos: list[str], new: bool) -> _Keys:
    """The stored keys: current ones, or (``new``) the ones a rotation keeps beside them (None where absent)."""
    keys = _Keys()
    kf, hf = host_key_file(host), host_file(host)
    if "host" in kinds:
        name = HOST_KEY_NAME + (NEXT if new else "")
        pem = cs.value(kf, [name])
        keys.host = _parse(lambda: sshkeys.from_private(pem), kf, name) if pem else None
    if "user" in kinds:
        path = USER_KEY_NEXT if new else USER_KEY
        ident = cs.value(hf, list(path))
        keys.user = _parse(lambda: age.validate_identity(ident), hf, "/".join(path)) if ident else None
    for repo in deploy_repos if "deploy" in kinds else []:
        where = DEPLOY_KEYS_NEXT if new else DEPLOY_KEYS
        pem = cs.value(hf, [where, repo])
        if pem:
            keys.deploy[repo] = _parse(lambda pem=pem: sshkeys.from_private(pem), hf, f"{where}/{repo}")
    return keys


def _current(cs: Changeset, spec: RotationSpec) -> _Keys:
    """The keys being replaced; each must be in the repository and be the one ``.sops.yaml`` registers."""
    keys = _keys_at(cs, spec.host, spec.kinds, spec.deploy_repos, new=False)
    anchors = cs.config.anchors()
    for kind, have in (("host", keys.host), ("user", keys.user)):
        if kind not in spec.kinds:
            continue
        name = anchor_of(kind, spec.host, spec.user)
        where = host_key_file(spec.host) if kind == "host" else host_file(spec.host)
        if have is None or name not in anchors:
            raise RotationError(f"{spec.host}: no {kind} key to rotate (&{name} in .sops.yaml and its key in {where}); "
                                "bootstrap the host first (playbooks/bootstrap.yml)")
        recipient = have.age_recipient if kind == "host" else age.recipient_from_identity(have)
        if recipient != anchors[name].recipient:
            raise RotationError(f"{spec.host}: the {kind} key stored in {where} ({recipient}) is not the one "
                                f".sops.yaml registers for &{name} ({anchors[name].recipient}); fix that first "
                                "(playbooks/bootstrap.yml with adopt_stored_key, or regenerate)")
    missing = [r for r in spec.deploy_repos if r not in keys.deploy and "deploy" in spec.kinds]
    if missing:
        raise RotationError(f"{spec.host}: no deploy key {', '.join(missing)} in {host_file(spec.host)} to rotate; "
                            "bootstrap.yml creates it")
    return keys


def _new(cs: Changeset, spec: RotationSpec) -> _Keys:
    """The new keys: those an interrupted earlier run stored, or new ones."""
    keys = _keys_at(cs, spec.host, spec.kinds, spec.deploy_repos, new=True)
    if "host" in spec.kinds and keys.host is None:
        keys.host = sshkeys.generate(f"root@{spec.host}")
        keys.generated.append("host key")
    if "user" in spec.kinds and not keys.user:
        keys.user = age.generate_identity()
        keys.generated.append("user key")
    for repo in spec.deploy_repos if "deploy" in spec.kinds else []:
        if repo not in keys.deploy:
            keys.deploy[repo] = sshkeys.generate(f"{spec.host}-{repo}-deploy")
            keys.generated.append(f"deploy key {repo}")
    return keys


# --------------------------------------------------------------------------- .sops.yaml
def _add_next_anchor(config: SopsConfig, name: str, recipient: str) -> None:
    """``&<name>_next`` beside ``&<name>``: in its group, and in every key group naming ``*<name>``."""
    anchors = config.anchors()
    old = anchors[name]
    config.ensure_recipient(name + NEXT_ANCHOR, recipient, group=old.group)
    token = "*" + name
    places: list[tuple[str | None, int]] = []
    for rule in config.rules:
        for gi, members in enumerate(rule.members):
            if token in members:
                places.append((rule.path_regex, gi))
            elif gi < len(rule.key_groups) and old.recipient in rule.key_groups[gi]:
                raise RotationError(
                    f"{config.path}, line {rule.line}: {rule.describe()} lists the recipient of &{name} literally, "
                    f"not as *{name}; write it as the alias *{name}, then run the rotation again")
    for path_regex, gi in places:
        config.ensure_rule_member(path_regex, name + NEXT_ANCHOR, "present", key_group=gi)


def _mask(text: str, keys: _Keys) -> str:
    """Check mode never shows a key the real run would generate instead."""
    if "host key" in keys.generated and keys.host is not None:
        text = text.replace(keys.host.age_recipient, "<new host key, generated by the real run>")
    if "user key" in keys.generated and keys.user:
        text = text.replace(age.recipient_from_identity(keys.user), "<new user key, generated by the real run>")
    return text


def _masked_public(keys: _Keys) -> dict[str, str]:
    out = keys.public()
    shown = {"host": "host key", "host_public_key": "host key", "user": "user key"}
    for k in list(out):
        what = shown.get(k) or (f"deploy key {k.split('/', 1)[1]}" if k.startswith("deploy/") else k)
        if what in keys.generated:
            out[k] = would_generate(what)
    return out


# --------------------------------------------------------------------------- phase 1
def begin(repo: str, spec: RotationSpec, identities: Any = None, check_mode: bool = False) -> RotationResult:
    """Phase 1: the new keys beside the old ones in the repository (see the module docstring).

    A rotation already in progress is not started again: its state is returned
    (``resumed``), whatever ``spec.kinds`` asks for.
    """
    repo = os.path.abspath(repo)
    j = load_journal(repo, spec.host)
    if j is not None:
        return _from_journal(j, f"{spec.host}: continuing the rotation of {', '.join(j.kinds)} keys ({j.state}, "
                                f"started {j.started})", resumed=True)
    if not spec.kinds:
        return RotationResult(msg=f"{spec.host}: no key to rotate (none asked for or due, and no rotation in progress)")
    cs = Changeset(fleet.Plan.scan(repo), identities, check_mode, "rotate_keys phase 1", RotationError)
    old = _current(cs, spec)
    new = _new(cs, spec)
    for kind in ("host", "user"):
        if kind in spec.kinds:
            _add_next_anchor(cs.config, anchor_of(kind, spec.host, spec.user), new.public()[kind])
    if new.host is not None:
        cs.set_values(host_key_file(spec.host), {(HOST_KEY_NAME + NEXT,): new.host.private_pem.decode(),
                                                 (HOST_KEY_NAME + NEXT + ".pub",): new.host.public_line})
    values: dict[tuple[str, ...], str | None] = {(DEPLOY_KEYS_NEXT, r): kp.private_pem.decode()
                                                 for r, kp in new.deploy.items()}
    if new.user:
        values[USER_KEY_NEXT] = new.user
    if values:
        cs.set_values(host_file(spec.host), values)
    j = Journal(host=spec.host, kinds=list(spec.kinds), state=PHASE1, started=_now(), user=spec.user,
                deploy_repos=list(spec.deploy_repos) if "deploy" in spec.kinds else [],
                old=old.public(), new=new.public())
    j.step("registered")
    cs.write_text(j.rel, j.text, marker=True)
    cs.stage()
    res = _from_journal(j, "", changed=True, touched=cs.touched, rekeyed=cs.rekeyed, changes=cs.changes,
                        generated=new.generated, config_before=cs.config_before, config_after=cs.config.text)
    if check_mode:
        res.new = _masked_public(new)
        res.config_after = _mask(res.config_after, new)
        res.changes = [{k: [_mask(x, new) for x in v] if isinstance(v, list) else v for k, v in c.items()}
                       for c in res.changes]
        res.journal = None
    else:
        cs.publish()
    res.msg = (f"{spec.host}: phase 1 of 2{' (check mode)' if check_mode else ''}: new {', '.join(spec.kinds)} keys "
               f"beside the old ones, {len(cs.changes)} file(s) rekeyed")
    return res


# --------------------------------------------------------------------------- verification
def _open_alone(sf: engine.SopsFile, identity: str, keypaths: list[list[str]]) -> str | None:
    """Why ``identity`` alone cannot open ``sf`` and read each key path (None when it can)."""
    try:
        sf.unlock(engine.keyring([identity])).documents()
        for keypath in keypaths:
            if keypath and sf.store.structured:
                sf.get(keypath)
    except engine.SopsError as exc:
        return exc.message
    return None


def _manifest_keypaths(secrets: list[dict[str, Any]], sops_files: list[str]) -> dict[str, list[list[str]]]:
    """Each ``sopsFile`` of the host's manifest with the key paths its secrets read (``/``-separated)."""
    wanted: dict[str, list[list[str]]] = {f: [] for f in sops_files if f}
    for s in secrets:
        if isinstance(s, dict) and s.get("sopsFile"):
            paths = wanted.setdefault(str(s["sopsFile"]), [])
            if s.get("key"):
                paths.append(str(s["key"]).split("/"))
    return wanted


def _repo_files(repo: str, manifest: dict[str, list[list[str]]]) -> dict[str, list[list[str]]]:
    """The manifest's ``sopsFile`` store paths mapped into the repository (sops_nix.sops_files)."""
    from .sops_nix.report import VerifyError
    from .sops_nix.sops_files import map_sops_file

    out: dict[str, list[list[str]]] = {}
    for store_path, keypaths in manifest.items():
        try:
            out.setdefault(map_sops_file(store_path, repo), []).extend(keypaths)
        except VerifyError as exc:
            raise RotationError(f"the host's manifest names {store_path}, which is not in the secrets repository "
                                f"({exc}); point nixfleet_secrets_repo at the repository the host is built "
                                "from") from None
    return out


def _check_deployed(identity: str, manifest: dict[str, list[list[str]]], deployed: dict[str, str],
                    faults: list[str], checked: list[dict[str, Any]]) -> None:
    """The copies the host's current system deploys (read from the host) open with the new key alone.

    Phase 2 takes the old key off the host: from then on sops-nix has only the
    new one, so the files of the system the host runs must already be readable
    by it (deployed after phase 1's rekey).
    """
    for store_path, text in sorted(deployed.items()):
        try:
            why = _open_alone(engine.SopsFile(store_path, base64.b64decode(text)), identity,
                              manifest.get(store_path, []))
        except (ValueError, engine.SopsError) as exc:
            why = getattr(exc, "message", None) or str(exc)
        if why:
            faults.append(f"{store_path} (deployed on the host): {why}; deploy the rekeyed secrets "
                          "(nixos-rebuild switch with the updated secrets input) and run again")
        checked.append({"path": store_path, "kind": "host", "deployed": True,
                        "key_paths": len(manifest.get(store_path, [])), "ok": not why})


def verify(repo: str, host: str, identities: Any = None, secrets: list[dict[str, Any]] | None = None,
           sops_files: list[str] | None = None, deployed: dict[str, str] | None = None) -> RotationResult:
    """The new keys alone open what the host needs: decrypted in memory, nothing written or returned.

    For the host and user keys: every file the old key can read (every file
    the host's key can read, after phase 2) opens with the new identity alone;
    for the host key also every ``sopsFile`` of the host's sops-nix manifest
    (``secrets``/``sops_files`` as the verifier reports them) with every key
    path a secret reads, both as the repository holds it and as the host's
    current system deploys it (``deployed``: store path -> base64 of the copy
    read from the host). RotationError lists each file that does not open.
    """
    repo = os.path.abspath(repo)
    j = load_journal(repo, host)
    if j is None:
        raise RotationError(f"{host}: no key rotation in progress to verify")
    plan = fleet.Plan.scan(repo)
    keys = _stored_new(Changeset(plan, identities, True, "rotate_keys verify", RotationError), j)
    manifest = _manifest_keypaths(secrets or [], sops_files or [])
    faults: list[str] = []
    checked: list[dict[str, Any]] = []
    for kind in ("host", "user"):
        if kind not in j.kinds:
            continue
        identity = (age.ssh_private_key_to_identity(keys.host.private_pem) if kind == "host" and keys.host
                    else keys.user)
        if identity is None:
            raise AssertionError("internal error: identity is not None does not hold")
        reader = j.old[kind] if j.state == PHASE1 else j.new[kind]
        wanted: dict[str, list[list[str]]] = {fp.path: [] for fp in plan.select(recipient=reader)}
        for path, keypaths in (_repo_files(repo, manifest) if kind == "host" else {}).items():
            wanted.setdefault(path, []).extend(keypaths)
        for path, keypaths in sorted(wanted.items()):
            why = _open_alone(engine.SopsFile.open(path), identity, keypaths)
            rel = os.path.relpath(path, repo)
            if why:
                faults.append(f"{rel}: {why}")
            checked.append({"path": rel, "kind": kind, "key_paths": len(keypaths), "ok": not why})
        if kind == "host":
            _check_deployed(identity, manifest, deployed or {}, faults, checked)
    if faults:
        raise RotationError(f"{host}: the new key alone cannot open {len(faults)} file(s) the host needs, so phase 2 "
                            f"would break it: {'; '.join(faults[:10])}. Rekey (playbooks/rekey.yml) or deploy as "
                            "said, and run the rotation again; or roll it back (-e nixfleet_rotate_abort=true)")
    what = ", ".join(k for k in j.kinds if k != "deploy")
    msg = (f"{host}: the new {what} key(s) alone open the {len(checked)} file(s) the host needs" if what else
           f"{host}: deploy keys open no sops file; the new ones are checked on the host")
    return _from_journal(j, msg, checked=checked)


def _stored_new(cs: Changeset, j: Journal) -> _Keys:
    """The new keys the journal names: stored beside the old (phase 1) or in their place (after switching).

    A run killed while renaming may have left some files switched and some
    not; each key is looked for in both places and must be the one the journal names.
    """
    beside = _keys_at(cs, j.host, j.kinds, j.deploy_repos, new=True)
    placed = _keys_at(cs, j.host, j.kinds, j.deploy_repos, new=False)
    out = _Keys()
    want = j.new

    def pick(what: str, a: Any, b: Any, public: Any) -> Any:
        for cand in (a, b):
            if cand is not None and public(cand) == want.get(what):
                return cand
        raise RotationError(f"{j.host}: the new {what} key the rotation journal names is not stored in the "
                            "repository (sops/host-keys/<host>.yaml, sops/<host>.yaml); abort the rotation "
                            "(-e nixfleet_rotate_abort=true) and start again")

    if "host" in j.kinds:
        out.host = pick("host", beside.host, placed.host, lambda k: k.age_recipient)
    if "user" in j.kinds:
        out.user = pick("user", beside.user, placed.user, age.recipient_from_identity)
    for repo in j.deploy_repos:
        out.deploy[repo] = pick(f"deploy/{repo}", beside.deploy.get(repo), placed.deploy.get(repo),
                                lambda k: k.public_line)
    return out


# --------------------------------------------------------------------------- phase 2
def switch(repo: str, host: str, identities: Any = None, check_mode: bool = False,
           forge_ready: bool = False) -> RotationResult:
    """Phase 2: the old keys leave the repository; every file they could read is rekeyed and rotated."""
    repo = os.path.abspath(repo)
    j = load_journal(repo, host)
    if j is None:
        raise RotationError(f"{host}: no key rotation in progress; start one with -e nixfleet_rotate=host|user|"
                            "deploy|all|due")
    if j.state == PHASE2:
        return _from_journal(j, f"{host}: phase 2 already done in the repository")
    if "deploy" in j.kinds and not forge_ready:
        keys = "; ".join(f"{k[7:]}: {v}" for k, v in j.new.items() if k.startswith("deploy/"))
        raise RotationError(f"{host}: phase 2 replaces the deploy keys; add the new public keys at the forge first "
                            f"({keys}), then run again with -e nixfleet_rotate_forge_ready=true")
    failpoints.hit("rotation.switch")
    cs = Changeset(fleet.Plan.scan(repo), identities, check_mode, "rotate_keys phase 2", RotationError)
    new = _stored_new(cs, j)
    for kind in ("host", "user"):
        if kind in j.kinds:
            name = anchor_of(kind, host, j.user)
            cs.config.remove_anchor(name + NEXT_ANCHOR)
            cs.config.ensure_recipient(name, j.new[kind])
    if new.host is not None:
        cs.set_values(host_key_file(host), {(HOST_KEY_NAME,): new.host.private_pem.decode(),
                                            (HOST_KEY_NAME + ".pub",): new.host.public_line,
                                            (HOST_KEY_NAME + NEXT,): None, (HOST_KEY_NAME + NEXT + ".pub",): None})
    values: dict[tuple[str, ...], str | None] = {}
    for r, kp in new.deploy.items():
        values[(DEPLOY_KEYS, r)] = kp.private_pem.decode()
        values[(DEPLOY_KEYS_NEXT, r)] = None
    if new.user:
        values[USER_KEY] = new.user
        values[USER_KEY_NEXT] = None
    if values:
        cs.set_values(host_file(host), values)
    inv = keyinventory.Inventory.load(repo)
    for kind in ("host", "user"):
        if kind in j.kinds:
            inv.record(anchor_of(kind, host, j.user), kind, j.new[kind], host=host, rotated=True)
    for r in j.deploy_repos:
        inv.record(f"{host}-{r}", "deploy", j.new[f"deploy/{r}"], host=host, rotated=True)
    if inv.changed:
        cs.write_text(keyinventory.INVENTORY_PATH, inv.text)
    j.state = PHASE2
    j.step("switched")
    cs.write_text(j.rel, j.text, marker=True)
    cs.stage(rotate_lost=True)
    if not check_mode:
        cs.publish()
    return _from_journal(j, f"{host}: phase 2 of 2{' (check mode)' if check_mode else ''}: old {', '.join(j.kinds)} "
                            f"keys removed, {len(cs.changes)} file(s) rekeyed, {len(cs.rotated)} with a new data key",
                         changed=True, touched=cs.touched, rekeyed=cs.rekeyed, rotated=cs.rotated,
                         changes=cs.changes, config_before=cs.config_before, config_after=cs.config.text)


def finish(repo: str, host: str, check_mode: bool = False) -> RotationResult:
    """After phase 2 and the host's cleanup: the journal goes (git history keeps it)."""
    repo = os.path.abspath(repo)
    j = load_journal(repo, host)
    if j is None:
        return RotationResult(state="done", msg=f"{host}: no key rotation in progress")
    if j.state != PHASE2:
        raise RotationError(f"{host}: the rotation is still in {j.state}; phase 2 must run before it can finish")
    if not check_mode:
        vcs.record_pending(repo, [j.rel])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(repo, j.rel))
    return _from_journal(j, f"{host}: rotation of {', '.join(j.kinds)} keys done", changed=True, touched=[j.rel])


def abort(repo: str, host: str, identities: Any = None, check_mode: bool = False) -> RotationResult:
    """Undo phase 1: the ``_next`` anchors and the stored new keys go, files are rekeyed, the journal goes."""
    repo = os.path.abspath(repo)
    j = load_journal(repo, host)
    if j is None:
        return RotationResult(state="", msg=f"{host}: no key rotation in progress; nothing to roll back")
    if j.state != PHASE1:
        raise RotationError(f"{host}: phase 2 already removed the old keys from the repository, so there is nothing "
                            "to roll back to; run the rotation again to finish it")
    cs = Changeset(fleet.Plan.scan(repo), identities, check_mode, "rotate_keys abort", RotationError)
    for kind in ("host", "user"):
        if kind in j.kinds:
            cs.config.remove_anchor(anchor_of(kind, host, j.user) + NEXT_ANCHOR)
    if "host" in j.kinds and cs.open(host_key_file(host)) is not None:
        cs.set_values(host_key_file(host), {(HOST_KEY_NAME + NEXT,): None, (HOST_KEY_NAME + NEXT + ".pub",): None})
    values: dict[tuple[str, ...], str | None] = {(DEPLOY_KEYS_NEXT, r): None for r in j.deploy_repos}
    if "user" in j.kinds:
        values[USER_KEY_NEXT] = None
    if values and cs.open(host_file(host)) is not None:
        cs.set_values(host_file(host), values)
    cs.remove(j.rel)
    cs.stage()
    if not check_mode:
        cs.publish()
    return _from_journal(j, f"{host}: rotation of {', '.join(j.kinds)} keys rolled back{' (check mode)' * check_mode}"
                            f"; {len(cs.changes)} file(s) rekeyed", changed=True, state="aborted", touched=cs.touched,
                         rekeyed=cs.rekeyed, changes=cs.changes, config_before=cs.config_before,
                         config_after=cs.config.text)


__all__ = ["Journal", "KINDS", "RotationError", "RotationResult", "RotationSpec", "abort", "begin", "due",
           "finish", "load_journal", "resolve_kinds", "status", "switch", "verify"]
