"""The operations page's data: the panel definitions, and Prometheus's two query endpoints behind an API key.

- ``GET /pages/operations/panels`` (no key: definitions, no data): the panels of
  :mod:`passerelle.connectors.monitoring.panels` (title, PromQL, unit,
  legend) and the firing-alerts query, the same ones the Grafana dashboard
  in ``deploy/monitoring/grafana/`` is generated from.
- ``GET /pages/operations/api/query?query=&time=`` and
  ``GET /pages/operations/api/query_range?query=&start=&end=&step=`` (scope
  ``monitoring:read``): forwarded to the configured Prometheus's
  ``/api/v1/query`` and ``/api/v1/query_range``, answered with Prometheus's own
  JSON. Nothing else is forwarded: the path is fixed here, only these
  parameters pass, so the route cannot be turned to reach another URL.

Why a proxy: the page's Content-Security-Policy admits requests to the API's
own origin only, and Prometheus listens on 127.0.0.1 without authentication;
the API puts its keys in front of it. Metrics are the platform's, not a
partner's, so ``monitoring:read`` is an operator's scope (give it to an
operations key: ``passerelle partners add ops --scope monitoring:read``),
never mixed into a partner's key. Errors: 400/422 relaying Prometheus's
reason (a bad query), 401/403, 502 when Prometheus does not answer (naming
its URL and the setting), 503 when the API has no Prometheus configured, 504 past the timeout.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from functools import cache
from typing import Any, Final

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from passerelle.connectors.monitoring.grafana import FIRING_ALERTS
from passerelle.connectors.monitoring.panels import PANELS
from passerelle.connectors.partner_api.campaign_rules import FieldError
from passerelle.connectors.partner_api.keys import Principal

log = logging.getLogger(__name__)

SCOPE: Final = "monitoring:read"
ENDPOINTS: Final[dict[str, tuple[frozenset[str], frozenset[str]]]] = {
    "query": (frozenset({"query"}), frozenset({"time"})),
    "query_range": (frozenset({"query", "start", "end", "step"}), frozenset()),
}
"""Endpoint → (required parameters, optional ones): all that the page needs of Prometheus's HTTP API."""
MAX_QUERY_CHARS: Final = 4000
MAX_POINTS: Final = 11_000
"""Prometheus's own limit of points per series in a range query; checked here to answer before forwarding."""


class ProxyRefused(ValueError):
    """A request the proxy does not forward; ``field`` names the parameter."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def forwarded_params(endpoint: str, given: Mapping[str, str]) -> dict[str, str]:
    """The parameters sent to Prometheus for ``endpoint``: the required and optional ones, nothing else.

    An unknown parameter is refused rather than dropped, so a page asking for
    something this proxy does not forward learns it at once.
    """
    if endpoint not in ENDPOINTS:
        raise ProxyRefused("path", f"not forwarded: {endpoint}; only {', '.join(ENDPOINTS)}")
    required, optional = ENDPOINTS[endpoint]
    unknown = sorted(set(given) - required - optional)
    if unknown:
        raise ProxyRefused(unknown[0], f"not forwarded to Prometheus; {endpoint} takes "
                           f"{', '.join(sorted(required | optional))}")  # fmt: skip
    missing = sorted(name for name in required if not given.get(name, "").strip())
    if missing:
        raise ProxyRefused(missing[0], "required")
    if len(given["query"]) > MAX_QUERY_CHARS:
        raise ProxyRefused("query", f"longer than {MAX_QUERY_CHARS} characters")
    if endpoint == "query_range":
        try:
            start, end, step = float(given["start"]), float(given["end"]), float(given["step"])
        except ValueError:
            raise ProxyRefused("step", "start, end and step must be numbers (Unix seconds, seconds)") from None
        if step <= 0 or end < start:
            raise ProxyRefused("step", "step must be > 0 and end >= start")
        if (end - start) / step > MAX_POINTS:
            raise ProxyRefused("step", f"more than {MAX_POINTS} points a series; take a larger step")
    return {name: given[name] for name in sorted(required | optional) if name in given}


@cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every request: httpx builds one per client otherwise (~70 ms of CPU each, and the
    page sends two dozen queries a refresh)."""
    return ssl.create_default_context()


@dataclasses.dataclass(frozen=True)
class Answer:
    """What the proxy answers: Prometheus's JSON, or errors in the API's shape."""

    status: int
    body: dict[str, Any]


async def forward(base_url: str, endpoint: str, params: Mapping[str, str], timeout_s: float) -> Answer:
    """GET ``<base_url>/api/v1/<endpoint>`` with the checked ``params``; errors the API's way."""
    url = f"{base_url.rstrip('/')}/api/v1/{endpoint}"
    hint = "is it running (`passerelle up --with monitoring`) and is PASSERELLE_API_PROMETHEUS_URL right?"
    try:
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, verify=_tls()) as client:
            response = await client.get(url, params=dict(params))
    except httpx.TimeoutException:
        reason = f"Prometheus at {base_url} did not answer within {timeout_s:g} s"
        return Answer(504, {"errors": [FieldError("prometheus", reason).as_json()]})
    except httpx.HTTPError as exc:
        reason = f"Prometheus at {base_url} is unreachable ({type(exc).__name__}: {exc}); {hint}"
        return Answer(502, {"errors": [FieldError("prometheus", reason).as_json()]})
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "status" not in body:
        reason = f"{url} answered HTTP {response.status_code} without Prometheus's JSON; {hint}"
        return Answer(502, {"errors": [FieldError("prometheus", reason).as_json()]})
    if body["status"] != "success":  # bad_data (400), execution (422), timeout (503)...: the query's fault
        reason = f"Prometheus refused the query ({body.get('errorType', '?')}): {body.get('error', '')}"
        status = response.status_code if response.status_code in (400, 422) else 502
        return Answer(status, {"errors": [FieldError("query", reason).as_json()]})
    return Answer(200, body)


def panels_view() -> dict[str, Any]:
    """The panels as the page reads them, and the query listing the firing alerts."""
    return {"panels": [dataclasses.asdict(p) for p in PANELS], "alerts_query": FIRING_ALERTS,
            "runbooks": "docs/runbooks.md"}  # fmt: skip


def install(app: FastAPI, prometheus_url: str | None, timeout_s: float,
            scoped: Callable[[str], Callable[..., Awaitable[Principal]]]) -> None:  # fmt: skip
    """Add the panels document and the two forwarding routes (the page itself is in ``page_routes.PAGES``).

    Without ``prometheus_url`` the routes exist and answer 503 naming the setting, so the page says what is missing.
    """
    can_read = Depends(scoped(SCOPE))

    @app.get("/pages/operations/panels", tags=["pages"], summary="the operations page's panels (title, PromQL, unit)")
    async def panels() -> Any:
        return panels_view()

    async def relay(endpoint: str, request: Request) -> Response:
        try:
            params = forwarded_params(endpoint, dict(request.query_params))
        except ProxyRefused as exc:
            return JSONResponse({"errors": [FieldError(exc.field, exc.reason).as_json()]}, 400)
        if prometheus_url is None:
            reason = "no Prometheus is configured for this API: set PASSERELLE_API_PROMETHEUS_URL"
            return JSONResponse({"errors": [FieldError("prometheus", reason).as_json()]}, 503)
        answer = await forward(prometheus_url, endpoint, params, timeout_s)
        if answer.status >= 500:
            log.warning("operations page: %s", answer.body["errors"][0]["reason"])
        return JSONResponse(answer.body, answer.status, headers={"Cache-Control": "no-store"})

    @app.get("/pages/operations/api/query", tags=["operations"],
             summary="Prometheus's instant query, forwarded (scope monitoring:read)")  # fmt: skip
    async def query(request: Request, who: Principal = can_read) -> Response:
        return await relay("query", request)

    @app.get("/pages/operations/api/query_range", tags=["operations"],
             summary="Prometheus's range query, forwarded (scope monitoring:read)")  # fmt: skip
    async def query_range(request: Request, who: Principal = can_read) -> Response:
        return await relay("query_range", request)
