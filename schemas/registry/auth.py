"""HTTP basic authentication with two roles for the embedded registry, on when an auth file is given.

The auth file (``PASSERELLE_REGISTRY_AUTH_FILE``) is JSON::

    {"users": {
        "<name>": {"salt": "<hex>", "sha256": "<hex>", "role": "read" | "write"}
    }}

where ``sha256`` is the hex SHA-256 of the salt's bytes followed by the
password's UTF-8 bytes: ``sha256(bytes.fromhex(salt) + password.encode())``.
No password is stored; :func:`write_users_file` writes such a file from
plain passwords with a random salt per user.

Rules, once a file is given:

- ``GET /`` stays anonymous: it is the health probe and tells nothing.
- Every other request needs valid credentials, else 401 with
  ``WWW-Authenticate: Basic realm="passerelle-registry"`` and the Confluent
  body ``{"error_code": 40101, "message": ...}`` (unknown routes included, so
  an anonymous caller learns nothing about the API).
- Role ``read`` may read (every ``GET``) and make the ``POST`` requests that
  write nothing: the lookup ``POST /subjects/{subject}`` and the compatibility
  checks ``POST /compatibility/...``.
- Role ``write`` may also register, delete and change the compatibility
  configuration; role ``read`` doing so gets 403 ``{"error_code": 40301, ...}``.

Clients pass the credentials as confluent-kafka's ``SchemaRegistryClient``
does (``basic.auth.user.info=name:password``), i.e. ``PASSERELLE_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from passerelle.schemas.registry.errors import RegistryError, RegistryStartupError

REALM = "passerelle-registry"
READ = "read"
WRITE = "write"
ROLES = (READ, WRITE)
SCOPE_KEY = "passerelle.registry.user"
"""Where the authenticated :class:`User` of a request is kept in the ASGI scope."""

FORMAT_HELP = (
    'Auth file format (JSON): {"users": {"<name>": {"salt": "<hex>", "sha256": "<hex>", "role": "read" | "write"}}} '
    "with sha256 = hex of sha256(bytes.fromhex(salt) + password as UTF-8)."
)


class AuthFileError(RegistryStartupError):
    """The auth file is missing, unreadable or not in the expected format."""


@dataclass(frozen=True)
class User:
    """One registry user: the salted digest of their password and their role."""

    name: str
    salt: bytes
    digest: bytes
    role: str

    @property
    def can_write(self) -> bool:
        return self.role == WRITE

    def __repr__(self) -> str:  # the digest is not a secret the way a password is, but it has no business in logs
        return f"User({self.name!r}, role={self.role!r})"


def password_digest(salt: bytes, password: str) -> bytes:
    """``sha256(salt + password)``, the digest the auth file stores in hex."""
    return hashlib.sha256(salt + password.encode("utf-8")).digest()


# --- the file -------------------------------------------------------------------------------------


def parse_users(data: Any, origin: str = "the auth file") -> dict[str, User]:
    """Users from the decoded JSON of an auth file; any format problem is one :class:`AuthFileError`."""

    def bad(detail: str) -> AuthFileError:
        return AuthFileError(f"registry auth file {origin}: {detail}. {FORMAT_HELP}")

    if not isinstance(data, dict) or not isinstance(data.get("users"), dict):
        raise bad('expected a JSON object with a "users" object')
    if not data["users"]:
        raise bad("no user is defined (nobody could use the registry)")
    users: dict[str, User] = {}
    for name, entry in data["users"].items():
        if not name or ":" in name:
            raise bad(f"user name {name!r} is empty or contains ':' (HTTP basic auth cannot carry it)")
        if not isinstance(entry, dict):
            raise bad(f"user {name!r} must be an object with salt, sha256 and role")
        missing = [key for key in ("salt", "sha256", "role") if key not in entry]
        if missing:
            raise bad(f"user {name!r} has no {', '.join(missing)}")
        role, salt_hex, digest_hex = entry["role"], entry["salt"], entry["sha256"]
        if role not in ROLES:
            raise bad(f"user {name!r} has role {role!r}; a role is 'read' or 'write'")
        try:
            if not isinstance(salt_hex, str) or not isinstance(digest_hex, str):
                raise ValueError
            salt, digest = bytes.fromhex(salt_hex), bytes.fromhex(digest_hex)
        except ValueError:
            raise bad(f"user {name!r}: salt and sha256 must be hexadecimal strings") from None
        if not salt:
            raise bad(f"user {name!r} has an empty salt")
        if len(digest) != hashlib.sha256().digest_size:
            raise bad(f"user {name!r}: sha256 must be 64 hexadecimal digits, got {len(digest_hex)}")
        users[name] = User(name, salt, digest, role)
    return users


def load_users(path: Path) -> dict[str, User]:
    """Read and check an auth file; a problem is one start-up error naming the file, never a traceback."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AuthFileError(f"cannot read the registry auth file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise AuthFileError(f"registry auth file {path} is not UTF-8 text. {FORMAT_HELP}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise AuthFileError(f"registry auth file {path} is not valid JSON ({exc}). {FORMAT_HELP}") from None
    return parse_users(data, str(path))


def users_document(users: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """The auth file's JSON for ``{name: (password, role)}``, each with a fresh random salt."""
    entries: dict[str, Any] = {}
    for name, (password, role) in users.items():
        if role not in ROLES:
            raise ValueError(f"role of {name!r} must be 'read' or 'write', not {role!r}")
        if not name or ":" in name:
            raise ValueError(f"user name {name!r} is empty or contains ':'")
        salt = secrets.token_bytes(16)
        entries[name] = {"salt": salt.hex(), "sha256": password_digest(salt, password).hex(), "role": role}
    document = {"users": entries}
    parse_users(document)  # what we write, we can read
    return document


def write_users_file(path: Path | str, users: Mapping[str, tuple[str, str]]) -> Path:
    """Write an auth file for ``{name: (password, role)}`` (mode 0600, atomically); returns its path."""
    target = Path(path)
    text = json.dumps(users_document(users), indent=2) + "\n"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:  # mkstemp creates it 0600 already
            out.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


# --- checking requests -------------------------------------------------------------------------------


def unauthorized(detail: str) -> RegistryError:
    return RegistryError(401, 40101, f"Unauthorized: {detail}")


def forbidden(user: User) -> RegistryError:
    return RegistryError(
        403, 40301, f"User '{user.name}' has role '{user.role}' and is not allowed to change the schema registry"
    )


class Authenticator:
    """Checks ``Authorization: Basic`` headers against the users; remembers headers it already verified."""

    def __init__(self, users: Mapping[str, User], cache_size: int = 1024) -> None:
        if not users:
            raise ValueError("an authenticator needs at least one user")
        self.users = dict(users)
        self.cache_size = cache_size
        self._verified: OrderedDict[bytes, User] = OrderedDict()
        self._lock = threading.Lock()
        # Unknown user names cost the same hash as known ones: timing does not tell which names exist.
        self._decoy = User("", secrets.token_bytes(16), secrets.token_bytes(32), READ)

    @classmethod
    def from_file(cls, path: Path) -> Authenticator:
        return cls(load_users(path))

    def authenticate(self, header: bytes | str | None) -> User:
        """The user an ``Authorization`` header value proves to be, else a 401 :class:`RegistryError`."""
        if not header:
            raise unauthorized("this registry requires HTTP basic authentication")
        raw = header.encode("latin-1") if isinstance(header, str) else header
        with self._lock:
            known = self._verified.get(raw)
            if known is not None:
                self._verified.move_to_end(raw)
                return known
        scheme, _, token = raw.strip().partition(b" ")
        if scheme.lower() != b"basic" or not token.strip():
            raise unauthorized("this registry requires HTTP basic authentication")
        try:
            name, sep, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, ValueError):
            raise unauthorized("malformed basic authentication header") from None
        if not sep:
            raise unauthorized("malformed basic authentication header")
        user = self.users.get(name)
        candidate = user or self._decoy
        if not hmac.compare_digest(password_digest(candidate.salt, password), candidate.digest) or user is None:
            raise unauthorized("invalid user name or password")
        with self._lock:
            self._verified[raw] = user
            while len(self._verified) > self.cache_size:
                self._verified.popitem(last=False)
        return user


def is_anonymous(method: str, path: str) -> bool:
    """Requests that need no credentials: the health probe ``GET /`` only."""
    return method == "GET" and path == "/"
