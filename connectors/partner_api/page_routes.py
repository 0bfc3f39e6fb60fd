"""The Data Query web pages on the partner API: ``/pages/builder`` and ``/pages/dashboard``.

The pages are static files of :mod:`passerelle.connectors.partner_api.pages`
and hold no data: their scripts call the same ``/v1/query`` endpoints as any
client, with the API key the user pastes once (kept in the browser tab's
``sessionStorage``, sent as ``X-Api-Key``, forgotten when the tab closes).
So the pages themselves need no authentication, and a key sees in them what
it sees through the API (``query:read`` to run queries and read templates,
``query:write`` to save them). Because a key lives in the page, every page is
answered with a Content-Security-Policy that admits scripts, styles and
requests from the API's own origin only (no inline script, no CDN, no
framing): the pages work offline and an injected string cannot run.

``/pages/operations`` is the platform's health from Prometheus: its script
reads the panels and Prometheus's answers through ``ops_routes`` (a key with
``monitoring:read``), not ``/v1/query``.

A new page is one file in ``pages/html``, its script in ``pages/static``, and
one entry in :data:`PAGES` (which also feeds the navigation bar, through
``/pages/nav``; a page whose endpoints this API lacks is skipped).
"""

from __future__ import annotations

from collections.abc import Collection
from functools import cache
from pathlib import Path
from typing import Any, Final

from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from passerelle.connectors.data_query import dashboard
from passerelle.connectors.data_query.catalog import DIMENSIONS, METRICS

ROOT: Final = Path(__file__).resolve().parent / "pages"
PAGES: Final[dict[str, tuple[str, str]]] = {
    "builder": ("builder.html", "Template builder"),
    "dashboard": ("dashboard.html", "Live dashboard"),
    "operations": ("operations.html", "Operations"),
}
"""Page name (its URL is ``/pages/<name>``) → (file in ``pages/html``, title in the navigation bar)."""

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@cache
def _page(file: str) -> str:
    return (ROOT / "html" / file).read_text(encoding="utf-8")


def catalog_view() -> dict[str, list[dict[str, Any]]]:
    """The metrics and dimensions a query may name, with labels, types and definitions (the builder's lists)."""
    return {
        "metrics": [{"name": m.name, "label": m.label, "type": m.type, "definition": m.definition}
                    for m in METRICS.values()],
        "dimensions": [{"name": d.name, "label": d.label, "type": d.type, "time": d.time} for d in DIMENSIONS.values()],
    }  # fmt: skip


def install(app: FastAPI, skip: Collection[str] = ()) -> None:
    """Add the pages, their static files and the two JSON documents they read (no key needed: no data).

    ``skip``: pages whose endpoints this API does not serve (no analytics store): neither served nor listed.
    """
    static = ROOT / "static"
    if not (static / "charts.js").is_file():
        raise RuntimeError(f"the web pages' files are missing from {static} (package data not installed?)")
    app.mount("/pages/static", StaticFiles(directory=static), name="pages-static")

    @app.get("/pages", include_in_schema=False)
    async def pages_home() -> Response:
        return RedirectResponse(f"/pages/{next(n for n in PAGES if n not in skip)}", status_code=307)

    @app.get("/pages/nav", tags=["pages"], summary="the pages, for the navigation bar")
    async def nav() -> Any:
        return {"pages": [{"href": f"/pages/{name}", "title": title} for name, (_, title) in PAGES.items()
                          if name not in skip]}  # fmt: skip

    @app.get("/pages/catalog", tags=["pages"], summary="the metrics and dimensions a query may name")
    async def catalog() -> Any:
        return catalog_view()

    @app.get("/pages/dashboard/queries", tags=["pages"], summary="the live dashboard's queries, one per panel")
    async def dashboard_queries(
        period: str = Query(default=dashboard.DEFAULT_PERIOD, max_length=200),
        site: str | None = Query(default=None, max_length=200),
        step: str | None = Query(default=None, description="hour or day; default: hour for a one-day period"),
    ) -> Response:
        try:
            return JSONResponse({"panels": dashboard.dashboard_queries(period, site, step)})
        except ValueError as exc:
            return JSONResponse({"errors": [{"field": "step", "reason": str(exc)}]}, 400)

    def serve(file: str) -> Any:
        async def page() -> Response:
            return HTMLResponse(_page(file), headers=SECURITY_HEADERS)

        return page

    for name, (file, _title) in PAGES.items():
        if name in skip:
            continue
        app.add_api_route(f"/pages/{name}", serve(file), methods=["GET"], include_in_schema=False, name=f"page-{name}")
