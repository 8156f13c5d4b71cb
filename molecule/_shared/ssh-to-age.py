#!/usr/bin/env python3
"""Test oracle: the age identity sops-nix derives from an OpenSSH ed25519 host key, made WITHOUT the collection.

    ssh-to-age.py OUT < ssh_host_ed25519_key

Reads the private key on stdin, writes the age identity (ssh-to-age's conversion, as implemented by
the test activation in tests/activation/) to OUT (0600) and prints the matching age recipient. The
public side is cross-checked with libsodium (PyNaCl): the X25519 public key of the identity must be
crypto_sign_ed25519_pk_to_curve25519 of the key's Ed25519 public key. Nothing secret is printed.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ACTIVATION = os.path.join(HERE, "..", "..", "tests", "activation", "sops-install-secrets-test.py")
_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _activation():
    spec = importlib.util.spec_from_file_location("sops_install_secrets_test", ACTIVATION)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bech32_decode(text: str) -> bytes:
    data = [_CHARSET.index(c) for c in text.lower().rpartition("1")[2][:-6]]
    acc = bits = 0
    out = bytearray()
    for v in data:
        acc = (acc << 5) | v
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    return bytes(out)


def _ed25519_public(text: str, mod) -> bytes:
    body = text.split("-----BEGIN OPENSSH PRIVATE KEY-----")[1].split("-----END OPENSSH PRIVATE KEY-----")[0]
    blob = base64.b64decode("".join(body.split()))
    off = len(b"openssh-key-v1\x00")
    for _unused in range(3):  # cipher, kdf, kdf options
        _unused, off = mod._string(blob, off)
    off += 4
    pub_blob, _unused = mod._string(blob, off)
    keytype, p = mod._string(pub_blob, 0)
    assert keytype == b"ssh-ed25519", keytype
    pub, _unused = mod._string(pub_blob, p)
    return pub


def main() -> int:
    from nacl import bindings

    out = sys.argv[1]
    text = sys.stdin.read()
    mod = _activation()
    identity = mod.ssh_private_key_to_age(text)
    scalar = _bech32_decode(identity)
    x_pub = bindings.crypto_scalarmult_base(scalar)
    expected = bindings.crypto_sign_ed25519_pk_to_curve25519(_ed25519_public(text, mod))
    if x_pub != expected:
        print("ssh-to-age.py: converted identity does not match libsodium's conversion of the public key",
              file=sys.stderr)
        return 1
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(identity + "\n")
    print(mod.bech32("age", x_pub))
    return 0


if __name__ == "__main__":
    sys.exit(main())
