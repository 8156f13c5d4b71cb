# Copyright: nixfleet.sops contributors
# MIT License
"""The native age recipient types, at the level of one stanza (c2sp.org/age).

* ``X25519`` - the classic age key.
* ``mlkem768x25519`` - the post-quantum hybrid of age 1.3: HPKE (RFC 9180,
  base mode) with the MLKEM768-X25519 KEM (X-Wing), HKDF-SHA256 and
  ChaCha20-Poly1305, info ``age-encryption.org/mlkem768x25519``.
* ``scrypt`` - passphrase-protected files (``age -p``), used here for
  passphrase-protected identity files.

Each ``wrap_*`` turns a 16-byte file key into a stanza; each ``unwrap_*``
returns the file key or None when the stanza is not for that key. Controller
side only (``cryptography``); key material never appears in an error.
"""

from __future__ import annotations

import hashlib
import os
import struct

from .age import PQ_PUBLIC_SIZE, AgeKeyError
from .agefile import FILE_KEY_SIZE, Stanza, aead_open, aead_seal, b64decode, b64encode, hkdf
from .module_support import note_missing_lib

# Guarded: without the library, modules fail with missing_required_lib (module_support.require_libs).
try:
    from cryptography.hazmat.primitives.asymmetric import mlkem
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
except ImportError:
    note_missing_lib("cryptography")

X25519_TYPE = "X25519"
PQ_TYPE = "mlkem768x25519"
SCRYPT_TYPE = "scrypt"
_X25519_INFO = b"age-encryption.org/v1/X25519"
_PQ_INFO = b"age-encryption.org/mlkem768x25519"
_SCRYPT_SALT = b"age-encryption.org/v1/scrypt"
_SCRYPT_MAX_LOG_N = 22  # age's default limit when decrypting: ~4 GiB of work, 4 s
_XWING_LABEL = b"\\.//^\\"
_MLKEM_PUBLIC = 1184
_MLKEM_CIPHERTEXT = 1088
_PQ_ENC = _MLKEM_CIPHERTEXT + 32
# HPKE suite: KEM MLKEM768-X25519 (0x647a), KDF HKDF-SHA256 (0x0001), AEAD ChaCha20Poly1305 (0x0003).
_HPKE_SUITE = b"HPKE" + struct.pack(">HHH", 0x647A, 0x0001, 0x0003)


# --------------------------------------------------------------------------- X25519
def _x25519(scalar: bytes, point: bytes) -> bytes:
    shared = X25519PrivateKey.from_private_bytes(scalar).exchange(X25519PublicKey.from_public_bytes(point))
    if shared == bytes(32):
        # cryptography already refuses low-order points; kept as age's explicit check.
        raise AgeKeyError("X25519 produced the all-zero shared secret (a low-order point)")
    return shared


def _x25519_base(scalar: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(scalar).public_key().public_bytes_raw()


def wrap_x25519(file_key: bytes, public: bytes) -> Stanza:
    """``-> X25519 <ephemeral share>`` wrapping ``file_key`` to a 32-byte X25519 public key."""
    # One ephemeral key object for both the share and the exchange (a fleet rekey wraps tens of
    # thousands of these: building it twice from bytes was half the cost).
    eph = X25519PrivateKey.generate()
    share = eph.public_key().public_bytes_raw()
    shared = eph.exchange(_public_key(public))
    if shared == bytes(32):
        raise AgeKeyError("X25519 produced the all-zero shared secret (a low-order point)")
    key = hkdf(shared, share + public, _X25519_INFO)
    return Stanza(X25519_TYPE, (b64encode(share),), aead_seal(key, file_key))


_PUBLIC_KEYS: dict[bytes, X25519PublicKey] = {}


def _public_key(public: bytes) -> X25519PublicKey:
    key = _PUBLIC_KEYS.get(public)
    if key is None:
        key = X25519PublicKey.from_public_bytes(public)
        if len(_PUBLIC_KEYS) < 100_000:
            _PUBLIC_KEYS[public] = key
    return key


def unwrap_x25519(stanza: Stanza, scalar: bytes, public: bytes) -> bytes | None:
    """The file key of an X25519 stanza for ``scalar`` (whose public key is ``public``), or None."""
    if stanza.type != X25519_TYPE:
        return None
    if len(stanza.args) != 1:
        raise AgeKeyError("invalid X25519 stanza (wrong number of arguments)")
    share = b64decode(stanza.args[0])
    if len(share) != 32:
        raise AgeKeyError("invalid X25519 stanza (ephemeral share is not 32 bytes)")
    try:
        shared = _x25519(scalar, share)
    except (AgeKeyError, ValueError):
        return None
    return aead_open(hkdf(shared, share + public, _X25519_INFO), stanza.body)


# --------------------------------------------------------------------------- post-quantum hybrid
class PQKey:
    """An MLKEM768-X25519 (X-Wing) decapsulation key expanded from its 32-byte seed."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise AgeKeyError("a post-quantum age identity holds a 32-byte seed")
        expanded = hashlib.shake_256(seed).digest(96)
        self._mlkem = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
        self._x = expanded[64:]
        self.public = self._mlkem.public_key().public_bytes_raw() + _x25519_base(self._x)

    def __repr__(self) -> str:
        return "PQKey(<secret>)"

    def decapsulate(self, enc: bytes) -> bytes:
        """The KEM shared secret for an encapsulated key (ML-KEM's implicit rejection: never raises)."""
        ct_m, ct_x = enc[:_MLKEM_CIPHERTEXT], enc[_MLKEM_CIPHERTEXT:]
        ss_m = self._mlkem.decapsulate(ct_m)
        try:
            ss_x = _x25519(self._x, ct_x)
        except (AgeKeyError, ValueError):
            ss_x = bytes(32)  # a bad share only makes the AEAD fail, as in the reference
        return _xwing_combine(ss_m, ss_x, ct_x, self.public[_MLKEM_PUBLIC:])


def pq_public_key(seed: bytes) -> bytes:
    """The 1216-byte recipient key of a post-quantum identity seed."""
    return PQKey(seed).public


def _xwing_combine(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + _XWING_LABEL).digest()


def _xwing_encapsulate(public: bytes) -> tuple[bytes, bytes]:
    if len(public) != PQ_PUBLIC_SIZE:
        raise AgeKeyError("a post-quantum age recipient is 1216 bytes")
    pk_m, pk_x = public[:_MLKEM_PUBLIC], public[_MLKEM_PUBLIC:]
    try:
        ss_m, ct_m = mlkem.MLKEM768PublicKey.from_public_bytes(pk_m).encapsulate()
    except ValueError:
        raise AgeKeyError("invalid post-quantum age recipient (the ML-KEM key is malformed)") from None
    eph = os.urandom(32)
    ct_x = _x25519_base(eph)
    ss_x = _x25519(eph, pk_x)
    return _xwing_combine(ss_m, ss_x, ct_x, pk_x), ct_m + ct_x


def _labeled_extract(salt: bytes, label: bytes, ikm: bytes) -> bytes:
    import hmac

    return hmac.new(salt or bytes(32), b"HPKE-v1" + _HPKE_SUITE + label + ikm, "sha256").digest()


def _labeled_expand(prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

    full = struct.pack(">H", length) + b"HPKE-v1" + _HPKE_SUITE + label + info
    return HKDFExpand(hashes.SHA256(), length, full).derive(prk)


def _hpke_key(shared: bytes, info: bytes) -> tuple[bytes, bytes]:
    """RFC 9180 KeySchedule, base mode (no PSK): (AEAD key, base nonce)."""
    context = b"\x00" + _labeled_extract(b"", b"psk_id_hash", b"") + _labeled_extract(b"", b"info_hash", info)
    secret = _labeled_extract(shared, b"secret", b"")
    return _labeled_expand(secret, b"key", context, 32), _labeled_expand(secret, b"base_nonce", context, 12)


def wrap_pq(file_key: bytes, public: bytes) -> Stanza:
    """``-> mlkem768x25519 <enc>``: HPKE SealBase of ``file_key`` to a 1216-byte hybrid public key."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    shared, enc = _xwing_encapsulate(public)
    key, nonce = _hpke_key(shared, _PQ_INFO)
    return Stanza(PQ_TYPE, (b64encode(enc),), ChaCha20Poly1305(key).encrypt(nonce, file_key, b""))


def unwrap_pq(stanza: Stanza, key: PQKey) -> bytes | None:
    """The file key of an mlkem768x25519 stanza for ``key``, or None when it is for another key."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    if stanza.type != PQ_TYPE:
        return None
    if len(stanza.args) != 1:
        raise AgeKeyError("invalid mlkem768x25519 stanza (wrong number of arguments)")
    enc = b64decode(stanza.args[0])
    if len(enc) != _PQ_ENC:
        raise AgeKeyError("invalid mlkem768x25519 stanza (encapsulated key of the wrong size)")
    if len(stanza.body) != FILE_KEY_SIZE + 16:
        return None
    aead_key, nonce = _hpke_key(key.decapsulate(enc), _PQ_INFO)
    try:
        return ChaCha20Poly1305(aead_key).decrypt(nonce, stanza.body, b"")
    except InvalidTag:
        return None


# --------------------------------------------------------------------------- scrypt (passphrases)
def _scrypt_key(passphrase: bytes, salt: bytes, log_n: int) -> bytes:
    return Scrypt(salt=_SCRYPT_SALT + salt, length=32, n=1 << log_n, r=8, p=1).derive(passphrase)


def wrap_scrypt(file_key: bytes, passphrase: bytes, log_n: int = 18) -> Stanza:
    """``-> scrypt <salt> <log2 N>``, as ``age -p`` writes it (work factor 18 by default)."""
    salt = os.urandom(16)
    return Stanza(SCRYPT_TYPE, (b64encode(salt), str(log_n)), aead_seal(_scrypt_key(passphrase, salt, log_n), file_key))


def unwrap_scrypt(stanza: Stanza, passphrase: bytes) -> bytes | None:
    """The file key of a scrypt stanza, or None for a wrong passphrase."""
    if stanza.type != SCRYPT_TYPE:
        return None
    if len(stanza.args) != 2 or not stanza.args[1].isdigit() or stanza.args[1].startswith("0"):
        raise AgeKeyError("invalid scrypt stanza")
    salt, log_n = b64decode(stanza.args[0]), int(stanza.args[1])
    if len(salt) != 16:
        raise AgeKeyError("invalid scrypt stanza (salt is not 16 bytes)")
    if log_n > _SCRYPT_MAX_LOG_N:
        raise AgeKeyError(f"the passphrase-protected file asks for scrypt work factor {log_n}, over age's limit of "
                          f"{_SCRYPT_MAX_LOG_N}")
    return aead_open(_scrypt_key(passphrase, salt, log_n), stanza.body)
