"""Kafka Connect at the edge: connector configuration files (JSON) and the REST client that applies them."""
