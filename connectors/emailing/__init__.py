"""The emailing partner connector: remarketing messages pushed to the partner's HTTP API, or exported as files.

- ``bridge``: ``remarketing.messages`` → partner HTTP API (idempotency key =
  message id, bounded retries, dead letters) → ``remarketing.deliveries``.
- ``export``: the same messages as one CSV and one JSON-lines file per window,
  written atomically, for partners that pull.
- ``standin``: a partner stand-in that records requests and fails on demand.
"""
