# Copyright: nixfleet.sops contributors
# MIT License
"""Shamir secret sharing over GF(2^8), share format as sops writes it.

sops splits the 32-byte data key byte-wise with polynomials over GF(2^8)
(AES polynomial x^8+x^4+x^3+x+1). A share is the 32 evaluated bytes followed
by one byte holding the x coordinate; sops uses x = group index + 1, which
lets us recompute the share of any group from ``threshold`` others.
"""

from __future__ import annotations

import os


def _mul(a: int, b: int) -> int:
    r = 0
    while b:
        if b & 1:
            r ^= a
        a <<= 1
        if a & 0x100:
            a ^= 0x11B
        b >>= 1
    return r


_EXP = [0] * 512
_LOG = [0] * 256
_x = 1
for _i in range(255):
    _EXP[_i] = _x
    _LOG[_x] = _i
    _x = _mul(_x, 3)
for _i in range(255, 512):
    _EXP[_i] = _EXP[_i - 255]


def mul(a: int, b: int) -> int:
    """Product in GF(2^8)."""
    if a == 0 or b == 0:
        return 0
    return _EXP[_LOG[a] + _LOG[b]]


def div(a: int, b: int) -> int:
    """Quotient in GF(2^8); b must not be 0."""
    if b == 0:
        raise ZeroDivisionError("division by zero in GF(2^8)")
    if a == 0:
        return 0
    return _EXP[(_LOG[a] - _LOG[b]) % 255]


def _evaluate(coefficients: list[int], x: int) -> int:
    out = 0
    for c in reversed(coefficients):
        out = mul(out, x) ^ c
    return out


def split(secret: bytes, parts: int, threshold: int) -> list[bytes]:
    """Split ``secret`` into ``parts`` shares, any ``threshold`` of which recover it."""
    if parts < threshold:
        raise ValueError("parts cannot be less than threshold")
    if parts > 255 or threshold > 255:
        raise ValueError("parts and threshold cannot exceed 255")
    if threshold < 2:
        raise ValueError("threshold must be at least 2")
    if not secret:
        raise ValueError("cannot split an empty secret")
    out = [bytearray(len(secret) + 1) for _unused in range(parts)]
    for idx in range(parts):
        out[idx][len(secret)] = idx + 1
    for pos, byte in enumerate(secret):
        coefficients = [byte] + list(os.urandom(threshold - 1))
        for idx in range(parts):
            out[idx][pos] = _evaluate(coefficients, idx + 1)
    return [bytes(s) for s in out]


def interpolate(parts: list[bytes], x: int) -> bytes:
    """Evaluate the sharing polynomials at ``x`` (0 gives the secret).

    With x = i + 1 this recreates the share of key group i, x byte included.
    """
    if len(parts) < 2:
        raise ValueError("less than two parts cannot be used to reconstruct the secret")
    length = len(parts[0])
    if length < 2 or any(len(p) != length for p in parts):
        raise ValueError("all parts must have the same length of at least two bytes")
    xs = [p[-1] for p in parts]
    if len(set(xs)) != len(xs):
        raise ValueError("duplicate part detected")
    basis = []
    for i, xi in enumerate(xs):
        b = 1
        for j, xj in enumerate(xs):
            if i != j:
                b = mul(b, div(x ^ xj, xi ^ xj))
        basis.append(b)
    out = bytearray(length - 1)
    for pos in range(length - 1):
        acc = 0
        for i, part in enumerate(parts):
            acc ^= mul(part[pos], basis[i])
        out[pos] = acc
    if x == 0:
        return bytes(out)
    return bytes(out) + bytes([x])


def combine(parts: list[bytes]) -> bytes:
    """Recover the secret from shares (at least the threshold)."""
    return interpolate(parts, 0)
