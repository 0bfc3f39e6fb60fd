"""The client layer's Kafka security properties, in the form faust-streaming (aiokafka) takes them.

The sequencer is the one process not on confluent-kafka; it must still connect
with the same ``PASSERELLE_KAFKA_*`` settings as every other process, so the
librdkafka properties are translated here rather than configured twice.
"""

from __future__ import annotations

import ssl
from typing import Any

from passerelle.schemas.clients import Connection, KafkaConfigError

_SUPPORTED_MECHANISMS = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}


def ssl_context(props: dict[str, str] | Any) -> ssl.SSLContext:
    """A verifying TLS context from librdkafka's ``ssl.*`` properties (system CAs when none is given)."""
    context = ssl.create_default_context(cafile=props.get("ssl.ca.location") or None)
    if props.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
        context.check_hostname = False
    cert = props.get("ssl.certificate.location")
    if cert:
        context.load_cert_chain(cert, props.get("ssl.key.location") or None, props.get("ssl.key.password") or None)
    return context


def faust_credentials(conn: Connection) -> Any:
    """``faust.SASLCredentials`` / ``SSLCredentials`` for ``conn``, or None for plaintext.

    Raises a configuration error for what aiokafka cannot do the way librdkafka
    does (OAUTHBEARER/OIDC, GSSAPI), instead of connecting without it.
    """
    import faust

    props = conn.kafka
    protocol = props.get("security.protocol", "plaintext").upper()
    if protocol == "PLAINTEXT":
        return None
    try:
        context = ssl_context(props) if protocol in {"SSL", "SASL_SSL"} else None
    except (OSError, ssl.SSLError) as exc:
        raise KafkaConfigError(f"cannot load the TLS files of the Kafka client configuration: {exc}") from None
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    if protocol not in {"SASL_PLAINTEXT", "SASL_SSL"}:
        raise KafkaConfigError(f"unknown security.protocol {protocol!r} (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)")
    mechanism = props.get("sasl.mechanism", props.get("sasl.mechanisms", "GSSAPI")).upper()
    if mechanism not in _SUPPORTED_MECHANISMS:
        raise KafkaConfigError(
            f"the remarketing sequencer (faust-streaming/aiokafka) cannot use sasl.mechanism={mechanism}; "
            f"use one of {', '.join(sorted(_SUPPORTED_MECHANISMS))}"
        )
    return faust.SASLCredentials(
        username=props.get("sasl.username"),
        password=props.get("sasl.password"),
        ssl_context=context,
        mechanism=mechanism,
    )
