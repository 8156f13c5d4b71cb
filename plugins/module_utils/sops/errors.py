# Copyright: nixfleet.sops contributors
# MIT License
"""Exceptions of the sops engine.

Every message names the file it is about and never contains key material
(identities, data keys, decrypted values).
"""

from __future__ import annotations

from ..errors import NixfleetError


class SopsError(NixfleetError):
    """Any failure of the sops engine; ``path`` is the file it concerns (or None)."""


class SopsFormatError(SopsError):
    """The file is not a sops file, or its format/extension is not supported."""


class SopsNotEncryptedError(SopsFormatError):
    """The file has no sops metadata at all: it is plain text, not a broken sops file."""


class SopsMacError(SopsError):
    """A value, the MAC or lastmodified was changed outside sops (integrity check failed)."""


class SopsDecryptError(SopsError):
    """A value could not be decrypted with the data key."""


class SopsNoIdentityError(SopsError):
    """None of the available identities can open the file's data key.

    ``recipients`` lists the file's recipients per key group and ``searched``
    the places where identities were looked for.
    """

    def __init__(
        self,
        message: str,
        path: str | None = None,
        recipients: list[list[str]] | None = None,
        searched: list[str] | None = None,
    ) -> None:
        self.recipients = recipients or []
        self.searched = searched or []
        super().__init__(message, path)


class SopsKeyPathError(SopsError):
    """A key path given to set/unset does not exist or crosses a scalar."""
