"""Status page authentication: ``ops.users`` password hashes and CSRF tokens.

A password hash is ``scrypt$N$r$p$<salt base64>$<hash base64>`` (``hashlib.scrypt`` with a
16-byte random salt and a 32-byte key; N=2**14, r=8, p=1 by default), made by
``ct2mri-node hash-password``. The parameters travel with the hash, so stronger ones can be
chosen later without breaking existing entries.

A CSRF token is an HMAC of the user name under a key made at server start: it is valid for
that user until the node restarts, and a page served to one user cannot post as another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from ..errors import ConfigError

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_KEY_BYTES = 32


def hash_password(password: str, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """The ``ops.users`` entry for ``password`` (random salt)."""
    if not password:
        raise ConfigError("an empty password cannot be hashed")
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=_KEY_BYTES, maxmem=2**27)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(key).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches the ``stored`` hash (constant-time comparison)."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(key, validate=True)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt, validate=True), n=int(n), r=int(r),
                             p=int(p), dklen=len(expected), maxmem=2**27)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


class CsrfTokens:
    """Per-user form tokens, valid while this process runs."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def token(self, user: str) -> str:
        """The token that forms served to ``user`` carry."""
        return hmac.new(self._key, user.encode(), hashlib.sha256).hexdigest()

    def check(self, user: str, token: str) -> bool:
        """True when ``token`` was issued to ``user`` by this process."""
        return hmac.compare_digest(self.token(user), token)
