# Copyright: nixfleet.sops contributors
# MIT License
"""The one error base of the collection.

Every error module_utils raises on purpose derives from :class:`NixfleetError`,
so a module (``module_support.run_guarded``), the lookup and the verifier turn
any of them into one clear line in one place. Messages are written for the
user: what was wrong, where (file, key, host, line) and what to do. They never
contain key material. Standard library only: the target-side verifier uses it.
"""

from __future__ import annotations


class NixfleetError(Exception):
    """Base of every error the collection raises on purpose.

    ``path`` (optional) names the file the error is about; ``str()`` then
    starts with it.
    """

    def __init__(self, message: str = "", path: str | None = None) -> None:
        self.message = message
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class AgeKeyError(NixfleetError, ValueError):
    """Bad key input (age or SSH). The message names the problem and where, never the key.

    Defined here rather than in ``age.py`` because the standard-library OpenSSH
    parser (``openssh.py``) raises it too, and ``age.py`` builds on that parser.
    """


__all__ = ["AgeKeyError", "NixfleetError"]
