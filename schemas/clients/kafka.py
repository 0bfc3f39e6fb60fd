"""confluent-kafka clients built from a :class:`Connection`, and the failures they report, as clear errors.

Every producer, consumer and admin client of every process comes from here:
security properties are applied once, librdkafka's log lines go through
Python logging (the ``librdkafka`` logger, quiet unless ``--debug``) instead of
hundreds of raw stderr lines, and connection or authentication failures end
as one error naming the cluster and the user.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from passerelle.schemas.clients.connection import Connection
from passerelle.schemas.clients.errors import (
    KafkaAccessError,
    KafkaAuthenticationError,
    KafkaClientError,
    KafkaConfigError,
    KafkaTlsError,
    KafkaUnreachableError,
)
from passerelle.schemas.clients.redact import redact

DEAD_LETTER_TOPIC = "errors.deadletters"
"""Where every process sends records it cannot decode, process or deliver (one name, one place)."""

RDKAFKA_LOGGER = logging.getLogger("librdkafka")

_AUTHENTICATION = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
_AUTHORIZATION = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "consumer group",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "cluster",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "transactional id",
}
_UNREACHABLE = {
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TIMED_OUT,
    KafkaError._RESOLVE,
    KafkaError._SSL,
}


def classify(error: KafkaError, conn: Connection, what: str = "") -> KafkaClientError | None:
    """The user-facing error for a librdkafka error that no retry will fix, else None."""
    code = error.code()
    message = redact(error.str())
    if code in _AUTHENTICATION:
        return KafkaAuthenticationError(
            f"Kafka at {conn.describe()} refused the credentials: {message} "
            "(check PASSERELLE_KAFKA_SASL_USERNAME / _SASL_PASSWORD or the client config file)"
        )
    if code in _AUTHORIZATION:
        target = f" {what}" if what else ""
        return KafkaAccessError(
            f"Kafka at {conn.describe()} does not allow this on the {_AUTHORIZATION[code]}{target}: {message} "
            "(an ACL must grant it to this principal)"
        )
    if code == KafkaError._SSL:
        return KafkaTlsError(
            f"TLS handshake with Kafka at {conn.describe()} failed: {message} "
            "(check PASSERELLE_KAFKA_SSL_CA_LOCATION and the broker's certificate)"
        )
    return None


class ErrorWatch:
    """An ``error_cb`` that keeps the last error a client reported, for a precise message later.

    librdkafka reports authentication and TLS failures only through the error
    callback; the call that then times out just says "transport failure".
    """

    def __init__(self, conn: Connection, chained: Callable[[KafkaError], None] | None = None) -> None:
        self.conn = conn
        self.chained = chained
        self.last: KafkaError | None = None
        self._lock = threading.Lock()

    def __call__(self, error: KafkaError) -> None:
        with self._lock:
            if self.last is None or classify(error, self.conn) is not None or classify(self.last, self.conn) is None:
                self.last = error
        RDKAFKA_LOGGER.debug("client error: %s", error)
        if self.chained is not None:
            self.chained(error)

    def fatal(self) -> KafkaClientError | None:
        """The error no retry fixes (credentials refused, TLS failure), if the client saw one."""
        with self._lock:
            last = self.last
        return None if last is None else classify(last, self.conn)

    def unreachable(self, cause: BaseException | str, timeout_s: float) -> KafkaClientError:
        """The best error for a call that failed: a fatal cause seen by the callback, else "not reachable"."""
        fatal = self.fatal()
        if fatal is not None:
            return fatal
        first = cause.args[0] if isinstance(cause, BaseException) and cause.args else cause
        detail = redact(first.str() if isinstance(first, KafkaError) else str(first))
        if self.last is not None:
            detail = redact(self.last.str())
        return KafkaUnreachableError(
            f"Kafka is not reachable at {self.conn.describe()} within {timeout_s:g}s: {detail} "
            "(is the broker up and PASSERELLE_BOOTSTRAP_SERVERS right?)"
        )


Conf = Mapping[str, Any] | None


def _build(kind: type, conn: Connection, conf: dict[str, Any], watch: ErrorWatch | None) -> Any:
    conf = conn.kafka_config(**conf)
    user_cb = conf.pop("error_cb", None)
    conf["error_cb"] = watch if watch is not None else ErrorWatch(conn, user_cb)
    if watch is not None and user_cb is not None:
        watch.chained = user_cb
    conf.setdefault("logger", RDKAFKA_LOGGER)
    try:
        return kind(conf)
    except (KafkaException, ValueError, TypeError) as exc:
        detail = exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else str(exc)
        raise KafkaConfigError(f"invalid Kafka client configuration for {conn.describe()}: {redact(detail)}") from None


def producer(conn: Connection, conf: Conf = None, *, watch: ErrorWatch | None = None) -> Producer:
    """An idempotent ``acks=all`` producer (librdkafka leaves idempotence off by default).

    Partitioner ``murmur2_random``: the same partition for a key as Java
    producers and Kafka Connect, so co-partitioned topics stay co-partitioned
    whoever writes them.
    """
    base: dict[str, Any] = {"enable.idempotence": True, "acks": "all", "partitioner": "murmur2_random"}
    return _build(Producer, conn, {**base, **(conf or {})}, watch)


def consumer(conn: Connection, group_id: str, conf: Conf = None, *, watch: ErrorWatch | None = None) -> Consumer:
    """A consumer in ``group_id``; offsets are committed by the caller unless it says otherwise."""
    base: dict[str, Any] = {"group.id": group_id, "enable.auto.commit": False}
    return _build(Consumer, conn, {**base, **(conf or {})}, watch)


def admin_client(conn: Connection, conf: Conf = None, *, watch: ErrorWatch | None = None) -> AdminClient:
    """An admin client (topics, configs, groups, ACLs)."""
    return _build(AdminClient, conn, dict(conf or {}), watch)


def ensure_reachable(conn: Connection, timeout_s: float = 15.0) -> Any:
    """Cluster metadata, or one clear error: unreachable, credentials refused, TLS failure.

    Every long-running process calls this first, so a wrong password or address
    fails at start-up in seconds instead of retrying forever.
    """
    watch = ErrorWatch(conn)
    ms = int(timeout_s * 1000)
    admin = admin_client(conn, {"socket.timeout.ms": ms, "socket.connection.setup.timeout.ms": ms}, watch=watch)
    deadline = time.monotonic() + timeout_s
    while True:
        # Short attempts, serving the error callback in between: refused credentials show there (not in the
        # metadata call), and end the wait at once instead of after the whole timeout.
        attempt = max(0.1, min(1.0, deadline - time.monotonic()))
        try:
            meta = admin.list_topics(timeout=attempt)
        except KafkaException as exc:
            admin.poll(0)
            fatal = watch.fatal()
            if fatal is not None:
                raise fatal from None
            if time.monotonic() >= deadline:
                raise watch.unreachable(exc, timeout_s) from None
            continue
        if meta.brokers:
            return meta
        if time.monotonic() >= deadline:
            raise watch.unreachable("no broker in the metadata", timeout_s)


def topic_error(meta: Any, topic: str, conn: Connection, admin: AdminClient | None = None) -> KafkaClientError | None:
    """Why ``topic`` cannot be used: an ACL refuses it, else None (present, or simply absent).

    Metadata for all topics leaves out the ones a principal may not describe;
    asked for one topic by name (``admin``), the broker says which it is.
    """
    tmeta = meta.topics.get(topic)
    if tmeta is None and admin is not None:
        try:
            tmeta = admin.list_topics(topic, timeout=10).topics.get(topic)
        except KafkaException:
            return None
    if tmeta is not None and tmeta.error is not None:
        return classify(tmeta.error, conn, f"'{topic}'")
    return None


def produce(
    target: Producer, topic: str, value: bytes | None, key: bytes | None = None, poll_s: float = 0.05, **kwargs: Any
) -> None:
    """Produce, waiting for room when librdkafka's local queue is full (backpressure, not an error)."""
    while True:
        try:
            target.produce(topic, value, key, **kwargs)
            return
        except BufferError:
            target.poll(poll_s)  # serve delivery reports: that is what frees the queue
