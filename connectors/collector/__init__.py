"""The HTTP hit collector: site tags call it, each valid event becomes an Avro ``Hit`` on ``hits.raw``.

Importing the package is cheap (no FastAPI, no Kafka client): the settings and
the CLI import ``CollectorConfig`` without paying for the web stack.
"""

from passerelle.connectors.collector.config import CollectorConfig, CollectorStartupError

__all__ = ["CollectorConfig", "CollectorStartupError"]
