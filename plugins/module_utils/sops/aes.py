# Copyright: nixfleet.sops contributors
# MIT License
"""AES256_GCM values as sops writes them, and sops' value-to-bytes rules.

A value is ``ENC[AES256_GCM,data:<b64>,iv:<b64>,tag:<b64>,type:<t>]`` with a
32-byte IV and the key path (``a:b:0:``) as additional data. The empty string
is never encrypted (sops leaves it as it is).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import math
import os
import re
from decimal import Decimal

from ..module_support import note_missing_lib
from .tree import Comment

# Guarded: without the library, modules fail with missing_required_lib (module_support.require_libs).
try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError:
    note_missing_lib("cryptography")

_ENC_RE = re.compile(r"^ENC\[AES256_GCM,data:(.+),iv:(.+),tag:(.+),type:(.+)\]")
NONCE_SIZE = 32
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class ValueError_(ValueError):
    """A value cannot be decrypted or encrypted; the message never holds the value."""


def go_format_float(value: float) -> str:
    """strconv.FormatFloat(value, 'f', -1, 64): shortest digits, never an exponent."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = format(Decimal(repr(value)).normalize(), "f")
    return text


def go_time_text(value: datetime.datetime | datetime.date) -> str:
    """time.Time.MarshalText (RFC 3339 with nanoseconds trimmed), as sops hashes times."""
    if not isinstance(value, datetime.datetime):
        value = datetime.datetime(value.year, value.month, value.day, tzinfo=datetime.UTC)
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    base = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        base += ("." + f"{value.microsecond:06d}").rstrip("0")
    offset = value.utcoffset() or datetime.timedelta(0)
    if not offset:
        return base + "Z"
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{base}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def to_bytes(value: object, floats: bool = False) -> bytes:
    """sops' ToBytes: the bytes a plaintext value contributes to the MAC (and gets encrypted as).

    ``floats`` makes ints behave as the float64 they are in JSON documents.
    """
    if isinstance(value, Comment):
        return value.text.encode("utf-8", "surrogateescape")
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bool):
        return b"True" if value else b"False"
    if isinstance(value, int):
        if floats:
            return go_format_float(float(value)).encode()
        return str(value).encode()
    if isinstance(value, float):
        return go_format_float(value).encode()
    if isinstance(value, (datetime.datetime, datetime.date)):
        return go_time_text(value).encode()
    if isinstance(value, bytes):
        return value
    raise ValueError_(f"values of type {type(value).__name__} cannot be stored in a sops file")


def value_type(value: object, floats: bool = False) -> str:
    """The ``type:`` sops records for a plaintext value."""
    if isinstance(value, Comment):
        return "comment"
    if isinstance(value, (str, bytes)):
        return "str"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        if floats:
            return "float"
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError_("integer out of the 64-bit range sops can store")
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, (datetime.datetime, datetime.date)):
        return "time"
    raise ValueError_(f"values of type {type(value).__name__} cannot be stored in a sops file")


def encrypt_value(
    value: object, key: bytes, additional_data: str, floats: bool = False, iv: bytes | None = None
) -> str | Comment:
    """Encrypt one plaintext value; empty strings (and empty comments) stay as they are."""
    vtype = value_type(value, floats)
    plain = to_bytes(value, floats)
    if vtype in ("str", "comment") and not plain:
        return value  # type: ignore[return-value]
    if iv is None:
        iv = os.urandom(NONCE_SIZE)
    sealed = AESGCM(key).encrypt(iv, plain, additional_data.encode("utf-8", "surrogateescape"))
    b64 = base64.b64encode
    return (
        f"ENC[AES256_GCM,data:{b64(sealed[:-16]).decode()},iv:{b64(iv).decode()},"
        f"tag:{b64(sealed[-16:]).decode()},type:{vtype}]"
    )


def decrypt_raw(text: str, key: bytes, additional_data: str) -> tuple[bytes, str]:
    """Decrypt an ``ENC[…]`` string into (plaintext bytes, type). Raises ValueError_."""
    m = _ENC_RE.match(text)
    if not m:
        raise ValueError_("not in sops' ENC[AES256_GCM,…] format")
    try:
        data, iv, tag = (base64.b64decode(m.group(i), validate=True) for i in (1, 2, 3))
    except (binascii.Error, ValueError):
        raise ValueError_("invalid base64 in an encrypted value") from None
    if not iv:
        raise ValueError_("empty IV in an encrypted value")
    try:
        plain = AESGCM(key).decrypt(iv, data + tag, additional_data.encode("utf-8", "surrogateescape"))
    except (InvalidTag, ValueError):
        raise ValueError_("authentication failed (value, its key path or the data key do not match)") from None
    return plain, m.group(4)


_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def typed_value(plain: bytes, vtype: str) -> object:
    """Turn decrypted bytes into a Python value according to sops' ``type``."""
    text = plain.decode("utf-8", "surrogateescape")
    try:
        if vtype == "str":
            return text
        if vtype == "int":
            return int(text, 10)
        if vtype == "float":
            return float(text)
        if vtype == "bool":
            if text in _GO_TRUE:
                return True
            if text in _GO_FALSE:
                return False
            raise ValueError(text)
        if vtype == "bytes":
            return plain
        if vtype == "time":
            return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if vtype == "comment":
            return Comment(text)
    except ValueError:
        raise ValueError_(f"decrypted value does not parse as type {vtype}") from None
    raise ValueError_(f"unknown value type {vtype!r}")


def decrypt_value(text: str, key: bytes, additional_data: str) -> object:
    """Decrypt an ``ENC[…]`` string into its typed Python value ('' stays '')."""
    if text == "":
        return ""
    plain, vtype = decrypt_raw(text, key, additional_data)
    return typed_value(plain, vtype)
