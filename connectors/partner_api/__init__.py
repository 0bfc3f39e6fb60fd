"""The partner API (``passerelle api``): partners declare campaigns and get tagged URLs over HTTP.

Pure rules (``campaign_rules``, ``tagging``, ``keys``) are importable without
FastAPI or a Kafka client; ``tables`` is the Kafka side, ``app`` the HTTP
side, ``server`` how uvicorn serves it.
"""

from passerelle.connectors.partner_api.config import ApiConfig, ApiTopics

__all__ = ["ApiConfig", "ApiTopics"]
