# Copyright: nixfleet.sops contributors
# MIT License
"""Finding age identities the way sops does, and wrapping/unwrapping data keys for every key type.

sops 3.11 (age/keysource.go) looks in this order and uses everything it finds:
``SOPS_AGE_SSH_PRIVATE_KEY_FILE``, ``~/.ssh/id_ed25519``, ``~/.ssh/id_rsa``,
``SOPS_AGE_KEY``, ``SOPS_AGE_KEY_FILE``, ``SOPS_AGE_KEY_CMD`` and finally
``$XDG_CONFIG_HOME/sops/age/keys.txt`` (``~/.config/…``), which is read
whenever it exists. An SSH ed25519 key is used both ways: as an SSH identity,
as sops uses it (it opens ``ssh-ed25519 …`` stanzas), and converted with
ssh-to-age's rule, as sops-nix uses it (it opens the converted ``age1…``
recipient). In identity lists an SSH identity is its OpenSSH PEM text.

Key types: X25519 and post-quantum stanzas are opened natively, SSH ed25519
and RSA through pyrage.ssh, plugin stanzas through the plugin protocol,
batched: :meth:`Keyring.unwrap_many` and :func:`wrap_many` start each plugin
once per call, whatever the number of files.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from .. import agefile, agekeys
from ..age import (
    PLUGIN,
    PQ,
    PQ_RECIPIENT_HRP,
    SSH_ED25519,
    SSH_RSA,
    X25519,
    AgeKeyError,
    _identity,
    bech32_decode,
    bech32_encode,
    recipient_from_public_bytes,
    recipient_kind,
)
from ..ageplugin import PluginError, PluginUI, SecretSource, unwrap_file_keys, wrap_file_keys
from ..fsutil import KEY_FILE_LIMIT, UnsafePathError, read_regular
from ..identities import PASSPHRASE_HINT, Warn, identity_texts, is_locked, unlock
from ..module_support import note_missing_lib
from .errors import SopsError

# Guarded: without the library, modules fail with missing_required_lib (module_support.require_libs).
try:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
except ImportError:
    note_missing_lib("cryptography")
try:
    import pyrage
    from pyrage import ssh as pyrage_ssh
    from pyrage import x25519 as pyrage_x25519
except ImportError:
    note_missing_lib("pyrage")

SOPS_AGE_KEY = "SOPS_AGE_KEY"
SOPS_AGE_KEY_FILE = "SOPS_AGE_KEY_FILE"
SOPS_AGE_KEY_CMD = "SOPS_AGE_KEY_CMD"
SOPS_AGE_SSH_PRIVATE_KEY_FILE = "SOPS_AGE_SSH_PRIVATE_KEY_FILE"
USER_CONFIG_PATH = os.path.join("sops", "age", "keys.txt")
_OPENSSH_PEM = "-----BEGIN OPENSSH PRIVATE KEY-----"
_DEFAULT_UI = PluginUI()


def set_plugin_ui(ui: PluginUI | None) -> None:
    """The PluginUI every Keyring and wrap use when given none (a module sets it from its options once)."""
    global _DEFAULT_UI
    _DEFAULT_UI = ui or PluginUI()


def plugin_ui() -> PluginUI:
    """The PluginUI in use when none is given (its ``messages`` hold what plugins said)."""
    return _DEFAULT_UI


def _count(n: int) -> str:
    return f"{n} identit{'y' if n == 1 else 'ies'}"


# --------------------------------------------------------------------------- finding identities
def _parse_text(text: str | bytes, source: str, warn: Warn = None) -> list[str]:
    return identity_texts(text, source, warn)


def _describe(found: list[str]) -> str:
    locked = sum(1 for i in found if is_locked(i))
    return _count(len(found)) + (f", {locked} passphrase-protected" if locked else "")


def _ssh_identity(path: str, label: str, searched: list[str]) -> list[str]:
    try:
        data = read_regular(path, KEY_FILE_LIMIT, "key file")
    except UnsafePathError as exc:
        searched.append(f"{label} (not read: {exc.message.removeprefix(path + ': ')})")
        return []
    except OSError as exc:
        searched.append(f"{label} (cannot read: {exc.strerror})")
        return []
    try:
        found = _parse_text(data, path)
    except AgeKeyError as exc:
        searched.append(f"{label} (not usable: {exc})")
        return []
    if not any(i.lstrip().startswith("-----BEGIN") for i in found):
        searched.append(f"{label} (not an SSH private key)")
        return []
    if len(found) == 2:
        searched.append(f"{label} (SSH ed25519 key: used as an SSH identity and converted to age)")
    elif is_locked(found[0]):
        searched.append(f"{label} (passphrase-protected SSH key: used once opened)")
    else:
        searched.append(f"{label} (SSH RSA key: used as an SSH identity)")
    return found


def _read_key_file(path: str, label: str, searched: list[str], warn: Warn, missing: str | None = None) -> list[str]:
    """Identities of a key file; what was found (or why nothing) goes into ``searched``.

    ``missing`` is how an absent file is described; None reports it like any unreadable file.
    """
    try:
        found = _parse_text(read_regular(path, KEY_FILE_LIMIT, "key file"), path, warn)
    except UnsafePathError as exc:
        searched.append(f"{label} (not read: {exc.message.removeprefix(path + ': ')})")
        return []
    except FileNotFoundError as exc:
        searched.append(f"{label} ({missing or 'cannot read: ' + (exc.strerror or 'not found')})")
        return []
    except OSError as exc:
        searched.append(f"{label} (cannot read: {exc.strerror})")
        return []
    except AgeKeyError as exc:
        searched.append(f"{label} (invalid: {exc})")
        return []
    searched.append(f"{label} ({_describe(found)})")
    return found


def _key_cmd(cmd: str, env: Mapping[str, str], searched: list[str], warn: Warn) -> list[str]:
    label = f"{SOPS_AGE_KEY_CMD}={cmd}"
    try:
        proc = subprocess.run(shlex.split(cmd), capture_output=True, check=True, timeout=60, env=dict(env))
    except (OSError, ValueError, IndexError, subprocess.SubprocessError) as exc:
        reason = f"exit status {exc.returncode}" if isinstance(exc, subprocess.CalledProcessError) else (
            type(exc).__name__)
        searched.append(f"{label} (failed: {reason})")
        return []
    try:
        found = _parse_text(proc.stdout, SOPS_AGE_KEY_CMD, warn)
    except AgeKeyError:
        # The parse error may name a line, but the output itself is never repeated.
        searched.append(f"{label} (invalid output: the command's output is not an age identity)")
        return []
    searched.append(f"{label} ({_describe(found)})")
    return found


def _ssh_identities(env: Mapping[str, str], searched: list[str]) -> list[str]:
    """SOPS_AGE_SSH_PRIVATE_KEY_FILE, then ~/.ssh/id_ed25519 and ~/.ssh/id_rsa, as sops looks."""
    found: list[str] = []
    if SOPS_AGE_SSH_PRIVATE_KEY_FILE in env:
        path = env[SOPS_AGE_SSH_PRIVATE_KEY_FILE]
        found += _ssh_identity(path, f"{SOPS_AGE_SSH_PRIVATE_KEY_FILE}={path}", searched)
    else:
        searched.append(f"{SOPS_AGE_SSH_PRIVATE_KEY_FILE} (not set)")
    home = env.get("HOME", "")
    if not home:
        searched.append("~/.ssh (HOME not set)")
        return found
    for name in ("id_ed25519", "id_rsa"):
        path = os.path.join(home, ".ssh", name)
        if os.path.exists(path):
            found += _ssh_identity(path, path, searched)
        else:
            searched.append(f"{path} (not found)")
    return found


def find_identities(
    env: Mapping[str, str] | None = None, explicit: Iterable[str] = (), warn: Warn = None
) -> tuple[list[str], list[str]]:
    """Collect identities like sops does; return (identities, places searched).

    ``explicit`` identities come first. The second list describes each place
    looked at and what was found there (never any key material), for error
    messages such as "no identity can open the file". A key-file line that is
    not an identity is skipped; ``warn`` (if given) gets a message naming the
    file and line, and the note also lands in the places searched.
    Passphrase-protected files are returned as they are: a Keyring opens them
    when needed (see identities.unlock).
    """
    if env is None:
        env = os.environ
    identities: list[str] = []
    searched: list[str] = []

    def note(msg: str) -> None:
        searched.append(msg)
        if warn is not None:
            warn(msg)

    explicit = [i for i in explicit if i]
    if explicit:
        for i, ident in enumerate(explicit):
            try:
                identities.extend(_parse_text(ident, f"explicit identity #{i + 1}"))
            except AgeKeyError as exc:
                raise SopsError(f"invalid identity passed explicitly: {exc}") from None
        searched.append(f"identities passed explicitly ({_count(len(identities))})")

    # SSH keys first, as sops' loadAgeSSHIdentities runs first.
    identities += _ssh_identities(env, searched)
    home = env.get("HOME", "")

    if SOPS_AGE_KEY in env:
        try:
            found = _parse_text(env[SOPS_AGE_KEY], SOPS_AGE_KEY, note)
            searched.append(f"{SOPS_AGE_KEY} ({_describe(found)})")
            identities += found
        except AgeKeyError as exc:
            searched.append(f"{SOPS_AGE_KEY} (invalid: {exc})")
    else:
        searched.append(f"{SOPS_AGE_KEY} (not set)")

    if SOPS_AGE_KEY_FILE in env:
        path = env[SOPS_AGE_KEY_FILE]
        identities += _read_key_file(path, f"{SOPS_AGE_KEY_FILE}={path}", searched, note)
    else:
        searched.append(f"{SOPS_AGE_KEY_FILE} (not set)")

    if SOPS_AGE_KEY_CMD in env:
        identities += _key_cmd(env[SOPS_AGE_KEY_CMD], env, searched, note)
    else:
        searched.append(f"{SOPS_AGE_KEY_CMD} (not set)")

    config_dir = env.get("XDG_CONFIG_HOME", "")
    if config_dir and not os.path.isabs(config_dir):
        config_dir = ""
        searched.append("XDG_CONFIG_HOME (relative path, ignored as Go does)")
    elif not config_dir and home:
        config_dir = os.path.join(home, ".config")
    if config_dir:
        path = os.path.join(config_dir, USER_CONFIG_PATH)
        # sops reads this file whenever it exists; its absence is normal, not an error.
        identities += _read_key_file(path, path, searched, note, missing="not found")
    # Duplicates cost a decryption attempt each; keep the first occurrence.
    seen: set[str] = set()
    unique = [i for i in identities if not (i in seen or seen.add(i))]
    return unique, searched


# --------------------------------------------------------------------------- keyring
def _enc_key(enc: str) -> bytes:
    # Stanzas are cached by a digest of their text: the same 'enc' is the same stanza.
    return hashlib.sha256(enc.encode("ascii", "replace")).digest()


def _stanza_pair(stanza: Any) -> tuple[str, str]:
    if isinstance(stanza, (tuple, list)):
        return stanza[0], stanza[1]
    return stanza.recipient, stanza.enc


def _kind(recipient: str) -> str:
    try:
        return recipient_kind(recipient)
    except AgeKeyError:
        return ""


class Keyring:
    """Parsed identities of every kind; each stanza is opened once per Keyring (results cached).

    ``passphrase`` opens passphrase-protected identities the first time one is
    needed (asked once); ``ui`` answers plugin requests (default:
    :func:`plugin_ui`). Plugins run once per :meth:`unwrap_many` call and
    plugin name; a single :meth:`unwrap` of a plugin stanza costs one run.
    """

    def __init__(self, identities: list[str], searched: list[str] | None = None, *,
                 passphrase: SecretSource | None = None, ui: PluginUI | None = None) -> None:
        self.identities = identities
        self.searched = searched if searched is not None else []
        self.passphrase = passphrase
        self._ui = ui
        self._x25519: list[tuple[bytes, bytes, str]] = []  # scalar, public, recipient
        self._pq: list[tuple[agekeys.PQKey, str]] = []
        self._ssh: dict[str, Any] = {}  # "type base64" -> pyrage identity
        self._plugins: dict[str, list[str]] = {}
        self._locked: list[str] = []
        self._opened: dict[bytes, bytes] = {}
        self._plugin_tried: set[tuple[bytes, str]] = set()
        for ident in identities:
            self._add(ident)

    def __repr__(self) -> str:  # private keys: never in a repr or traceback
        return f"Keyring({len(self.identities)} identities, searched={self.searched!r})"

    def __bool__(self) -> bool:
        return bool(self._x25519 or self._pq or self._ssh or self._plugins or self._locked)

    @property
    def ui(self) -> PluginUI:
        """The PluginUI used for this keyring's plugin runs."""
        return self._ui or _DEFAULT_UI

    def _add(self, ident: str) -> None:
        if is_locked(ident):
            self._locked.append(ident)
            return
        try:
            if ident.lstrip().startswith("-----BEGIN"):
                parsed = pyrage_ssh.Identity.from_buffer(ident.encode())
                key = serialization.load_ssh_private_key(ident.encode(), None) if _OPENSSH_PEM in ident else (
                    serialization.load_pem_private_key(ident.encode(), None))
                public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                       serialization.PublicFormat.OpenSSH).decode()
                self._ssh[" ".join(public.split()[:2])] = parsed
                return
            kind, data = _identity(ident)
        except Exception:  # pyrage and cryptography raise their own types; never echo the key
            raise SopsError("an identity could not be parsed by age") from None
        if kind == X25519:
            public = X25519PrivateKey.from_private_bytes(data).public_key().public_bytes_raw()
            self._x25519.append((data, public, recipient_from_public_bytes(public)))
        elif kind == PQ:
            key = agekeys.PQKey(data)
            self._pq.append((key, bech32_encode(PQ_RECIPIENT_HRP, key.public)))
        else:
            self._plugins.setdefault(kind.split(":", 1)[1], []).append(ident.strip())

    @staticmethod
    def _key(recipient: str) -> str:
        # An ssh stanza names the key as "type base64 [comment]": match on type and key.
        return " ".join(recipient.split()[:2]) if recipient.startswith("ssh-") else recipient

    def has_recipient(self, recipient: str) -> bool:
        """True when one of the identities is the one ``recipient`` names (plugin identities can't tell)."""
        key = self._key(recipient)
        return key in self._ssh or any(r == key for *_k, r in self._x25519) or any(r == key for _k, r in self._pq)

    # ----------------------------------------------------------------- opening one stanza
    def _open_local(self, enc: str, want: str | None) -> bytes | None:
        """Open with X25519, post-quantum and SSH identities (``want``: only the one for that recipient)."""
        try:
            f = agefile.parse(enc)
        except AgeKeyError:
            return None
        for stanza in f.stanzas:
            if stanza.type in (agekeys.X25519_TYPE, agekeys.PQ_TYPE):
                for file_key in self._native_keys(stanza, want):
                    try:
                        return f.open(file_key)
                    except AgeKeyError:
                        return None  # the right key, a broken file: has_recipient tells the caller
            elif stanza.type in (SSH_ED25519, SSH_RSA):
                ids = [i for k, i in self._ssh.items() if want is None or k == want]
                if ids:
                    try:
                        return pyrage.decrypt(enc.encode("ascii", "replace"), ids)
                    except Exception:  # noqa: BLE001 - pyrage's own error types
                        return None
        return None

    def _native_keys(self, stanza: agefile.Stanza, want: str | None) -> Iterable[bytes]:
        try:
            if stanza.type == agekeys.X25519_TYPE:
                for scalar, public, r in self._x25519:
                    if want is None or r == want:
                        key = agekeys.unwrap_x25519(stanza, scalar, public)
                        if key is not None:
                            yield key
            else:
                for pq, r in self._pq:
                    if want is None or r == want:
                        key = agekeys.unwrap_pq(stanza, pq)
                        if key is not None:
                            yield key
        except AgeKeyError:
            return  # a malformed stanza opens with no key

    def _unlock(self) -> bool:
        """Open the passphrase-protected identities (the passphrase is asked once); True if any opened."""
        locked, self._locked = self._locked, []
        added = False
        for ident in locked:
            try:
                for inner in unlock(ident, self.passphrase, "a passphrase-protected identity"):
                    self._add(inner)
                    added = True
            except AgeKeyError as exc:
                self.searched.append(f"passphrase-protected identity not used: {exc}")
        if locked and not self.passphrase:
            self.searched.append(f"passphrase-protected identities were skipped: {PASSPHRASE_HINT}")
        return added

    def _plugin_batch(self, name: str, encs: Sequence[str]) -> None:
        """One identity-v1 run of plugin ``name`` over ``encs``; what it opens lands in the cache."""
        todo = []
        for enc in encs:
            key = _enc_key(enc)
            if key in self._opened or (key, name) in self._plugin_tried:
                continue
            self._plugin_tried.add((key, name))
            try:
                todo.append((key, agefile.parse(enc)))
            except AgeKeyError:
                continue
        if not todo:
            return
        try:
            file_keys = unwrap_file_keys(name, self._plugins[name], [f.stanzas for _unused, f in todo], self.ui)
        except PluginError as exc:
            self.searched.append(str(exc))
            return
        for index, file_key in file_keys.items():
            key, f = todo[index]
            try:
                self._opened[key] = f.open(file_key)
            except AgeKeyError:
                continue

    # ----------------------------------------------------------------- public API
    def unwrap(self, recipient: str, enc: str) -> bytes | None:
        """The data key (or shamir share) in ``enc`` for ``recipient``, or None when no identity opens it."""
        key = _enc_key(enc)
        if key in self._opened:
            return self._opened[key]
        kind = _kind(recipient)
        if kind.startswith(PLUGIN + ":"):
            name = kind.split(":", 1)[1]
            if name in self._plugins:
                self._plugin_batch(name, [enc])
            return self._opened.get(key)
        data = self._open_local(enc, self._key(recipient))
        if data is None and self._locked and self._unlock():
            data = self._open_local(enc, self._key(recipient))
        if data is not None:
            self._opened[key] = data
        return data

    def unwrap_any(self, enc: str) -> bytes | None:
        """Try every identity and plugin (for stanzas whose recipient line does not match any of ours)."""
        key = _enc_key(enc)
        if key in self._opened:
            return self._opened[key]
        if self._locked:
            self._unlock()
        data = self._open_local(enc, None)
        if data is not None:
            self._opened[key] = data
            return data
        for name in self._plugins:
            self._plugin_batch(name, [enc])
            if key in self._opened:
                return self._opened[key]
        return None

    def unwrap_many(self, files: Iterable[tuple[Hashable, Iterable[Any]]]) -> dict[Hashable, bytes]:
        """Open many files at once: ``[(file_id, stanzas)]`` -> ``{file_id: data key}``.

        ``stanzas`` are one key group's ``AgeStanza`` objects (or ``(recipient,
        enc)`` pairs); use ``(path, group index)`` as file_id for Shamir files.
        Local identities go first; the files still closed go to each plugin in
        ONE run per plugin name (one PIN prompt). Results are cached, so a
        later ``unwrap``/``data_key`` of the same stanzas starts nothing.
        Files no identity opens are absent from the result.
        """
        out: dict[Hashable, bytes] = {}
        pending: list[tuple[Hashable, list[tuple[str, str]]]] = []
        for file_id, stanzas in files:
            pairs = [_stanza_pair(s) for s in stanzas]
            for recipient, enc in pairs:
                if not _kind(recipient).startswith(PLUGIN + ":") or _enc_key(enc) in self._opened:
                    data = self.unwrap(recipient, enc)
                    if data is not None:
                        out[file_id] = data
                        break
            else:
                pending.append((file_id, pairs))
        by_name: dict[str, list[str]] = {}
        for _unused, pairs in pending:
            for recipient, enc in pairs:
                kind = _kind(recipient)
                if kind.startswith(PLUGIN + ":") and kind.split(":", 1)[1] in self._plugins:
                    by_name.setdefault(kind.split(":", 1)[1], []).append(enc)
        for name, encs in by_name.items():
            self._plugin_batch(name, encs)
        for file_id, pairs in pending:
            for _unused, enc in pairs:
                if _enc_key(enc) in self._opened:
                    out[file_id] = self._opened[_enc_key(enc)]
                    break
        return out


# --------------------------------------------------------------------------- wrapping
_RECIPIENT_CACHE: dict[str, Any] = {}
_WRAPPED: dict[tuple[bytes, str], str] = {}


def _recipient(recipient: str) -> tuple[str, Any]:
    parsed = _RECIPIENT_CACHE.get(recipient)
    if parsed is None:
        try:
            kind = recipient_kind(recipient)
            if kind == X25519:
                # pyrage (Rust) wraps X25519 in half the time of the native path: a fleet rekey wraps
                # tens of thousands of these.
                parsed = (kind, pyrage_x25519.Recipient.from_str(recipient.strip()))
            elif kind == PQ:
                parsed = (kind, bech32_decode(recipient)[1])
            elif kind in (SSH_ED25519, SSH_RSA):
                parsed = (kind, pyrage_ssh.Recipient.from_str(" ".join(recipient.split()[:2])))
            else:
                parsed = (kind, kind.split(":", 1)[1])
        except Exception:  # noqa: BLE001 - AgeKeyError or pyrage's own types
            raise SopsError(f"invalid age recipient {recipient!r}") from None
        _RECIPIENT_CACHE[recipient] = parsed
    return parsed


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(b"nixfleet-wrap\x00" + secret).digest()


def wrap(secret: bytes, recipient: str, ui: PluginUI | None = None) -> str:
    """Encrypt ``secret`` to one recipient as an armored age file (one per recipient, as sops).

    Every kind sops accepts: X25519, post-quantum, SSH ed25519/RSA and plugins.
    A plugin recipient already wrapped for this secret by :func:`wrap_many`
    reuses that result instead of running the plugin again.
    """
    kind, parsed = _recipient(recipient)
    if kind == PQ:
        file_key = agefile.new_file_key()
        return agefile.encrypt(secret, file_key, [agekeys.wrap_pq(file_key, parsed)]).decode("ascii")
    if kind in (X25519, SSH_ED25519, SSH_RSA):
        return pyrage.encrypt(secret, [parsed], armored=True).decode("ascii")
    done = _WRAPPED.get((_digest(secret), recipient))
    if done is not None:
        return done
    return wrap_many([(0, secret, [recipient])], ui)[0][recipient]


def wrap_many(
    jobs: Iterable[tuple[Hashable, bytes, Sequence[str]]], ui: PluginUI | None = None
) -> dict[Hashable, dict[str, str]]:
    """Wrap many secrets at once: ``[(job_id, secret, recipients)]`` -> ``{job_id: {recipient: enc}}``.

    Native and SSH recipients are wrapped directly; each distinct plugin
    recipient gets ONE plugin run carrying every secret that needs it. The
    results are remembered, so a later :func:`wrap` (from updatekeys or
    rotate) of the same secret and plugin recipient starts nothing.
    Raises SopsError when a plugin fails.
    """
    out: dict[Hashable, dict[str, str]] = {}
    by_plugin: dict[str, list[tuple[Hashable, bytes]]] = {}
    for job_id, secret, recipients in jobs:
        out.setdefault(job_id, {})
        for r in recipients:
            kind, name = _recipient(r)
            if kind.startswith(PLUGIN + ":"):
                if (_digest(secret), r) in _WRAPPED:
                    out[job_id][r] = _WRAPPED[(_digest(secret), r)]
                else:
                    by_plugin.setdefault(r, []).append((job_id, secret))
            else:
                out[job_id][r] = wrap(secret, r)
    for r, items in by_plugin.items():
        name = _recipient(r)[1]
        file_keys = [agefile.new_file_key() for _unused in items]
        try:
            stanzas = wrap_file_keys(name, r, file_keys, ui or _DEFAULT_UI)
        except PluginError as exc:
            raise SopsError(str(exc)) from None
        for (job_id, secret), file_key, st in zip(items, file_keys, stanzas, strict=True):
            enc = agefile.encrypt(secret, file_key, st).decode("ascii")
            _WRAPPED[(_digest(secret), r)] = enc
            out[job_id][r] = enc
    return out


def forget_wrapped() -> None:
    """Drop the remembered plugin wrappings (they hold no secret, only digests and age files)."""
    _WRAPPED.clear()


__all__ = [
    "Keyring",
    "PluginUI",
    "SecretSource",
    "find_identities",
    "forget_wrapped",
    "plugin_ui",
    "set_plugin_ui",
    "wrap",
    "wrap_many",
]
