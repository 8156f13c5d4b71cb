# Copyright: nixfleet.sops contributors
# MIT License
"""X25519 (RFC 7748) in pure Python, for targets that have only the standard library.

On a NixOS host there is no ``cryptography``: the verify module still has to
derive the recipient of an age identity (``/var/lib/sops-nix/key.txt``, a
user's ``keys.txt``) to compare it with ``.sops.yaml``. Only public data comes
out of this module and nothing is secret-dependent enough to matter here (the
keys it sees are already on the host that runs it), but it is not constant
time: do not use it for anything but deriving a public key for a comparison.
"""

from __future__ import annotations

P = 2**255 - 19
_A24 = 121665
BASE_POINT = (9).to_bytes(32, "little")


def _clamp(scalar: bytes) -> int:
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    return int.from_bytes(k, "little")


def _decode_u(u: bytes) -> int:
    # RFC 7748 §5: the top bit of the last byte is masked, non-canonical values are reduced.
    return (int.from_bytes(u, "little") & ((1 << 255) - 1)) % P


def x25519(scalar: bytes, u: bytes) -> bytes:
    """The X25519 function of RFC 7748: ``scalar`` (clamped) times the point with u-coordinate ``u``."""
    if len(scalar) != 32 or len(u) != 32:
        raise ValueError("X25519 takes a 32-byte scalar and a 32-byte u-coordinate")
    k = _clamp(scalar)
    x1 = _decode_u(u)
    x2, z2, x3, z3 = 1, 0, x1, 1
    swap = 0
    for t in reversed(range(255)):
        bit = (k >> t) & 1
        swap ^= bit
        if swap:
            x2, x3 = x3, x2
            z2, z3 = z3, z2
        swap = bit
        a = (x2 + z2) % P
        aa = a * a % P
        b = (x2 - z2) % P
        bb = b * b % P
        e = (aa - bb) % P
        c = (x3 + z3) % P
        d = (x3 - z3) % P
        da = d * a % P
        cb = c * b % P
        x3 = (da + cb) % P
        x3 = x3 * x3 % P
        z3 = (da - cb) % P
        z3 = x1 * (z3 * z3 % P) % P
        x2 = aa * bb % P
        z2 = e * ((aa + _A24 * e) % P) % P
    if swap:
        x2, x3 = x3, x2
        z2, z3 = z3, z2
    return (x2 * pow(z2, P - 2, P) % P).to_bytes(32, "little")


def public_key(scalar: bytes) -> bytes:
    """The X25519 public key (u-coordinate of scalar·9) of a 32-byte private scalar."""
    return x25519(scalar, BASE_POINT)
