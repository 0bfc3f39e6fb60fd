"""Monitoring at the edge: consumer lag, end-to-end latencies, probes of what has no /metrics, scrape targets.

``passerelle lag`` runs :mod:`exporter` (one process); :mod:`panels` lists the
dashboard panels a page or a Grafana generator draws; the Prometheus rules
live in ``deploy/monitoring/``.
"""
