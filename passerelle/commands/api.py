"""``passerelle api``: the partner API in the foreground (campaigns, tagged URLs, impressions, metrics).

The port is bound and the tables read (keys, campaigns, undeclared tags)
before uvicorn serves, so a taken port, a missing topic or an unreachable
broker is one ``error:`` line at once.
"""

from __future__ import annotations

import argparse

from passerelle.errors import PasserelleError
from passerelle.settings import ApiSettings, load


def _run(args: argparse.Namespace) -> int:
    from passerelle.connectors.partner_api.app import Backend, create_app
    from passerelle.connectors.partner_api.server import bind, server

    settings = load(ApiSettings)
    assert isinstance(settings, ApiSettings)
    config = settings.api_config()
    host = args.host or settings.api_host
    port = args.port or settings.api_port
    sock = bind(host, port)
    backend = Backend(config)
    try:
        backend.start()  # tables read and writer ready before serving (the lifespan's start is then a no-op)
        app = create_app(config, backend=backend)
        srv = server(app, host, port, log_level="warning", access_log=False)
        srv.run(sockets=[sock])
        if not srv.started:
            raise PasserelleError("the partner API did not start (see the log above)")
    finally:
        backend.close()
        sock.close()
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``api``."""
    p = sub.add_parser(
        "api",
        help="run the partner API (campaigns, tagged URLs, impressions, metrics) in the foreground",
        description="Serve the partner API: partners declare, change and delete their campaigns (published on the "
        "compacted campaigns topic), list the undeclared tags and declare them, get landing URLs tagged in their "
        "campaign's family (xtor, at_*, utm_*, mtm_*), upload ad impressions (POST /v1/impressions -> "
        "ads.impressions) and daily metrics (POST /v1/metrics -> partners.metrics, a re-upload replaces). API keys "
        "come from `passerelle partners add`; repeated wrong secrets for a key id are answered 429. OpenAPI "
        "document at /openapi.json, interactive docs at /docs, /healthz. Stops on Ctrl-C or SIGTERM.",
        epilog="Settings: PASSERELLE_API_HOST, PASSERELLE_API_PORT, PASSERELLE_API_MAX_BATCH_URLS, "
        "PASSERELLE_API_MAX_BATCH_IMPRESSIONS, PASSERELLE_API_MAX_BATCH_METRICS, PASSERELLE_API_MAX_BODY_BYTES, "
        "PASSERELLE_API_MAX_IMPORT_BODY_BYTES, PASSERELLE_API_START_TIMEOUT_SECONDS, PASSERELLE_BOOTSTRAP_SERVERS, "
        "PASSERELLE_SCHEMA_REGISTRY_URL.",
    )
    p.add_argument("--host", help="address to bind (default: PASSERELLE_API_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default: PASSERELLE_API_PORT, 8090)")
    p.set_defaults(func=_run)
