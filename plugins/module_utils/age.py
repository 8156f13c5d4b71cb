# Copyright: nixfleet.sops contributors
# MIT License
"""age keys: identities, recipients, bech32, the registry of key types and the ssh-to-age conversion.

Vocabulary used across the collection: a *recipient* is an ``age1…`` public
key, an *identity* is an ``AGE-SECRET-KEY-1…`` private key. Every kind sops
3.11 accepts is known here (KEY_TYPES): X25519, post-quantum hybrid
(``age1pq1…`` / ``AGE-SECRET-KEY-PQ-1…``), SSH ed25519 and RSA, age plugins
(``age1<name>1…`` / ``AGE-PLUGIN-<NAME>-1…``).

Standard library only: the target-side verifier imports this module. What
needs ``cryptography`` imports it inside the function.

Errors never contain key material: they say what kind of input was wrong and
where (file, line), not what it contained.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
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
    # A key has dozens of characters after the separator; the bare prefix (in a hint) is no secret.
    re.compile(r"AGE-SECRET-KEY-(?:PQ-)?1[0-9A-Za-z]{8,}"),
    re.compile(r"AGE-PLUGIN-[A-Z0-9-]+1[0-9A-Za-z]{8,}"),
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
def _generator_table() -> list[int]:
    table = []
    for top in range(32):
        g = 0
        for i in range(5):
            g ^= _GENERATOR[i] if (top >> i) & 1 else 0
        table.append(g)
    return table


# BIP-173's generator folded per 5-bit value: one lookup per character instead of five tests.
_GEN_TABLE = _generator_table()


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        chk = ((chk & 0x1FFFFFF) << 5) ^ v ^ _GEN_TABLE[chk >> 25]
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


# --------------------------------------------------------------------------- key types
X25519 = "x25519"
PQ = "pq"
SSH_ED25519 = "ssh-ed25519"
SSH_RSA = "ssh-rsa"
PLUGIN = "plugin"
PQ_RECIPIENT_HRP = "age1pq"
PQ_IDENTITY_HRP = "age-secret-key-pq-"
PQ_PUBLIC_SIZE = 1216  # ML-KEM-768 encapsulation key (1184) + X25519 public key (32)
_PLUGIN_NAME = re.compile(r"^[A-Za-z0-9._+-]+$")


@dataclass(frozen=True)
class KeyType:
    """One kind of age key, as sops 3.11 (age 1.3) knows it.

    ``host_usable`` says whether sops-nix can decrypt with it on a host from
    ``sops.age.keyFile`` / ``sops.age.sshKeyPaths`` alone (no plugin binary,
    no conversion step).
    """

    kind: str
    description: str
    recipient_example: str
    identity_example: str
    host_usable: bool


KEY_TYPES: dict[str, KeyType] = {
    X25519: KeyType(X25519, "age X25519", "age1…", "AGE-SECRET-KEY-1…", True),
    PQ: KeyType(PQ, "age post-quantum hybrid (ML-KEM-768 + X25519, age 1.3)", "age1pq1…", "AGE-SECRET-KEY-PQ-1…",
                True),
    SSH_ED25519: KeyType(SSH_ED25519, "SSH ed25519 (as sops uses it; sops-nix needs its age1… form)",
                         "ssh-ed25519 AAAA…", "an OpenSSH ed25519 private key", False),
    SSH_RSA: KeyType(SSH_RSA, "SSH RSA (sops only; sops-nix cannot convert it)", "ssh-rsa AAAA…",
                     "an OpenSSH or PEM RSA private key", False),
    PLUGIN: KeyType(PLUGIN, "age plugin (needs the age-plugin-<name> binary)", "age1<name>1…",
                    "AGE-PLUGIN-<NAME>-1…", False),
}


def key_type(kind: str) -> KeyType:
    """The registry entry of a kind as returned by recipient_kind/identity_kind (``plugin:<name>`` included)."""
    return KEY_TYPES[PLUGIN if kind.startswith(PLUGIN + ":") else kind]


def _bech32(text: str, what: str) -> tuple[str, bytes]:
    try:
        return bech32_decode(text)
    except AgeKeyError as exc:
        raise AgeKeyError(f"invalid {what}: {exc}") from None


def _plugin_name(name: str, what: str) -> str:
    if not name or not _PLUGIN_NAME.match(name):
        raise AgeKeyError(f"invalid {what}: the plugin name may only hold letters, digits and - _ . +")
    return name


def recipient_kind(recipient: str) -> str:
    """The kind of a valid recipient: ``x25519``, ``pq``, ``ssh-ed25519``, ``ssh-rsa`` or ``plugin:<name>``.

    Decided as sops 3.11 does (``age1pq1`` first, then ``age1…1…`` is a
    plugin, then X25519, then ``ssh-``). Raises AgeKeyError with the same clear
    messages as validate_recipient.
    """
    return _recipient(recipient)[1]


def validate_recipient(recipient: str) -> str:
    """Return ``recipient`` stripped if sops can encrypt to it; raise AgeKeyError saying what is wrong.

    Accepts X25519 ``age1…``, post-quantum ``age1pq1…``, plugin ``age1<name>1…``
    and ``ssh-ed25519`` / ``ssh-rsa`` public keys. Other SSH key types get a hint
    to convert the host's ed25519 key, the most common mistake in ``.sops.yaml``.
    """
    return _recipient(recipient)[0]


# Recipients already found valid, with their kind: a fleet of 2,000 hosts names each of them several times.
_VALID_RECIPIENTS: dict[str, tuple[str, str]] = {}


def _recipient(recipient: str) -> tuple[str, str]:
    if not isinstance(recipient, str):
        raise AgeKeyError(f"an age recipient must be a string, got {type(recipient).__name__}")
    known = _VALID_RECIPIENTS.get(recipient)
    if known is not None:
        return known
    found = _check_recipient(recipient)
    if len(_VALID_RECIPIENTS) < 100_000:
        _VALID_RECIPIENTS[recipient] = found
    return found


def _check_recipient(recipient: str) -> tuple[str, str]:
    r = recipient.strip()
    if r.startswith(("ssh-", "ecdsa-", "sk-")):
        return _ssh_recipient(r)
    if not r.lower().startswith("age1"):
        raise AgeKeyError(f"an age recipient starts with 'age1', this one starts with {r[:4]!r}")
    if r != r.lower():
        raise AgeKeyError("an age recipient must be lower case")
    hrp, data = _bech32(r, f"age recipient {r}")
    if hrp == PQ_RECIPIENT_HRP:
        if len(data) != PQ_PUBLIC_SIZE:
            raise AgeKeyError(
                f"invalid post-quantum age recipient: {len(data)} bytes of key, expected {PQ_PUBLIC_SIZE}")
        return r, PQ
    if hrp.startswith(RECIPIENT_HRP + "1") and len(hrp) > len(RECIPIENT_HRP) + 1:
        # age1<name>1…: the bech32 separator is the last '1', so the plugin name is between.
        return r, f"{PLUGIN}:{_plugin_name(hrp[len(RECIPIENT_HRP) + 1:], f'age plugin recipient {r}')}"
    if hrp != RECIPIENT_HRP:
        raise AgeKeyError(f"invalid age recipient {r}: wrong prefix {hrp!r}")
    if len(data) != 32:
        raise AgeKeyError(f"invalid age recipient {r}: {len(data)} bytes of key, expected 32")
    return r, X25519


def _ssh_recipient(r: str) -> tuple[str, str]:
    keytype = r.split()[0]
    convert = "sops-nix needs its converted age1… form: convert it (nixfleet.sops.ssh_to_age)"
    if keytype not in (SSH_ED25519, SSH_RSA):
        what = SSH_KEY_TYPES.get(keytype, keytype)
        raise AgeKeyError(f"a {what} SSH public key is not a recipient sops or age can encrypt to; {_ED25519_ONLY}")
    try:
        parsed_type, blob, _unused = parse_ssh_public_key(r)
        if parsed_type != keytype:
            raise AgeKeyError(f"the line starts with {keytype} but holds a {parsed_type} key")
        _ssh_key_fields(keytype, blob)
    except AgeKeyError as exc:
        raise AgeKeyError(f"invalid SSH public key as a recipient: {exc}; {convert}") from None
    return " ".join(r.split()[:3]), keytype


def _ssh_key_fields(keytype: str, blob: bytes) -> None:
    """Check the key blob holds exactly what its type needs (age refuses RSA under 2048 bits)."""
    _unused, off = _read_string(blob, 0)
    if keytype == SSH_ED25519:
        key, off = _read_string(blob, off)
        if len(key) != 32:
            raise AgeKeyError("the ed25519 key is not 32 bytes")
    else:
        _unused, off = _read_string(blob, off)  # e
        n, off = _read_string(blob, off)
        if int.from_bytes(n, "big").bit_length() < 2048:
            raise AgeKeyError("the RSA key is shorter than 2048 bits, which age refuses")
    if off != len(blob):
        raise AgeKeyError("extra data after the key")


def identity_kind(identity: str) -> str:
    """The kind of an identity text: ``x25519``, ``pq``, ``plugin:<name>`` for age key lines;
    ``ssh-ed25519`` / ``ssh-rsa`` for SSH private keys (encrypted or not); ``scrypt`` for an
    armored passphrase-protected age identity file. Raises AgeKeyError (never quoting the key).
    """
    text = identity.strip() if isinstance(identity, str) else ""
    if text.startswith("-----BEGIN AGE ENCRYPTED FILE-----"):
        return "scrypt"
    if text.startswith("-----BEGIN"):
        return _ssh_private_kind(text)
    return _identity(text)[0]


def _identity(identity: str) -> tuple[str, bytes]:
    ident = identity.strip()
    upper = ident.upper()
    if upper.startswith("AGE-PLUGIN-"):
        hrp, data = _bech32(ident, "age plugin identity")
        if not hrp.endswith("-") or len(hrp) <= len("age-plugin--"):
            raise AgeKeyError("invalid age plugin identity: expected AGE-PLUGIN-<NAME>-1…")
        return f"{PLUGIN}:{_plugin_name(hrp[len('age-plugin-'):-1], 'age plugin identity')}", data
    if upper.startswith("AGE-SECRET-KEY-PQ-1"):
        hrp, data = _bech32(ident, "post-quantum age identity")
        if hrp != PQ_IDENTITY_HRP or len(data) != 32:
            raise AgeKeyError(f"invalid post-quantum age identity: {len(data)} bytes of key, expected 32")
        return PQ, data
    if not upper.startswith("AGE-SECRET-KEY-1"):
        raise AgeKeyError("an age identity starts with 'AGE-SECRET-KEY-1', 'AGE-SECRET-KEY-PQ-1' or 'AGE-PLUGIN-'")
    # The message from bech32 never quotes the input, so it is safe here.
    hrp, data = _bech32(ident, "age identity")
    if hrp != IDENTITY_HRP:
        raise AgeKeyError("invalid age identity: wrong prefix")
    if len(data) != 32:
        raise AgeKeyError(f"invalid age identity: {len(data)} bytes of key, expected 32")
    return X25519, data


def _identity_bytes(identity: str) -> bytes:
    """The 32-byte scalar of an X25519 identity (other kinds are refused)."""
    kind, data = _identity(identity)
    if kind != X25519:
        raise AgeKeyError(
            f"an X25519 identity (AGE-SECRET-KEY-1…) is needed here, not a {key_type(kind).description} one")
    return data


def _ssh_private_kind(pem: str) -> str:
    """``ssh-ed25519`` or ``ssh-rsa`` from a private key's clear-text parts (works for encrypted keys)."""
    if "-----BEGIN RSA PRIVATE KEY-----" in pem:
        return SSH_RSA
    if "-----BEGIN OPENSSH PRIVATE KEY-----" not in pem:
        raise AgeKeyError("not an OpenSSH private key (only OpenSSH ed25519/RSA and PEM RSA keys are identities)")
    try:
        name = parse_private_key(pem).keytype
    except MalformedKeyError:
        raise AgeKeyError("the OpenSSH private key does not parse (truncated or corrupt)") from None
    if name not in (SSH_ED25519, SSH_RSA):
        raise AgeKeyError(f"a {SSH_KEY_TYPES.get(name, name)} SSH key cannot be an age identity (ed25519 or RSA only)")
    return name


def validate_identity(identity: str, kinds: tuple[str, ...] | None = (X25519,)) -> str:
    """Return the identity normalised (upper case, stripped) or raise AgeKeyError.

    ``kinds`` are the accepted kinds (``plugin`` stands for every plugin);
    None accepts every age key line (X25519, post-quantum, plugin).
    """
    kind, _unused = _identity(identity)
    if kinds is not None and kind not in kinds and not (kind.startswith(PLUGIN + ":") and PLUGIN in kinds):
        if kinds == (X25519,):
            _identity_bytes(identity)
        raise AgeKeyError(f"a {key_type(kind).description} identity cannot be used here")
    return identity.strip().upper()


def plugin_name(key: str) -> str | None:
    """The plugin name of a plugin recipient or identity, else None (never raises)."""
    try:
        kind = recipient_kind(key) if key.strip().lower().startswith("age1") else identity_kind(key)
    except AgeKeyError:
        return None
    return kind.split(":", 1)[1] if kind.startswith(PLUGIN + ":") else None


def encode_plugin_recipient(name: str, data: bytes) -> str:
    """``age1<name>1…``: a plugin recipient (what a plugin's key generator prints)."""
    return bech32_encode(RECIPIENT_HRP + "1" + _plugin_name(name, "plugin name").lower(), data)


def encode_plugin_identity(name: str, data: bytes) -> str:
    """``AGE-PLUGIN-<NAME>-1…``: a plugin identity."""
    return bech32_encode(f"age-plugin-{_plugin_name(name, 'plugin name').lower()}-", data).upper()


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
    """Derive the recipient of an X25519 (``age1…``) or post-quantum (``age1pq1…``) identity.

    Needs ``cryptography`` (imported here, so the module stays importable on
    targets). A plugin identity's recipient is known only to its plugin.
    """
    kind, data = _identity(identity)
    if kind == PQ:
        from .agekeys import pq_public_key

        return bech32_encode(PQ_RECIPIENT_HRP, pq_public_key(data))
    if kind != X25519:
        raise AgeKeyError("the recipient of an age plugin identity is known only to its plugin")
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    public = X25519PrivateKey.from_private_bytes(data).public_key().public_bytes_raw()
    return recipient_from_public_bytes(public)


def generate_identity(kind: str = X25519) -> str:
    """A new random identity as age-keygen makes it: X25519, or post-quantum with ``kind="pq"`` (age-keygen -pq)."""
    import os

    if kind == PQ:
        return bech32_encode(PQ_IDENTITY_HRP, os.urandom(32)).upper()
    if kind != X25519:
        raise AgeKeyError(f"cannot generate a {kind} identity (x25519 or pq)")
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
    lines.append(validate_identity(identity, kinds=None))
    return "\n".join(lines) + "\n"


def parse_identities(
    text: str,
    source: str = "<input>",
    kinds: tuple[str, ...] | None = (X25519,),
    warn: Callable[[str], None] | None = None,
) -> list[str]:
    """Parse a key file in age-keygen format: comments, blank lines, several keys, CRLF.

    Returns the identities in order. ``kinds`` are the kinds the caller can use
    (see validate_identity; None: every age key line). A line that is not one
    of them raises AgeKeyError naming ``source`` and the line number (never
    the line's content) - or, when ``warn`` is given, is skipped and ``warn``
    gets that message, so one odd line does not cost the other keys. A file
    with no usable identity raises in both cases.
    """
    identities: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(validate_identity(line, kinds))
        except AgeKeyError as exc:
            if warn is None:
                raise AgeKeyError(f"{source}, line {number}: {exc}") from None
            warn(f"{source}, line {number}: skipped, {exc}")
    if not identities:
        raise AgeKeyError(f"{source}: no age identity found (the file is empty or has only comments)"
                          if warn is None else f"{source}: no usable age identity found")
    return identities


def read_identity_file(path: str) -> list[str]:
    """Read and parse an age identity file (see parse_identities)."""
    from .fsutil import KEY_FILE_LIMIT, UnsafePathError, read_regular

    try:
        text = read_regular(path, KEY_FILE_LIMIT, "key file").decode("utf-8")
    except UnsafePathError as exc:
        raise AgeKeyError(exc.message) from None
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
    if key.seed is None:
        raise AssertionError("internal error: key.seed is not None does not hold")
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
