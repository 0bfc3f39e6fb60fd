"""Secrets never reach a terminal or a log: every secret value known to the process is masked.

Masking by value (not by property name) also covers messages we do not
control: a librdkafka error, a traceback, a URL with credentials in it.
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "***"
_secrets: set[str] = set()
_lock = threading.Lock()

# librdkafka and SchemaRegistryClient property names that hold secrets.
_SECRET_NAME = re.compile(r"(password|secret|token|user\.info|jaas|\.pem$|oauthbearer\.config)", re.IGNORECASE)


def is_secret_property(name: str) -> bool:
    """Whether a client property holds a secret (``sasl.password``, ``basic.auth.user.info``...)."""
    return bool(_SECRET_NAME.search(name))


def register_secret(value: str | None) -> None:
    """Remember a secret so that :func:`redact` masks it wherever it appears."""
    if not value or len(value) < 3:  # masking "a" everywhere would garble every line
        return
    with _lock:
        _secrets.add(value)
        if ":" in value:  # user:password -> the password alone may show too
            _secrets.add(value.split(":", 1)[1])


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redacted_properties(props: dict[str, str]) -> dict[str, str]:
    """A copy fit for printing: secret properties shown as ``***``."""
    return {k: (MASK if is_secret_property(k) else v) for k, v in props.items()}


class RedactingFilter(logging.Filter):
    """Masks secrets in every record passing a handler (message, arguments and traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
