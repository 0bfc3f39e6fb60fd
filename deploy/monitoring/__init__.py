"""Prometheus recording and alert rules (``rules.yml``) and their promtool unit tests (``tests/``).

Plain files, read by Prometheus and promtool; ``deploy/local/monitoring.py``
copies them into the state folder when ``passerelle up --with monitoring``
starts Prometheus.
"""
