"""The emailing bridge's configuration: plain frozen dataclasses, so ``connectors`` never imports ``passerelle``.

The settings layer builds an :class:`EmailingConfig` from environment
variables; tests and the development entry point (``python -m
connectors.emailing``) build it from a JSON file with :func:`config_from_mapping`.
Secrets are pydantic ``SecretStr``: their ``repr`` is masked, so logging a
config (or an exception that carries one) never leaks a token.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from passerelle.connectors.emailing.mapping import PayloadMapping
from passerelle.schemas.clients import DEAD_LETTER_TOPIC, Connection, Connects

DEFAULT_TOPIC = "remarketing.messages"
DEFAULT_DELIVERIES_TOPIC = "remarketing.deliveries"
DEFAULT_DEAD_LETTER_TOPIC = DEAD_LETTER_TOPIC
CATALOG_INPUT_TOPIC = "remarketing.messages"
"""Catalog entry whose value schema the bridge reads, whatever the topic is called in a deployment."""
CATALOG_DELIVERIES_TOPIC = "remarketing.deliveries"
"""Catalog entry whose schemas the bridge writes its outcomes with."""

AuthKind = Literal["none", "bearer", "basic", "api_key"]
AUTH_KINDS: tuple[str, ...] = ("none", "bearer", "basic", "api_key")


class EmailingStartupError(Exception):
    """The bridge or the export cannot start for a reason the operator can fix (bad config, registry down)."""

    user_error = True


@dataclass(frozen=True)
class PartnerAuth:
    """How the bridge authenticates to the partner.

    ``bearer``: ``Authorization: Bearer <secret>``; ``basic``: ``username`` and
    ``secret`` as the password; ``api_key``: ``<header>: <secret>``. The
    secret stays a ``SecretStr`` until the very header is built.
    """

    kind: AuthKind = "none"
    secret: SecretStr | None = None
    username: str | None = None
    header: str = "X-Api-Key"

    def problems(self) -> list[str]:
        found: list[str] = []
        if self.kind not in AUTH_KINDS:
            found.append(f"auth kind {self.kind!r} is not one of {', '.join(AUTH_KINDS)}")
        elif self.kind != "none" and (self.secret is None or not self.secret.get_secret_value()):
            found.append(f"auth kind {self.kind!r} needs a secret")
        if self.kind == "basic" and not self.username:
            found.append("auth kind 'basic' needs a username")
        if self.kind == "api_key" and not self.header.strip():
            found.append("auth kind 'api_key' needs a header name")
        return found

    def headers(self) -> dict[str, str]:
        """The authentication header(s) of every request (never logged)."""
        if self.kind == "none" or self.secret is None:
            return {}
        secret = self.secret.get_secret_value()
        if self.kind == "bearer":
            return {"Authorization": f"Bearer {secret}"}
        if self.kind == "basic":
            token = base64.b64encode(f"{self.username}:{secret}".encode()).decode("ascii")
            return {"Authorization": f"Basic {token}"}
        return {self.header: secret}


@dataclass(frozen=True)
class RetryPolicy:
    """The retry budget of one message: whichever of ``max_attempts`` or ``max_total_s`` runs out first.

    Delays grow as ``base_delay_s * multiplier ** (n - 1)``, capped at
    ``max_delay_s``, and a random share (``jitter``, 0..1) is taken off so that
    bridges retrying after a partner outage do not all come back at once.
    A ``Retry-After`` longer than ``max_retry_after_s`` or than what is left of
    the budget ends the retries: waiting it out would hold the partition
    longer than the operator allowed.
    """

    max_attempts: int = 6
    base_delay_s: float = 0.5
    multiplier: float = 2.0
    max_delay_s: float = 30.0
    max_total_s: float = 120.0
    jitter: float = 0.5
    max_retry_after_s: float = 60.0

    def problems(self) -> list[str]:
        found: list[str] = []
        if self.max_attempts < 1:
            found.append(f"retry max_attempts must be >= 1, got {self.max_attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < 0 or self.max_total_s < 0:
            found.append("retry delays and budget must be >= 0")
        if self.multiplier < 1:
            found.append(f"retry multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            found.append(f"retry jitter must be within 0..1, got {self.jitter}")
        return found


@dataclass(frozen=True)
class EmailingConfig(Connects):
    """Everything the bridge and the export need; frozen so that worker threads cannot change it under each other.

    ``concurrency`` is the number of partitions delivered in parallel (messages
    of one partition always go in order). ``batch_size`` bounds how many
    messages are in flight between two offset commits, hence how many a crash
    can send twice (with the same idempotency key). ``already_delivered``
    lists statuses some partners use for "this idempotency key was already
    accepted" (e.g. 409): they count as delivered, not as a rejection.
    ``instance_id`` (stable per instance) turns on static group membership: a
    restarted instance takes its partitions back at once instead of waiting
    for the session of the one that died to time out.
    """

    bootstrap_servers: str
    schema_registry_url: str
    partner_url: str
    partner_name: str = "emailing"
    auth: PartnerAuth = field(default_factory=PartnerAuth)
    method: str = "POST"
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    mapping: PayloadMapping = field(default_factory=PayloadMapping)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    request_timeout_s: float = 10.0
    already_delivered: frozenset[int] = frozenset()
    body_excerpt_chars: int = 500
    topic: str = DEFAULT_TOPIC
    deliveries_topic: str = DEFAULT_DELIVERIES_TOPIC
    dead_letter_topic: str = DEFAULT_DEAD_LETTER_TOPIC
    group_id: str = "passerelle-emailing"
    instance_id: str | None = None
    catalog_path: Path | None = None
    concurrency: int = 3
    batch_size: int = 50
    poll_timeout_s: float = 0.5
    produce_timeout_s: float = 30.0
    metrics_port: int | None = None
    auto_register_schemas: bool = True
    consumer_overrides: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    connection: Connection | None = field(default=None, repr=False)  # credentials/TLS; None: plaintext

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("bootstrap_servers", "schema_registry_url", "topic", "deliveries_topic", "group_id"):
            if not getattr(self, name):
                problems.append(f"{name} is empty")
        if not self.partner_url.startswith(("http://", "https://")):
            problems.append(f"partner_url must be an http(s) URL, got {self.partner_url!r}")
        if self.method.upper() not in ("POST", "PUT", "PATCH"):
            problems.append(f"method must be POST, PUT or PATCH, got {self.method!r}")
        problems += self.auth.problems()
        problems += self.retry.problems()
        if self.request_timeout_s <= 0:
            problems.append(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.concurrency < 1:
            problems.append(f"concurrency must be >= 1, got {self.concurrency}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if any(not 200 <= s <= 599 for s in self.already_delivered):
            problems.append("already_delivered statuses must be HTTP statuses")
        if problems:
            raise EmailingStartupError("invalid emailing configuration: " + "; ".join(problems))


def _secret(data: Mapping[str, Any]) -> SecretStr | None:
    """The secret of an auth block: given inline (``secret``) or named by environment variable (``secret_env``)."""
    if data.get("secret_env"):
        value = os.environ.get(str(data["secret_env"]))
        if value is None:
            raise EmailingStartupError(f"environment variable {data['secret_env']} (partner secret) is not set")
        return SecretStr(value)
    if data.get("secret") is not None:
        return SecretStr(str(data["secret"]))
    return None


def config_from_mapping(data: Mapping[str, Any]) -> EmailingConfig:
    """Build a config from JSON-like data (the development entry point's ``--config`` file).

    Nested blocks: ``auth`` (kind, secret or secret_env, username, header),
    ``retry`` (the :class:`RetryPolicy` fields), ``mapping`` (fields,
    constants). Unknown keys are errors: a typo must not silently fall back
    to a default.
    """
    known = {f.name for f in fields(EmailingConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise EmailingStartupError(f"unknown emailing config key(s): {', '.join(unknown)}")
    values: dict[str, Any] = dict(data)
    if "auth" in values:
        auth = dict(values["auth"])
        secret = _secret(auth)
        auth.pop("secret", None)
        auth.pop("secret_env", None)
        values["auth"] = PartnerAuth(secret=secret, **auth)
    if "retry" in values:
        values["retry"] = RetryPolicy(**values["retry"])
    if "mapping" in values:
        mapping = values["mapping"]
        values["mapping"] = PayloadMapping(fields=mapping.get("fields"), constants=mapping.get("constants", {}))
    if "already_delivered" in values:
        values["already_delivered"] = frozenset(int(s) for s in values["already_delivered"])
    if values.get("catalog_path") is not None:
        values["catalog_path"] = Path(values["catalog_path"])
    try:
        return EmailingConfig(**values)
    except TypeError as exc:
        raise EmailingStartupError(f"invalid emailing configuration: {exc}") from exc
