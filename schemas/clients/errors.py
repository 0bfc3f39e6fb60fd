"""Connection failures a user can fix, each printed as one ``error:`` line by the CLI."""

from __future__ import annotations


class KafkaClientError(Exception):
    """Base: a Kafka connection problem with a cause the user can act on."""

    user_error = True
    exit_code = 1


class KafkaConfigError(KafkaClientError):
    """A client property librdkafka refuses (unknown name, bad value, missing file)."""


class KafkaUnreachableError(KafkaClientError):
    """No broker answered at the bootstrap servers (down, wrong address, TLS mismatch)."""


class KafkaTlsError(KafkaUnreachableError):
    """The TLS handshake failed (unknown CA, wrong host name, plaintext client on a TLS port): no retry fixes it."""


class KafkaAuthenticationError(KafkaClientError):
    """The brokers refused the credentials (wrong password, unknown user, no credentials)."""


class KafkaAccessError(KafkaClientError):
    """Authenticated, but an ACL does not grant a topic, group or transactional id this process needs."""
