# Copyright: nixfleet.sops contributors
# MIT License
"""age keys: identities, recipients, bech32 and the ssh-to-age conversion.

Vocabulary used across the collection: a *recipient* is an ``age1…`` public
key, an *identity* is an ``AGE-SECRET-KEY-1…`` private key.

Errors never contain key material: they say what kind of input was wrong and
where (file, line), not what it contained.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .errors import AgeKeyError
from .openssh import ED25519, KEY_TYPES, MalformedKeyError, parse_private_key
from .openssh import ED25519_ONLY as _ED25519_ONLY
from .openssh import parse_public_key as parse_ssh_public_key
from .openssh import read_string as _read_string  # noqa: F401 (the old name, kept importable)
from .x25519 import public_key as _x25519_public_key

RECIPIENT_HRP = "age"
IDENTITY_HRP = "age-secret-key-"
_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)

# The OpenSSH key types and their human names live in openssh.py (the one parser); these names stay
# importable from here for the callers that know them from age.py.
SSH_KEY_TYPES = KEY_TYPES


_SECRET_PATTERNS = (
    re.compile(r"AGE-SECRET-KEY-1[0-9A-Za-z]*"),
    re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|$)", re.S),
)


def redact(text: str) -> str:
    """Replace anything that looks like private key material in ``text`` with ``<redacted>``.

    The last line of defence for messages that quote user input (a key pasted
    into the wrong place of ``.sops.yaml`` must not end up in task output).
    """
    for pat in _SECRET_PATTERNS:
        text = pat.sub("<redacted>", text)
    return text


# --------------------------------------------------------------------------- bech32
def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= _GENERATOR[i] if ((top >> i) & 1) else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]


def _convertbits(data: bytes | list[int], frombits: int, tobits: int, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    ret: list[int] = []
    maxv = (1 << tobits) - 1
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            ret.append((acc >> bits) & maxv)
    if pad:
        if bits:
            ret.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or ((acc << (tobits - bits)) & maxv):
        raise AgeKeyError("invalid padding in bech32 data")
    return ret


def bech32_encode(hrp: str, data: bytes) -> str:
    """Encode ``data`` as bech32 (BIP-173, no length limit, as age does), lower case."""
    values = _convertbits(data, 8, 5, True)
    polymod = _polymod(_hrp_expand(hrp) + values + [0] * 6) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in values + checksum)


def bech32_decode(text: str) -> tuple[str, bytes]:
    """Decode a bech32 string into (hrp, data); raise AgeKeyError on any defect."""
    if text.lower() != text and text.upper() != text:
        raise AgeKeyError("mixed upper and lower case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise AgeKeyError("not a bech32 string (separator '1' missing or data too short)")
    hrp, rest = text[:pos], text[pos + 1 :]
    if any(ord(c) < 33 or ord(c) > 126 for c in hrp):
        raise AgeKeyError("invalid characters before the separator")
    bad = sorted({c for c in rest if c not in _CHARSET})
    if bad:
        raise AgeKeyError(f"characters not allowed in bech32: {''.join(bad)!r}")
    values = [_CHARSET.index(c) for c in rest]
    if _polymod(_hrp_expand(hrp) + values) != 1:
        raise AgeKeyError("bech32 checksum does not match (a character is wrong or missing)")
    return hrp, bytes(_convertbits(values[:-6], 5, 8, False))


# --------------------------------------------------------------------------- recipients / identities
def validate_recipient(recipient: str) -> str:
    """Return ``recipient`` stripped if it is a valid X25519 ``age1…`` recipient.

    Raises AgeKeyError saying what is wrong (prefix, checksum, length). A raw
    ``ssh-ed25519`` key gets a hint to convert it, since that is the most
    common mistake in ``.sops.yaml``.
    """
    if not isinstance(recipient, str):
        raise AgeKeyError(f"an age recipient must be a string, got {type(recipient).__name__}")
    r = recipient.strip()
    if r.startswith("ssh-"):
        raise AgeKeyError(
            "an SSH public key is not an age recipient sops-nix can use: convert it "
            "(nixfleet.sops.ssh_to_age) to its age1… form"
        )
    if not r.lower().startswith("age1"):
        raise AgeKeyError(f"an age recipient starts with 'age1', this one starts with {r[:4]!r}")
    if r != r.lower():
        raise AgeKeyError("an age recipient must be lower case")
    try:
        hrp, data = bech32_decode(r)
    except AgeKeyError as exc:
        raise AgeKeyError(f"invalid age recipient {r}: {exc}") from None
    if hrp != RECIPIENT_HRP:
        raise AgeKeyError(f"invalid age recipient {r}: wrong prefix {hrp!r}")
    if len(data) != 32:
        raise AgeKeyError(f"invalid age recipient {r}: {len(data)} bytes of key, expected 32")
    return r


def _identity_bytes(identity: str) -> bytes:
    ident = identity.strip()
    if not ident.upper().startswith("AGE-SECRET-KEY-1"):
        if ident.upper().startswith("AGE-PLUGIN-"):
            raise AgeKeyError("age plugin identities are not supported")
        raise AgeKeyError("an age identity starts with 'AGE-SECRET-KEY-1'")
    try:
        hrp, data = bech32_decode(ident)
    except AgeKeyError as exc:
        # The message from bech32 never quotes the input, so it is safe here.
        raise AgeKeyError(f"invalid age identity: {exc}") from None
    if hrp != IDENTITY_HRP:
        raise AgeKeyError("invalid age identity: wrong prefix")
    if len(data) != 32:
        raise AgeKeyError(f"invalid age identity: {len(data)} bytes of key, expected 32")
    return data


def validate_identity(identity: str) -> str:
    """Return the identity normalised (upper case, stripped) or raise AgeKeyError."""
    _identity_bytes(identity)
    return identity.strip().upper()


def identity_from_scalar(scalar: bytes) -> str:
    """Encode a 32-byte X25519 scalar as an ``AGE-SECRET-KEY-1…`` identity."""
    if len(scalar) != 32:
        raise AgeKeyError("an X25519 private key is 32 bytes")
    return bech32_encode(IDENTITY_HRP, scalar).upper()


def recipient_from_public_bytes(public: bytes) -> str:
    """Encode a 32-byte X25519 public key as an ``age1…`` recipient."""
    if len(public) != 32:
        raise AgeKeyError("an X25519 public key is 32 bytes")
    return bech32_encode(RECIPIENT_HRP, public)


def recipient_from_identity(identity: str) -> str:
    """Derive the ``age1…`` recipient of an identity."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    scalar = _identity_bytes(identity)
    public = X25519PrivateKey.from_private_bytes(scalar).public_key().public_bytes_raw()
    return recipient_from_public_bytes(public)


def generate_identity() -> str:
    """A new random X25519 identity, as age-keygen makes it."""
    import os

    return identity_from_scalar(os.urandom(32))


def format_identity_file(identity: str, created: str | None = None, stamp: bool = True) -> str:
    """The text of a key file in age-keygen's layout (comments, then the identity).

    ``stamp=False`` leaves out the creation date, so the same identity always
    gives the same bytes (staged copies must not differ from run to run).
    """
    import datetime

    lines = []
    if stamp:
        when = created or datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()
        lines.append(f"# created: {when.replace('+00:00', 'Z')}")
    lines.append(f"# public key: {recipient_from_identity(identity)}")
    lines.append(validate_identity(identity))
    return "\n".join(lines) + "\n"


def parse_identities(text: str, source: str = "<input>") -> list[str]:
    """Parse a key file in age-keygen format: comments, blank lines, several keys, CRLF.

    Returns the identities in order. An empty file, or a line that is neither
    a comment nor an identity, raises AgeKeyError naming ``source`` and the line
    number (never the line's content).
    """
    identities: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(validate_identity(line))
        except AgeKeyError as exc:
            raise AgeKeyError(f"{source}, line {number}: {exc}") from None
    if not identities:
        raise AgeKeyError(f"{source}: no age identity found (the file is empty or has only comments)")
    return identities


def read_identity_file(path: str) -> list[str]:
    """Read and parse an age identity file (see parse_identities)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError:
        raise AgeKeyError(f"{path}: not a text file, expected an age key file") from None
    except OSError as exc:
        raise AgeKeyError(f"{path}: cannot read key file: {exc.strerror}") from None
    return parse_identities(text, source=path)


# --------------------------------------------------------------------------- ssh-to-age
_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P


def _ed25519_to_x25519_public(pk: bytes) -> bytes:
    """Birational map from the Edwards y coordinate to Montgomery u = (1+y)/(1-y).

    The point must decode on the curve (as filippo.io/edwards25519 and
    libsodium require); an invalid point is refused, not converted to garbage.
    """
    if len(pk) != 32:
        raise AgeKeyError(f"an ed25519 public key is 32 bytes, this one has {len(pk)}")
    y = int.from_bytes(pk, "little") & ((1 << 255) - 1)
    if y >= _P:
        raise AgeKeyError("the ed25519 public key is not canonical")
    y2 = y * y % _P
    num = (y2 - 1) % _P
    den = (_D * y2 + 1) % _P
    x2 = num * pow(den, _P - 2, _P) % _P
    if x2 != 0 and pow(x2, (_P - 1) // 2, _P) != 1:
        raise AgeKeyError("the ed25519 public key is not a point on the curve")
    if y == 1:
        raise AgeKeyError("the ed25519 public key is the identity point")
    u = (1 + y) * pow((1 - y) % _P, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


def ssh_public_key_to_recipient(text: str) -> str:
    """ssh-to-age for public keys: an ed25519 SSH public key line to an ``age1…`` recipient.

    Accepts a bare key, an authorized_keys line (options allowed) or a
    known_hosts line. RSA, ECDSA, DSA and FIDO keys are refused: sops-nix
    cannot use them as age keys.
    """
    return recipient_from_public_bytes(_ed25519_to_x25519_public(parse_ssh_public_key(text).ed25519))


@dataclass(frozen=True)
class Ed25519Private:
    """The parts of an OpenSSH ed25519 private key that the collection needs."""

    seed: bytes
    public: bytes
    comment: str

    def __repr__(self) -> str:  # the seed is the private key: keep it out of tracebacks and logs
        return f"Ed25519Private(comment={self.comment!r})"


def load_ssh_private_key(data: bytes | str, passphrase: bytes | str | None = None) -> Ed25519Private:
    """Load an OpenSSH (or PKCS#8 PEM) private key and insist that it is ed25519.

    The key is parsed by the standard-library parser (openssh.py); only a
    passphrase-protected key needs ``cryptography`` (to decrypt it), and a
    PKCS#8 key (to derive the public half it does not store). The seed
    must give the public key the file states (a corrupt key is refused, not
    registered under a recipient it cannot open). Raises AgeKeyError for
    encrypted keys without (or with a wrong) passphrase, other key types, and
    anything that does not parse. Never echoes the input.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if isinstance(passphrase, str):
        passphrase = passphrase.encode("utf-8")
    try:
        key = parse_private_key(data)
    except MalformedKeyError as exc:
        raise AgeKeyError(f"the SSH private key does not parse ({exc.message})") from None
    if key.keytype and key.keytype != ED25519:
        raise AgeKeyError(f"{key.kind} private key: {_ED25519_ONLY}")
    if key.encrypted:
        if not passphrase:
            raise AgeKeyError("the SSH private key is encrypted: give its passphrase")
        seed, public = _decrypt_ssh_private_key(data.strip(), passphrase, key.container)
        return Ed25519Private(seed=seed, public=public, comment="")
    if passphrase:
        raise AgeKeyError("a passphrase was given but the SSH private key is not encrypted")
    assert key.seed is not None
    public = key.public
    if public is not None and ssh_seed_recipient(key.seed) != recipient_from_public_bytes(
            _ed25519_to_x25519_public(public)):
        raise AgeKeyError("the SSH private key is corrupt (its private and public halves disagree)")
    if public is None:  # PKCS#8 stores no public key: derive it
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        public = Ed25519PrivateKey.from_private_bytes(key.seed).public_key().public_bytes_raw()
    return Ed25519Private(seed=key.seed, public=public, comment=key.comment)


def _decrypt_ssh_private_key(pem: bytes, passphrase: bytes, container: str) -> tuple[bytes, bytes]:
    """(seed, public) of a passphrase-protected ed25519 key; the controller's crypto does the decryption."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        if container == "openssh":
            key = serialization.load_ssh_private_key(pem, password=passphrase)
        else:
            key = serialization.load_pem_private_key(pem, password=passphrase)
    except (TypeError, ValueError):
        raise AgeKeyError("cannot decrypt the SSH private key: wrong passphrase") from None
    except Exception:  # UnsupportedAlgorithm and friends: never echo the key
        raise AgeKeyError(f"cannot load the SSH private key: {_ED25519_ONLY}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise AgeKeyError(f"{type(key).__name__.replace('PrivateKey', '')} private key: {_ED25519_ONLY}")
    return key.private_bytes_raw(), key.public_key().public_bytes_raw()


def _openssh_comment(pem: bytes, passphrase: bytes | None) -> str:
    """The comment stored inside an unencrypted OpenSSH key ('' when not readable)."""
    if passphrase:
        return ""
    try:
        return parse_private_key(pem).comment
    except AgeKeyError:
        return ""


def ssh_seed_recipient(seed: bytes) -> str:
    """The ``age1…`` recipient of an ed25519 seed: X25519 of ssh-to-age's private conversion.

    Pure Python (x25519.py), so the target-side verifier can use it too.
    """
    return recipient_from_public_bytes(_x25519_public_key(x25519_scalar_from_ed25519_seed(seed)))


def x25519_scalar_from_ed25519_seed(seed: bytes) -> bytes:
    """ssh-to-age's private conversion: the first half of SHA-512(seed), not clamped.

    This is byte-for-byte what ssh-to-age (and so sops-nix) writes; X25519
    clamps on use, so it is the same key libsodium's clamped form describes.
    """
    return hashlib.sha512(seed).digest()[:32]


def ssh_private_key_to_identity(data: bytes | str, passphrase: bytes | str | None = None) -> str:
    """ssh-to-age for private keys: an OpenSSH ed25519 private key to an ``AGE-SECRET-KEY-1…`` identity."""
    key = load_ssh_private_key(data, passphrase)
    return identity_from_scalar(x25519_scalar_from_ed25519_seed(key.seed))


def ssh_private_key_to_recipient(data: bytes | str, passphrase: bytes | str | None = None) -> str:
    """The ``age1…`` recipient of an OpenSSH ed25519 private key (via its public half)."""
    key = load_ssh_private_key(data, passphrase)
    return recipient_from_public_bytes(_ed25519_to_x25519_public(key.public))
