#!/usr/bin/env python3
"""A test stand-in for sops-nix's ``sops-install-secrets``, for containers that cannot run NixOS.

It fulfils the same contract (see SOPS-NIX-CONTRACT.md and sops-nix's
pkgs/sops-install-secrets/main.go) so that the verify role, which reads the same
manifest, cannot tell the difference:

  sops-install-secrets [-ignore-passwd] [-check-mode=off] MANIFEST.json

1. ``secretsMountPoint`` (default /run/secrets.d) is made 0751 root:keys (a directory, not a
   ramfs: containers may not mount).
2. ``<secretsMountPoint>/age-keys.txt`` (0600) gets every ``ageSshKeyPaths`` key converted to an
   age identity (ssh-to-age: SHA-512(seed)[:32], bech32 ``AGE-SECRET-KEY-1…``), then the contents
   of ``ageKeyFile``.
3. Every secret's ``sopsFile`` is decrypted ONCE with the real ``sops`` binary and that key file;
   each secret's ``key`` (``/``-separated) is picked from it, or the whole file for
   binary/dotenv/ini. Any failure stops here, before anything is written, as sops-nix does:
   the previous generation stays in place and the exit status is 1.
4. A new generation ``<secretsMountPoint>/<N+1>`` (N from the current ``symlinkPath`` target),
   0751 root:keys, gets each secret at ``<gen>/<name>`` with its mode and owner (parent
   directories 0751 root:keys) and each template rendered at ``<gen>/rendered/<name>``.
5. A secret whose ``path`` is elsewhere gets a symlink ``path -> <symlinkPath>/<name>``; then
   ``symlinkPath`` is switched atomically to the new generation.
6. Generations older than ``keepGenerations`` are removed (0 keeps all).

Standard library only (it runs with the container's python3). The sops binary is taken from
$SOPS_BIN, else next to this script, else $PATH.
"""

from __future__ import annotations

import base64
import grp
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time

PROG = "sops-install-secrets"
_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


class ActivationError(Exception):
    pass


# --------------------------------------------------------------------------- ssh-to-age
def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= _GEN[i] if (top >> i) & 1 else 0
    return chk


def bech32(hrp: str, data: bytes) -> str:
    acc = bits = 0
    values = []
    for byte in data:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            values.append((acc >> bits) & 31)
    if bits:
        values.append((acc << (5 - bits)) & 31)
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    poly = _polymod(expanded + values + [0] * 6) ^ 1
    return hrp + "1" + "".join(_CHARSET[d] for d in values + [(poly >> 5 * (5 - i)) & 31 for i in range(6)])


def _string(blob: bytes, off: int) -> tuple[bytes, int]:
    n = int.from_bytes(blob[off : off + 4], "big")
    if off + 4 + n > len(blob):
        raise ValueError("truncated key")
    return blob[off + 4 : off + 4 + n], off + 4 + n


def ssh_private_key_to_age(text: str) -> str:
    """The age identity ssh-to-age derives from an unencrypted OpenSSH ed25519 private key."""
    body = text.split("-----BEGIN OPENSSH PRIVATE KEY-----")[1].split("-----END OPENSSH PRIVATE KEY-----")[0]
    blob = base64.b64decode("".join(body.split()))
    off = len(b"openssh-key-v1\x00")
    cipher, off = _string(blob, off)
    if cipher != b"none":
        raise ValueError("the key is encrypted")
    _unused, off = _string(blob, off)  # kdf
    _unused, off = _string(blob, off)  # kdf options
    off += 4  # number of keys
    _unused, off = _string(blob, off)  # public key
    priv, _unused = _string(blob, off)
    keytype, p = _string(priv, 8)
    if keytype != b"ssh-ed25519":
        raise ValueError(f"only ssh-ed25519 keys are supported, this is {keytype.decode()}")
    _unused, p = _string(priv, p)
    secret, _unused = _string(priv, p)
    return bech32("age-secret-key-", hashlib.sha512(secret[:32]).digest()[:32]).upper()


# --------------------------------------------------------------------------- decryption
def _sops_binary() -> str:
    candidates = [os.environ.get("SOPS_BIN", ""), os.path.join(os.path.dirname(os.path.abspath(__file__)), "sops"),
                  shutil.which("sops") or ""]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise ActivationError("no sops binary (set SOPS_BIN, or install it next to this script)")


def decrypt_file(path: str, fmt: str, key_file: str) -> bytes:
    """The whole decrypted file: JSON for yaml/json (so stdlib can parse it), raw otherwise."""
    cmd = [_sops_binary(), "decrypt", "--input-type", fmt]
    cmd += ["--output-type", "json" if fmt in ("yaml", "json") else fmt, path]
    env = dict(os.environ, SOPS_AGE_KEY_FILE=key_file, SOPS_DISABLE_VERSION_CHECK="1")
    proc = subprocess.run(cmd, capture_output=True, env=env, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise ActivationError(f"failed to decrypt '{path}': {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def pick_key(data: object, key: str, name: str, sops_file: str) -> bytes:
    current = data
    walked = []
    for part in key.split("/"):
        walked.append(part)
        if not isinstance(current, dict) or part not in current:
            raise ActivationError(f"secret {name} in {sops_file} is not valid: the key '{'/'.join(walked)}' "
                                  "cannot be found")
        current = current[part]
    if isinstance(current, str):
        return current.encode()
    return json.dumps(current).encode()


# --------------------------------------------------------------------------- install
def _ids(secret: dict, ignore_passwd: bool) -> tuple[int, int]:
    if ignore_passwd:
        return 0, 0
    owner, group = secret.get("owner"), secret.get("group")
    try:
        uid = pwd.getpwnam(owner).pw_uid if owner else int(secret.get("uid") or 0)
        gid = grp.getgrnam(group).gr_gid if group else int(secret.get("gid") or 0)
    except KeyError as exc:
        raise ActivationError(f"failed to lookup user or group {exc}") from None
    return uid, gid


def _makedirs(base: str, rel_dir: str, keys_gid: int) -> None:
    current = base
    for part in [p for p in rel_dir.split("/") if p]:
        current = os.path.join(current, part)
        os.makedirs(current, 0o751, exist_ok=True)
        os.chmod(current, 0o751)
        os.chown(current, 0, keys_gid)


def _write(path: str, value: bytes, mode: int, uid: int, gid: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, value)
    finally:
        os.close(fd)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def atomic_symlink(target: str, link: str) -> None:
    os.makedirs(os.path.dirname(link), 0o755, exist_ok=True)
    tmpdir = tempfile.mkdtemp(prefix="." + os.path.basename(link), dir=os.path.dirname(link))
    try:
        tmp = os.path.join(tmpdir, "tmp.symlink")
        os.symlink(target, tmp)
        os.replace(tmp, link)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def install(manifest_path: str, ignore_passwd: bool = False) -> None:
    with open(manifest_path, encoding="utf-8") as fh:
        manifest = json.load(fh)
    mount = (manifest.get("secretsMountPoint") or "/run/secrets.d").rstrip("/")
    link = manifest.get("symlinkPath") or "/run/secrets"
    keep = int(manifest.get("keepGenerations", 1) or 0)
    try:
        keys_gid = 0 if ignore_passwd else grp.getgrnam("keys").gr_gid
    except KeyError:
        keys_gid = grp.getgrnam("nogroup").gr_gid
    secrets = manifest.get("secrets") or []
    templates = manifest.get("templates") or []

    os.makedirs(mount, 0o751, exist_ok=True)
    os.chmod(mount, 0o751)
    os.chown(mount, 0, keys_gid)

    key_file = os.path.join(mount, "age-keys.txt")
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"# generated by {PROG} (test activation) at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        for ssh_key in manifest.get("ageSshKeyPaths") or []:
            try:
                with open(ssh_key, encoding="utf-8") as fh:
                    identity = ssh_private_key_to_age(fh.read())
            except (OSError, ValueError, IndexError) as exc:
                print(f"Cannot convert ssh key '{ssh_key}': {exc}", file=sys.stderr)
                continue
            out.write(identity + "\n")
            print(f"{PROG}: Imported {ssh_key} as age key", file=sys.stderr)
        if manifest.get("ageKeyFile"):
            try:
                with open(manifest["ageKeyFile"], encoding="utf-8") as fh:
                    out.write(fh.read() + "\n")
            except OSError as exc:
                raise ActivationError(f"cannot read keyfile '{manifest['ageKeyFile']}': {exc.strerror}") from None

    # Decrypt everything before writing anything, as sops-nix does.
    plain: dict[str, object] = {}
    values: list[tuple[dict, bytes]] = []
    for secret in secrets:
        fmt = secret.get("format") or "yaml"
        sops_file = secret["sopsFile"]
        if sops_file not in plain:
            raw = decrypt_file(sops_file, fmt, key_file)
            plain[sops_file] = json.loads(raw) if fmt in ("yaml", "json") else raw
        data = plain[sops_file]
        value = pick_key(data, secret.get("key") or secret["name"], secret["name"], sops_file) \
            if fmt in ("yaml", "json") else data
        values.append((secret, value))  # type: ignore[arg-type]

    current = 0
    if os.path.islink(link):
        target = os.readlink(link)
        if target.startswith(mount + "/") and os.path.basename(target).isdigit():
            current = int(os.path.basename(target))
    generation = os.path.join(mount, str(current + 1))
    shutil.rmtree(generation, ignore_errors=True)
    os.mkdir(generation, 0o751)
    os.chmod(generation, 0o751)
    os.chown(generation, 0, keys_gid)

    by_name: dict[str, bytes] = {}
    for secret, value in values:
        name = secret["name"]
        _makedirs(generation, os.path.dirname(name), keys_gid)
        uid, gid = _ids(secret, ignore_passwd)
        _write(os.path.join(generation, name), value, int(secret.get("mode") or "0400", 8), uid, gid)
        by_name[name] = value
    placeholders = manifest.get("placeholderBySecretName") or {}
    for template in templates:
        content = template.get("content") or ""
        for name, placeholder in placeholders.items():
            if name in by_name:
                content = content.replace(placeholder, by_name[name].decode(errors="replace"))
        rel = os.path.join("rendered", template["name"])
        _makedirs(generation, os.path.dirname(rel), keys_gid)
        uid, gid = _ids(template, ignore_passwd)
        _write(os.path.join(generation, rel), content.encode(), int(template.get("mode") or "0400", 8), uid, gid)

    for secret in secrets:
        wanted = os.path.join(link, secret["name"])
        path = secret.get("path") or wanted
        if path == wanted:
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.islink(path) and os.readlink(path) == wanted:
            continue
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(wanted, path)
        if not ignore_passwd:
            uid, gid = _ids(secret, ignore_passwd)
            os.lchown(path, uid, gid)
    atomic_symlink(generation, link)

    if keep:
        for entry in os.listdir(mount):
            if entry.isdigit() and int(entry) != current + 1 and current + 1 - keep >= int(entry):
                shutil.rmtree(os.path.join(mount, entry), ignore_errors=True)
    print(f"{PROG}: installed {len(secrets)} secrets and {len(templates)} templates in {generation}")


def main(argv: list[str]) -> int:
    args = [a for a in argv[1:] if not a.startswith("-")]
    ignore_passwd = "-ignore-passwd" in argv[1:]
    if len(args) != 1:
        print(f"Usage: {PROG} [-ignore-passwd] manifest.json", file=sys.stderr)
        return 2
    try:
        install(args[0], ignore_passwd)
    except (ActivationError, OSError, ValueError, KeyError) as exc:
        print(f"{argv[0]}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
