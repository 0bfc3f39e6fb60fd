"""The partner API (``passerelle api``): partners declare campaigns, get tagged URLs, send impressions and metrics.

Pure rules (``campaign_rules``, ``tagging``, ``keys``, ``impression_rules``,
``metric_rules``, ``metrics_csv``) are importable without FastAPI or a Kafka
client; ``tables`` is the Kafka side, ``app`` the HTTP side (the batch routes
in ``impressions``, ``metrics_routes`` and ``batches``), ``server`` how uvicorn
serves it.
"""

from passerelle.connectors.partner_api.config import ApiConfig, ApiTopics

__all__ = ["ApiConfig", "ApiTopics"]
