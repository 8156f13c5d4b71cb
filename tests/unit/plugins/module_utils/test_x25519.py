"""The pure-Python X25519 against RFC 7748's vectors and against cryptography's X25519."""

from __future__ import annotations

import os

import pytest
from ansible_collections.nixfleet.sops.plugins.module_utils import age, x25519
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey


def test_rfc7748_vector_1() -> None:
    scalar = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    expected = "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"
    assert x25519.x25519(scalar, u).hex() == expected


def test_rfc7748_vector_2_high_bit_masked() -> None:
    scalar = bytes.fromhex("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d")
    u = bytes.fromhex("e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493")
    expected = "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"
    assert x25519.x25519(scalar, u).hex() == expected


def test_rfc7748_iterated_1000() -> None:
    k = u = x25519.BASE_POINT
    for _unused in range(1000):
        k, u = x25519.x25519(k, u), k
    assert k.hex() == "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"


def test_rfc7748_diffie_hellman() -> None:
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    alice_pub = x25519.public_key(alice)
    bob_pub = x25519.public_key(bob)
    assert alice_pub.hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    assert bob_pub.hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert x25519.x25519(alice, bob_pub).hex() == shared == x25519.x25519(bob, alice_pub).hex()


@pytest.mark.parametrize("_unused", range(25))
def test_matches_cryptography(_unused: int) -> None:
    scalar = os.urandom(32)
    theirs = X25519PrivateKey.from_private_bytes(scalar).public_key().public_bytes_raw()
    assert x25519.public_key(scalar) == theirs
    peer = X25519PrivateKey.generate()
    peer_pub = peer.public_key().public_bytes_raw()
    assert x25519.x25519(scalar, peer_pub) == X25519PrivateKey.from_private_bytes(scalar).exchange(
        X25519PublicKey.from_public_bytes(peer_pub)
    )


def test_recipient_matches_age_module() -> None:
    identity = age.generate_identity()
    scalar = age.bech32_decode(identity)[1]
    assert age.recipient_from_public_bytes(x25519.public_key(scalar)) == age.recipient_from_identity(identity)


def test_unclamped_ssh_to_age_scalar() -> None:
    # ssh-to-age stores SHA-512(seed)[:32] unclamped; X25519 clamps on use, as cryptography does.
    scalar = age.x25519_scalar_from_ed25519_seed(os.urandom(32))
    theirs = X25519PrivateKey.from_private_bytes(scalar).public_key().public_bytes_raw()
    assert x25519.public_key(scalar) == theirs


def test_rejects_wrong_lengths() -> None:
    with pytest.raises(ValueError):
        x25519.x25519(b"\x00" * 31, x25519.BASE_POINT)
