"""The galaxy tarball ships no private key material, even when built from a tree `make demo` has run in.

The tree is a copy of the checkout (the files git knows) plus what local runs leave behind with real keys in
it: demo/ (the demo admin's age identity, the demo host's SSH key), a virtualenv, molecule and test output.
Every member of the built tarball is then searched for whole keys (not the words: the code that detects
keys names them)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile

from ansible_collections.nixfleet.sops.plugins.module_utils import age
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.lib.runner import REPO

# A whole key: an age identity (bech32 body), or a PEM/OpenSSH private key block with its base64 body.
KEY_MATERIAL = [
    re.compile(rb"AGE-SECRET-KEY-(?:PQ-)?1[02-9AC-HJ-NP-Z]{20,}", re.I),
    re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----\s*[A-Za-z0-9+/=\s]{40,}"),
]


def _copy_checkout(dest: str) -> None:
    files = subprocess.run(["git", "-C", REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = os.path.join(REPO, rel)
        if os.path.lexists(src) and not os.path.isdir(src):
            os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel), follow_symlinks=False)


def _leave_keys_behind(tree: str) -> list[bytes]:
    """What local runs leave in the tree, each file holding a real private key; returns the keys."""
    identity = age.generate_identity()
    ssh_key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    pem_key = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    planted = {
        "demo/admin/keys.txt": age.format_identity_file(identity).encode(),
        "demo/host/persist/etc/ssh/ssh_host_ed25519_key": ssh_key,
        "demo/nix-secrets/.git/config": b"[core]\n",
        "venv/lib/leak.txt": identity.encode(),
        ".venv/leak.txt": identity.encode(),
        ".cache/leak.pem": pem_key,
        "tests/output/leak.txt": identity.encode(),
        "molecule/rotate/.molecule/keys.txt": identity.encode(),
        "benchmarks/out/keys.txt": identity.encode(),
        "plugins/modules/__pycache__/leak.pyc": identity.encode(),
    }
    for rel, data in planted.items():
        path = os.path.join(tree, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
    return [identity.encode(), ssh_key, pem_key]


def test_built_tarball_has_no_private_key_material(tmp_path):
    tree = str(tmp_path / "ansible_collections" / "nixfleet" / "sops")
    _copy_checkout(tree)
    keys = _leave_keys_behind(tree)
    # The patterns find the planted keys (so a clean result below means something).
    assert all(any(p.search(k) for p in KEY_MATERIAL) for k in keys)
    out = tmp_path / "out"
    galaxy = os.path.join(os.path.dirname(sys.executable), "ansible-galaxy")
    proc = subprocess.run([galaxy, "collection", "build", tree, "--output-path", str(out)],
                          capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tarball,) = out.glob("nixfleet-sops-*.tar.gz")
    found, names = [], []
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            names.append(member.name)
            if member.isfile():
                data = tar.extractfile(member).read()
                found += [member.name for p in KEY_MATERIAL if p.search(data)]
    assert found == [], f"private key material in {found}"
    assert not [n for n in names if n.split("/")[0] in ("demo", "venv", ".venv", ".cache", "benchmarks")]
    # It is the collection all the same.
    assert {"MANIFEST.json", "FILES.json", "meta/runtime.yml", "plugins/modules/sops_rekey.py", "LICENSE"} <= set(names)
