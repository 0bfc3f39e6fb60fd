"""Partner API keys: made once, stored hashed, checked in constant time, refused once revoked.

A key reads ``<key_id>.<secret>``: the key id is public (it names the key in
``partners list``, in logs and as the record key of ``partners.keys``), the
secret is 256 random bits shown once, at creation, and stored only as a
salted scrypt hash (self-describing: ``scrypt$n=16384,r=8,p=1$<salt>$<digest>``,
base64url without padding), so a leaked topic gives no usable key.

scrypt costs tens of milliseconds by design; a :class:`KeyRing` remembers
the keys it verified (an HMAC of the secret under a per-process random key,
never the secret) so that a partner's next requests cost a dictionary look-up
and a ``hmac.compare_digest``. A key whose record changes (revoked,
replaced) is forgotten at once.

The same cost makes a known key id with a wrong secret a cheap way to burn
the API's CPU (an unknown or malformed key costs nothing). Each key id has a
budget of scrypt checks (:data:`CHECK_BURST`, refilled one per
:data:`CHECK_REFILL_S` seconds, restored by a success); beyond it the request
is refused without hashing (:class:`Throttled`, answered 429 with
``Retry-After``). A partner whose key is already verified never spends it;
after a restart its first request may wait while someone hammers its key id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

SCOPES: Final = (
    "campaigns:write", "campaigns:read", "impressions:write", "metrics:write", "query:read", "query:write",
    "monitoring:read",
)  # fmt: skip
"""What a key may do. ``query:read`` runs queries and reads/runs the partner's report templates; ``query:write``
saves, changes and deletes templates (a dashboard's key needs only ``query:read``). ``monitoring:read`` reads the
platform's metrics on the operations page (every partner's traffic: an operator's key, not a partner's)."""

KEY_ID: Final = re.compile(r"[a-z0-9]{16}")
SECRET: Final = re.compile(r"[A-Za-z0-9_-]{43}")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
"""scrypt cost (16 MiB, ~50 ms): OWASP's minimum for scrypt is N=2^17 with r=8 for passwords; a 256-bit random
secret needs no stretching against guessing, the cost only slows an attacker holding the topic."""
_MAX_N = 2**20
CHECK_BURST: Final = 5
CHECK_REFILL_S: Final = 6.0
"""scrypt checks of one key id: 5 at once, then one per 6 s (10 a minute) until one succeeds."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """The stored form of ``secret``: algorithm, parameters, salt and digest in one string."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=_maxmem(n, r))
    return f"scrypt$n={n},r={r},p={p}${_b64(salt)}${_b64(digest)}"


def _maxmem(n: int, r: int) -> int:
    return 128 * r * n * 2 + 1024 * 1024


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` is the one ``stored`` was made from (constant-time compare; False for a malformed hash)."""
    try:
        algorithm, params, salt_text, digest_text = stored.split("$")
        values = dict(item.split("=", 1) for item in params.split(","))
        n, r, p = int(values["n"]), int(values["r"]), int(values["p"])
        salt, expected = _unb64(salt_text), _unb64(digest_text)
    except (ValueError, KeyError):
        return False
    if algorithm != "scrypt" or not (2 <= n <= _MAX_N and n & (n - 1) == 0) or not (1 <= r <= 32 and 1 <= p <= 16):
        return False
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=_maxmem(n, r))
    return hmac.compare_digest(digest, expected)


@dataclass(frozen=True)
class NewKey:
    """A key just made: the ``PartnerKey`` record to publish, and the full key to show once."""

    key_id: str
    api_key: str
    record: dict[str, Any]


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes, deduplicated in :data:`SCOPES` order; ``ValueError`` naming an unknown one."""
    given = set(scopes)
    unknown = sorted(given - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    if not given:
        raise ValueError(f"at least one scope is needed: {', '.join(SCOPES)}")
    return [scope for scope in SCOPES if scope in given]


def new_key(partner: str, scopes: Iterable[str], now_ms: int, label: str | None = None, **cost: int) -> NewKey:
    """Make a key for ``partner``; ``cost`` (n, r, p) only for tests that cannot wait for the real scrypt cost."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    record = {
        "key_id": key_id,
        "partner": partner,
        "scopes": check_scopes(scopes),
        "secret_hash": hash_secret(secret, **cost),
        "created_at": now_ms,
        "revoked_at": None,
        "label": label,
    }
    return NewKey(key_id, f"{key_id}.{secret}", record)


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: the partner, the key that authenticated it, what it may do."""

    partner: str
    key_id: str
    scopes: frozenset[str]


class AuthError(Exception):
    """The request's key is missing, malformed, unknown, wrong or revoked (the reason is for logs, not clients)."""


class Throttled(AuthError):
    """Too many checks of one key id's secret: refused without hashing; retry after ``retry_after_s``."""

    def __init__(self, key_id: str, retry_after_s: float) -> None:
        super().__init__(f"key {key_id}: too many secret checks, {retry_after_s:.1f}s before the next")
        self.retry_after_s = retry_after_s


class KeyRing:
    """The keys of ``partners.keys`` (kept current by a table follower) and the verification of presented keys.

    Thread-safe: the follower thread calls :meth:`update`, request handlers
    :meth:`authenticate`.
    """

    def __init__(
        self, records: Mapping[str, Mapping[str, Any]] | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._records: dict[str, Mapping[str, Any]] = dict(records or {})
        self._verified: dict[str, bytes] = {}
        self._budget: dict[str, tuple[float, float]] = {}  # key id -> (checks left, when counted)
        self._clock = clock
        self._pepper = secrets.token_bytes(32)
        self._lock = threading.Lock()

    def update(self, key_id: str, record: Mapping[str, Any] | None) -> None:
        """A record of the table changed (None: deleted): verification starts again for that key."""
        with self._lock:
            if record is None:
                self._records.pop(key_id, None)
            else:
                self._records[key_id] = record
            self._verified.pop(key_id, None)

    def _mac(self, secret: str) -> bytes:
        return hmac.new(self._pepper, secret.encode(), hashlib.sha256).digest()

    def authenticate(self, presented: str) -> Principal:
        """The principal of ``presented`` (``<key_id>.<secret>``), or :class:`AuthError`."""
        key_id, dot, secret = presented.strip().partition(".")
        if not dot or not KEY_ID.fullmatch(key_id) or not SECRET.fullmatch(secret):
            raise AuthError("malformed key")
        with self._lock:
            record = self._records.get(key_id)
            known = self._verified.get(key_id)
        if record is None:
            raise AuthError(f"unknown key id {key_id}")
        if record.get("revoked_at") is not None:
            raise AuthError(f"key {key_id} is revoked")
        mac = self._mac(secret)
        if known is None or not hmac.compare_digest(known, mac):
            self._spend_check(key_id)
            if not verify_secret(secret, str(record.get("secret_hash", ""))):
                raise AuthError(f"wrong secret for key {key_id}")
            with self._lock:
                self._budget.pop(key_id, None)
                if self._records.get(key_id) is record:  # not revoked meanwhile
                    self._verified[key_id] = mac
        return Principal(str(record["partner"]), key_id, frozenset(record.get("scopes") or ()))

    def _spend_check(self, key_id: str) -> None:
        """Take one scrypt check from ``key_id``'s budget, or :class:`Throttled` (key ids are the table's: bounded)."""
        with self._lock:
            now = self._clock()
            left, since = self._budget.get(key_id, (float(CHECK_BURST), now))
            left = min(float(CHECK_BURST), left + (now - since) / CHECK_REFILL_S)
            if left < 1.0:
                self._budget[key_id] = (left, now)
                raise Throttled(key_id, (1.0 - left) * CHECK_REFILL_S)
            self._budget[key_id] = (left - 1.0, now)

    def records(self) -> list[Mapping[str, Any]]:
        with self._lock:
            return list(self._records.values())
