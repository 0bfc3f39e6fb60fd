"""The HTTP hit collector: site tags call it, each valid event becomes an Avro ``Hit`` on ``hits.raw``.

Banner pixels call ``GET /imp``: an ``AdImpression`` on ``ads.impressions``.

Importing the package is cheap (no FastAPI, no Kafka client): the settings and
the CLI import ``CollectorConfig`` without paying for the web stack.
"""

from passerelle.connectors.collector.config import CollectorConfig, CollectorStartupError

__all__ = ["CollectorConfig", "CollectorStartupError"]
