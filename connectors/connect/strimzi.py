"""Connector files as Strimzi ``KafkaConnector`` resources, for clusters run by the Strimzi operator.

The same file serves both worlds: ``passerelle connect apply`` posts it to a
REST API, and this turns it into the custom resource the operator reconciles
(``spec.class`` and ``spec.tasksMax`` lifted out of the config, the rest
unchanged, ``${env:...}`` references included: the ``KafkaConnect`` resource
must enable that provider and set the variables from a secret).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from passerelle.connectors.connect.configs import ConnectorFile


def _scalar(value: str | int) -> str:
    # A JSON string is a valid YAML double-quoted scalar: no YAML library needed, no quoting mistakes.
    return str(value) if isinstance(value, int) else json.dumps(value)


def kafka_connector(item: ConnectorFile, cluster: str, namespace: str | None = None) -> str:
    """One ``KafkaConnector`` YAML document for ``item``, managed by the ``KafkaConnect`` named ``cluster``."""
    config = dict(item.config)
    cls = config.pop("connector.class")
    tasks = int(config.pop("tasks.max", "1"))
    lines = [
        "apiVersion: kafka.strimzi.io/v1beta2",
        "kind: KafkaConnector",
        "metadata:",
        f"  name: {_scalar(item.name)}",
    ]
    if namespace:
        lines.append(f"  namespace: {_scalar(namespace)}")
    lines += [
        "  labels:",
        f"    strimzi.io/cluster: {_scalar(cluster)}",
        "spec:",
        f"  class: {_scalar(cls)}",
        f"  tasksMax: {tasks}",
        "  config:",
        *(f"    {_scalar(k)}: {_scalar(v)}" for k, v in config.items()),
    ]
    return "\n".join(lines) + "\n"


def manifests(items: Iterable[ConnectorFile], cluster: str, namespace: str | None = None) -> str:
    """Several resources as one multi-document YAML stream (``kubectl apply -f -`` takes it)."""
    return "---\n".join(kafka_connector(item, cluster, namespace) for item in items)
