# Copyright: nixfleet.sops contributors
# MIT License
"""The age v1 file format (c2sp.org/age): stanzas, header and its MAC, STREAM payload, ASCII armor.

sops stores each data key as one small armored age file per recipient; this
module reads and writes those files whatever the recipient type, so that the
types pyrage lacks (post-quantum, plugins) and the batching of plugin calls
work on the same parsed header. Controller side only: it needs
``cryptography``.

Errors are :class:`AgeFormatError` (an AgeKeyError) and never quote key
material or file contents.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from .age import AgeKeyError
from .module_support import note_missing_lib

# Guarded: without the library, modules fail with missing_required_lib (module_support.require_libs).
try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ImportError:
    note_missing_lib("cryptography")

INTRO = b"age-encryption.org/v1\n"
ARMOR_BEGIN = "-----BEGIN AGE ENCRYPTED FILE-----"
ARMOR_END = "-----END AGE ENCRYPTED FILE-----"
FILE_KEY_SIZE = 16
_COLUMNS = 64
_BYTES_PER_LINE = _COLUMNS // 4 * 3
_CHUNK = 64 * 1024
_TAG = 16
_ZERO_NONCE = bytes(12)


class AgeFormatError(AgeKeyError):
    """An age file (or plugin message) that does not follow the format."""


# --------------------------------------------------------------------------- base64 (raw, canonical)
def b64encode(data: bytes) -> str:
    """Unpadded standard base64, as every age field uses."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def b64decode(text: str) -> bytes:
    """Decode unpadded canonical base64; padding, newlines or a non-canonical tail are refused."""
    if "=" in text or "\n" in text or "\r" in text:
        raise AgeFormatError("base64 with padding or line breaks where age wants none")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise AgeFormatError("invalid base64") from None
    if b64encode(data) != text:
        raise AgeFormatError("non-canonical base64")
    return data


def _valid_arg(arg: str) -> bool:
    return bool(arg) and all(0x21 <= ord(c) <= 0x7E for c in arg)


# --------------------------------------------------------------------------- stanzas
@dataclass(frozen=True)
class Stanza:
    """One recipient stanza: a type, its arguments and a binary body.

    The same text form carries the commands of the plugin protocol.
    """

    type: str
    args: tuple[str, ...] = ()
    body: bytes = field(default=b"", repr=False)

    def encode(self) -> bytes:
        """``-> type args…`` then the body in base64 wrapped at 64 columns, ending with a short line."""
        for a in (self.type, *self.args):
            if not _valid_arg(a):
                raise AgeFormatError("a stanza argument is empty or has characters age does not allow")
        text = b64encode(self.body)
        lines = [text[i : i + _COLUMNS] for i in range(0, len(text), _COLUMNS)]
        if not lines or len(lines[-1]) == _COLUMNS:
            lines.append("")
        return ("-> " + " ".join((self.type, *self.args)) + "\n" + "\n".join(lines) + "\n").encode("ascii")


class LineReader:
    """Lines of a byte buffer or a binary stream (a plugin's stdout), one at a time."""

    def __init__(self, source: bytes | object) -> None:
        self._buf = source if isinstance(source, bytes) else None
        self._pos = 0
        self._stream = None if isinstance(source, bytes) else source

    def readline(self) -> bytes:
        """The next line including its LF; b"" at the end."""
        if self._stream is not None:
            return self._stream.readline()  # type: ignore[attr-defined]
        if self._buf is None:
            raise AssertionError("internal error: self._buf is not None does not hold")
        end = self._buf.find(b"\n", self._pos)
        end = len(self._buf) if end < 0 else end + 1
        line = self._buf[self._pos : end]
        self._pos = end
        return line

    def peek(self, n: int) -> bytes:
        """The next ``n`` bytes without consuming them (buffers only)."""
        if self._buf is None:
            raise AssertionError("internal error: self._buf is not None does not hold")
        return self._buf[self._pos : self._pos + n]

    def rest(self) -> bytes:
        """Everything not read yet (buffers only)."""
        if self._buf is None:
            raise AssertionError("internal error: self._buf is not None does not hold")
        return self._buf[self._pos :]


def read_stanza(reader: LineReader) -> Stanza:
    """Read one stanza; raise AgeFormatError (EOFError at a clean end of input)."""
    line = reader.readline()
    if not line:
        raise EOFError("no more stanzas")
    if not line.endswith(b"\n") or not line.startswith(b"-> "):
        raise AgeFormatError("malformed stanza opening line")
    try:
        args = line[3:-1].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise AgeFormatError("a stanza opening line is not ASCII") from None
    if not args or not all(_valid_arg(a) for a in args):
        raise AgeFormatError("malformed stanza opening line")
    body = b""
    while True:
        raw = reader.readline()
        if not raw.endswith(b"\n"):
            raise AgeFormatError("a stanza body ends without a short line")
        text = raw[:-1].decode("ascii", "replace")
        if len(text) > _COLUMNS:
            raise AgeFormatError("a stanza body line is longer than 64 columns")
        chunk = b64decode(text)
        body += chunk
        if len(text) < _COLUMNS:
            return Stanza(args[0], tuple(args[1:]), body)


# --------------------------------------------------------------------------- armor
def is_armored(data: bytes) -> bool:
    """True when ``data`` is an ASCII-armored age file."""
    return data.lstrip().startswith(ARMOR_BEGIN.encode())


def armor(data: bytes) -> str:
    """ASCII armor: padded base64 in 64-column lines between the BEGIN/END markers."""
    text = base64.b64encode(data).decode("ascii")
    lines = [text[i : i + _COLUMNS] for i in range(0, len(text), _COLUMNS)]
    return "\n".join([ARMOR_BEGIN, *lines, ARMOR_END]) + "\n"


def dearmor(data: bytes) -> bytes:
    """The binary age file inside an armored one (surrounding whitespace and CRLF tolerated)."""
    lines = [ln.strip() for ln in data.decode("ascii", "replace").strip().splitlines()]
    if len(lines) < 2 or lines[0] != ARMOR_BEGIN or lines[-1] != ARMOR_END:
        raise AgeFormatError("not an armored age file (BEGIN/END lines missing)")
    body = lines[1:-1]
    if any(len(ln) > _COLUMNS for ln in body) or any(len(ln) != _COLUMNS for ln in body[:-1]):
        raise AgeFormatError("armored age file with lines of the wrong length")
    try:
        return base64.b64decode("".join(body), validate=True)
    except (binascii.Error, ValueError):
        raise AgeFormatError("armored age file with invalid base64") from None


# --------------------------------------------------------------------------- keys
def hkdf(ikm: bytes, salt: bytes | None, info: bytes) -> bytes:
    """HKDF-SHA-256 with a 32-byte output, as age derives every key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def aead_seal(key: bytes, plaintext: bytes) -> bytes:
    """ChaCha20-Poly1305 with the all-zero nonce (every key here is used once)."""
    return ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, plaintext, None)


def aead_open(key: bytes, ciphertext: bytes, size: int = FILE_KEY_SIZE) -> bytes | None:
    """Open a fixed-size wrapped file key; None when it does not authenticate.

    The size is checked first, as age does, against multi-key (partitioning) attacks.
    """
    if len(ciphertext) != size + _TAG:
        return None
    try:
        return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, ciphertext, None)
    except InvalidTag:
        return None


# --------------------------------------------------------------------------- files
@dataclass
class AgeFile:
    """A parsed age file: its stanzas, the header bytes the MAC covers, the MAC and the payload."""

    stanzas: list[Stanza]
    header: bytes = field(repr=False)
    mac: bytes = field(repr=False)
    payload: bytes = field(repr=False)

    def open(self, file_key: bytes) -> bytes:
        """Check the header MAC with ``file_key`` and decrypt the payload.

        Raises AgeFormatError when the MAC or a chunk does not authenticate
        (wrong key, or a tampered file).
        """
        expected = _header_mac(file_key, self.header)
        if not hmac.compare_digest(expected, self.mac):
            raise AgeFormatError("the age header MAC does not match (wrong key or a modified file)")
        return _stream_decrypt(file_key, self.payload)


def parse(data: bytes | str) -> AgeFile:
    """Parse an age file, binary or armored."""
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    if is_armored(data):
        data = dearmor(data)
    if not data.startswith(INTRO):
        raise AgeFormatError("not an age file (the age-encryption.org/v1 line is missing)")
    reader = LineReader(data)
    reader.readline()
    stanzas: list[Stanza] = []
    while True:
        if reader.peek(3) == b"---":
            start = len(data) - len(reader.rest())
            line = reader.readline()
            parts = line[:-1].split(b" ") if line.endswith(b"\n") else []
            if len(parts) != 2 or parts[0] != b"---":
                raise AgeFormatError("malformed age header MAC line")
            mac = b64decode(parts[1].decode("ascii", "replace"))
            if len(mac) != 32:
                raise AgeFormatError("the age header MAC has the wrong length")
            if not stanzas:
                raise AgeFormatError("an age file without any recipient stanza")
            return AgeFile(stanzas, data[: start + 3], mac, reader.rest())
        try:
            stanzas.append(read_stanza(reader))
        except EOFError:
            raise AgeFormatError("the age header ends without its MAC line") from None


def encrypt(payload: bytes, file_key: bytes, stanzas: Sequence[Stanza], armored: bool = True) -> bytes:
    """An age file for ``payload`` whose header carries ``stanzas`` (each wrapping ``file_key``)."""
    if len(file_key) != FILE_KEY_SIZE:
        raise AgeFormatError("an age file key is 16 bytes")
    if not stanzas:
        raise AgeFormatError("an age file needs at least one recipient stanza")
    header = INTRO + b"".join(s.encode() for s in stanzas) + b"---"
    out = header + b" " + b64encode(_header_mac(file_key, header)).encode() + b"\n" + _stream_encrypt(file_key, payload)
    return armor(out).encode("ascii") if armored else out


def new_file_key() -> bytes:
    """16 random bytes: one file key per age file, never reused."""
    return os.urandom(FILE_KEY_SIZE)


def _header_mac(file_key: bytes, header: bytes) -> bytes:
    key = hkdf(file_key, None, b"header")
    return hmac.new(key, header, "sha256").digest()


def _chunk_nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _stream_encrypt(file_key: bytes, payload: bytes) -> bytes:
    nonce = os.urandom(16)
    aead = ChaCha20Poly1305(hkdf(file_key, nonce, b"payload"))
    chunks = [payload[i : i + _CHUNK] for i in range(0, len(payload), _CHUNK)] or [b""]
    out = [nonce]
    for i, chunk in enumerate(chunks):
        out.append(aead.encrypt(_chunk_nonce(i, i == len(chunks) - 1), chunk, None))
    return b"".join(out)


def _stream_decrypt(file_key: bytes, data: bytes) -> bytes:
    if len(data) < 16 + _TAG:
        raise AgeFormatError("the age payload is truncated")
    aead = ChaCha20Poly1305(hkdf(file_key, data[:16], b"payload"))
    body = data[16:]
    size = _CHUNK + _TAG
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    out = []
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        try:
            plain = aead.decrypt(_chunk_nonce(i, last), chunk, None)
        except InvalidTag:
            raise AgeFormatError("the age payload does not authenticate (truncated or modified)") from None
        if last and not plain and i > 0:
            raise AgeFormatError("the age payload ends with an empty chunk")
        out.append(plain)
    return b"".join(out)
