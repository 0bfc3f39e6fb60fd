"""The partner API over HTTP: campaign declarations, the undeclared tags, tagged URLs, impressions, metrics.

Every ``/v1`` endpoint needs an API key (``Authorization: Bearer <key>`` or
``X-Api-Key``) with the endpoint's scope, and acts for the key's partner
only. Errors are JSON, always ``{"errors": [{"field": ..., "reason": ...}]}``:
401 no/unknown/wrong/revoked key, 403 missing scope or another partner's
campaign, 404 no such campaign, 409 a key already declared, 413 body or batch
too large, 422 invalid fields (every problem at once), 503 Kafka did not
acknowledge the change (nothing was changed; retry).

A change is answered only once the broker acknowledged it on ``campaigns``
(a deletion is a tombstone), and is visible at once to the partner's next
requests. The rules are ``campaign_rules.validate_declaration``, the URLs
``tagging.tag_url``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from passerelle.connectors.partner_api import campaign_rules as rules
from passerelle.connectors.partner_api.config import ApiConfig
from passerelle.connectors.partner_api.keys import AuthError, KeyRing, Principal, Throttled
from passerelle.connectors.partner_api.metrics import ApiMetrics, RequestTimer
from passerelle.connectors.partner_api.tables import TableFollower, TopicWriter
from passerelle.connectors.partner_api.tagging import (
    landing_of,
    landing_problem,
    tag_of,
    tag_url,
)
from passerelle.schemas import clients

log = logging.getLogger(__name__)

Family = Literal["xtor", "at", "utm", "mtm"]


# --- errors --------------------------------------------------------------------------------------------------


class ApiError(StarletteHTTPException):
    """An error answered as ``{"errors": [{"field", "reason"}, ...]}``."""

    def __init__(
        self, status: int, errors: list[rules.FieldError] | rules.FieldError, headers: dict[str, str] | None = None
    ) -> None:
        self.errors = errors if isinstance(errors, list) else [errors]
        super().__init__(status, "; ".join(f"{e.field}: {e.reason}" for e in self.errors), headers)


def _error_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    return {"errors": errors}


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


class BodyLimit:
    """413 for a body over the limit, declared (``Content-Length``) or actually sent (chunked)."""

    def __init__(self, app: ASGIApp, limit: int, paths: dict[str, int] | None = None) -> None:
        self.app, self.default, self.paths = app, limit, paths or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.paths.get(scope.get("path", ""), self.default)  # per path: the batch imports are larger
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            reason = f"body of {int(declared)} bytes exceeds the limit of {limit} bytes"
            response = JSONResponse(_error_body([{"field": "body", "reason": reason}]), status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ApiError(413, rules.FieldError("body", f"body exceeds the limit of {limit} bytes"))
            return message

        await self.app(scope, limited, send)


# --- request and response shapes -----------------------------------------------------------------------------


class CampaignIn(BaseModel):
    """A campaign declaration (POST /v1/campaigns, PUT /v1/campaigns/{key})."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "key": "EREC-123",
                    "name": "Black Friday newsletter",
                    "landing_url": "https://shop.example/black-friday",
                    "channel": "email",
                    "valid_from": "2026-11-20T00:00:00Z",
                    "valid_to": "2026-12-01T00:00:00Z",
                    "cost_model": "flat",
                    "cost_amount": 1500,
                    "currency": "EUR",
                }
            ]
        },
    )

    key: str | None = Field(
        default=None,
        description="Campaign key hits will carry: xtor (EREC-123, SEC-9, AL-72…) or a slug for at/utm/mtm "
        "(weekly_newsletter). Required by POST; PUT takes it from the path.",
    )
    name: str = Field(description="Campaign name (1-200 characters).")
    landing_url: str = Field(description="Default landing page (absolute http(s) URL); the tag is added to it.")
    family: Family | None = Field(
        default=None, description="Tag family of the URLs: xtor, at (Piano), utm, mtm (Matomo). Default: xtor for "
        "an xtor-shaped key, else utm."
    )
    medium: str | None = Field(
        default=None, description=f"One of {', '.join(rules.CAMPAIGN_MEDIA)}. Default: the xtor prefix's, or the "
        "channel's."
    )
    channel: str | None = Field(default=None, description=f"One of {', '.join(rules.CHANNELS)}. Default: the medium's.")
    source: str | None = Field(
        default=None, description="at/utm/mtm only: the source written in the tag (utm_source…). Default: your partner "
        "id."
    )
    valid_from: datetime | None = Field(default=None, description="Start of validity, ISO 8601 (no offset: UTC).")
    valid_to: datetime | None = Field(default=None, description="End of validity, ISO 8601 (no offset: UTC).")
    cost_model: str | None = Field(default=None, description=f"One of {', '.join(rules.COST_MODELS)}.")
    cost_amount: float | None = Field(default=None, description="Cost per unit of the model (total for flat), >= 0.")
    currency: str | None = Field(default=None, description="ISO 4217 code of cost_amount, e.g. EUR.")


class DeclareUndeclaredIn(BaseModel):
    """Declaring a tag of the undeclared list: every field defaults to what the tag said."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    landing_url: str | None = Field(default=None, description="Default: the URL the tag was seen on, untagged.")
    family: Family | None = None
    medium: str | None = None
    channel: str | None = None
    source: str | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    cost_model: str | None = None
    cost_amount: float | None = None
    currency: str | None = None


class UrlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    campaign: str = Field(description="Key of one of your campaigns.")
    landing: str | None = Field(default=None, description="Landing URL to tag; default: the campaign's.")


class UrlBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    urls: list[UrlRequest] = Field(description="URLs to tag (at most PASSERELLE_API_MAX_BATCH_URLS).")


class CampaignOut(BaseModel):
    key: str
    name: str
    partner: str
    family: str | None
    channel: str
    medium: str
    source: str | None
    landing_url: str
    tagged_url: str
    valid_from: str | None
    valid_to: str | None
    cost_model: str | None
    cost_amount: float | None
    currency: str | None
    declared_at: str


class CampaignList(BaseModel):
    campaigns: list[CampaignOut]


class UndeclaredOut(BaseModel):
    key: str
    name: str
    source: str | None
    medium: str
    seen_url: str
    reported_at: str


class UndeclaredList(BaseModel):
    undeclared: list[UndeclaredOut]


class TaggedUrl(BaseModel):
    campaign: str
    landing: str
    url: str


class TaggedUrlList(BaseModel):
    urls: list[TaggedUrl]


ERRORS = {
    "description": 'Error: {"errors": [{"field": "...", "reason": "..."}]}',
    "content": {"application/json": {"example": {"errors": [{"field": "key", "reason": "required"}]}}},
}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: ERRORS for code in codes}


# --- conversions ---------------------------------------------------------------------------------------------


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _ms(value: datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def campaign_view(record: dict[str, Any]) -> dict[str, Any]:
    tag = tag_of(record)
    return {
        "key": record["key"],
        "name": record["name"],
        "partner": record["partner"],
        "family": tag.family if tag else None,
        "channel": record["channel"],
        "medium": record["medium"],
        "source": tag.source if tag else None,
        "landing_url": landing_of(record),
        "tagged_url": record["tagged_url_template"],
        "valid_from": _iso(record.get("valid_from")),
        "valid_to": _iso(record.get("valid_to")),
        "cost_model": record.get("cost_model"),
        "cost_amount": record.get("cost_amount"),
        "currency": record.get("currency"),
        "declared_at": _iso(record["declared_at"]),
    }


def build_record(body: CampaignIn | DeclareUndeclaredIn, key: str, partner: str, now_ms: int, defaults: dict[str, Any]
                 ) -> tuple[dict[str, Any], list[rules.FieldError]]:  # fmt: skip
    """The ``Campaign`` record a request declares (defaults filled), and the problems only the API sees."""
    given = {name: value for name, value in body.model_dump().items() if value is not None}
    data = {**defaults, **given}
    data["valid_from"], data["valid_to"] = _ms(data.get("valid_from")), _ms(data.get("valid_to"))
    return rules.campaign_record(key, data, partner, now_ms, source_given="source" in given)


def judged(record: dict[str, Any], early: list[rules.FieldError], table: dict[str, dict[str, Any]], partner: str
           ) -> tuple[list[rules.FieldError], list[rules.FieldError]]:  # fmt: skip
    """(invalid fields, clashes) of a declaration, field names as the API's (the template is ``landing_url``)."""
    found = rules.validate_declaration(record, table, partner)
    named = {e.field for e in early}
    key_bad = any(e.field == "key" and e.kind == "invalid" for e in [*early, *found])
    invalid = list(early)
    for error in found:
        if error.kind == "clash":
            continue
        field = "landing_url" if error.field == "tagged_url_template" else error.field
        if field in named or (field == "landing_url" and key_bad) or (field in ("channel",) and "medium" in named):
            continue
        invalid.append(rules.FieldError(field, error.reason))
    return invalid, [e for e in found if e.kind == "clash"]


# --- the service ---------------------------------------------------------------------------------------------


class Backend:
    """The Kafka side of the API: the three tables it follows, the writers of campaigns, impressions, metrics."""

    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        conn = config.conn
        self.keyring = KeyRing()
        self.keys = TableFollower(conn, config.topics.keys, on_change=self.keyring.update)
        self.campaigns = TableFollower(conn, config.topics.campaigns)
        self.undeclared = TableFollower(conn, config.topics.undeclared)
        self.writer = TopicWriter(
            conn,
            config.topics.campaigns,
            "Campaign",
            catalog_path=config.catalog_path,
            auto_register=config.auto_register_schemas,
            timeout_s=config.produce_timeout_s,
        )
        self.impressions, self.metrics = (
            TopicWriter(conn, topic, schema, catalog_path=config.catalog_path, timeout_s=config.produce_timeout_s,
                        auto_register=config.auto_register_schemas, linger_ms=5)
            for topic, schema in ((config.topics.impressions, "AdImpression"), (config.topics.metrics, "PartnerMetric"))
        )  # fmt: skip
        self.write_lock = asyncio.Lock()
        self._started = False

    def start(self) -> None:
        """Read the tables and start the writer (blocking); a second call does nothing."""
        if self._started:
            return
        self._started = True
        clients.ensure_reachable(self.config.conn, timeout_s=min(15.0, self.config.start_timeout_s))
        for table in (self.keys, self.campaigns, self.undeclared):
            table.start(self.config.start_timeout_s)
        for writer in (self.writer, self.impressions, self.metrics):
            writer.start()

    def close(self) -> None:
        for writer in (self.writer, self.impressions, self.metrics):
            writer.close()
        for table in (self.keys, self.campaigns, self.undeclared):
            table.close()

    @property
    def ready(self) -> bool:
        return all(t.ready for t in (self.keys, self.campaigns, self.undeclared))

    async def publish(self, key: str, record: dict[str, Any] | None) -> None:
        try:
            _, offset = await asyncio.to_thread(self.writer.write, key, record)
        except RuntimeError as exc:
            log.warning("campaign %s not written: %s", key, exc)
            raise ApiError(
                503, rules.FieldError("campaign", "Kafka did not acknowledge the change; nothing changed, retry"),
                {"Retry-After": "5"},
            ) from None  # fmt: skip
        self.campaigns.apply(key, record, offset)


_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <key_id>.<secret>")
_api_key = APIKeyHeader(name="X-Api-Key", auto_error=False, description="The API key, instead of Authorization")


async def principal(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    api_key: Annotated[str | None, Security(_api_key)],
) -> Principal:
    """The partner a request acts for: 401 without a valid key."""
    backend: Backend = request.app.state.backend
    presented = (api_key or "").strip() or (bearer.credentials.strip() if bearer else "")
    challenge = {"WWW-Authenticate": "Bearer"}
    if not presented:
        reason = "API key missing (Authorization: Bearer <key> or X-Api-Key)"
        raise ApiError(401, rules.FieldError("authorization", reason), challenge)
    try:
        return await asyncio.to_thread(backend.keyring.authenticate, presented)
    except Throttled as exc:
        log.warning("throttled an API key: %s", exc)
        reason = "too many attempts with this API key id; retry later"
        retry = {"Retry-After": str(math.ceil(exc.retry_after_s))}
        raise ApiError(429, rules.FieldError("authorization", reason), retry) from None
    except AuthError as exc:
        log.info("refused an API key: %s", exc)
        reason = "API key not valid (unknown, wrong or revoked)"
        raise ApiError(401, rules.FieldError("authorization", reason), challenge) from None


def scoped(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the principal, 403 unless its key has ``scope``."""

    async def check(who: Annotated[Principal, Depends(principal)]) -> Principal:
        if scope not in who.scopes:
            raise ApiError(403, rules.FieldError("authorization", f"this API key lacks the scope {scope}"))
        return who

    return check


def create_app(config: ApiConfig, backend: Backend | None = None) -> FastAPI:
    """The ASGI app; its lifespan reads the tables (blocking start-up) and closes the Kafka clients at shutdown."""
    backend = backend or Backend(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(backend.start)
        query = getattr(app.state, "query", None)  # the query endpoints, when a store is configured
        if query is not None:
            await asyncio.to_thread(query.start)
        try:
            yield
        finally:
            if query is not None:
                await asyncio.to_thread(query.close)
            await asyncio.to_thread(backend.close)

    app = FastAPI(
        title="passerelle partner API",
        version="1",
        description=__doc__,
        lifespan=lifespan,
        docs_url=None,  # served below with Swagger UI from the swagger-ui-bundle package, never a CDN
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    _serve_docs(app)
    app.state.backend = backend
    imports = {"/v1/impressions": config.max_import_body_bytes, "/v1/metrics": config.max_import_body_bytes}
    app.add_middleware(BodyLimit, limit=config.max_body_bytes, paths=imports)
    app.state.metrics = api_metrics = ApiMetrics()
    app.add_middleware(RequestTimer, metrics=api_metrics)  # outermost: a 413 of BodyLimit is timed too

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if isinstance(exc, ApiError):
            errors = exc.errors
        else:  # routing's own: unknown path (404), method not allowed (405)
            errors = [rules.FieldError("path" if exc.status_code == 404 else "request", str(exc.detail))]
        return JSONResponse(_error_body([e.as_json() for e in errors]), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"field": _field_of(tuple(e.get("loc", ()))), "reason": e.get("msg", "invalid")}
                  for e in exc.errors()]  # fmt: skip
        return JSONResponse(_error_body(errors), 422)

    can_read, can_write = Depends(scoped("campaigns:read")), Depends(scoped("campaigns:write"))

    def owned(key: str, who: Principal) -> dict[str, Any]:
        record = backend.campaigns.get(key)
        if record is None:
            raise ApiError(404, rules.FieldError("key", f"no campaign {key!r}"))
        if record.get("partner") != who.partner:
            raise ApiError(403, rules.FieldError("key", f"campaign {key!r} belongs to another partner"))
        return record

    async def declare(record: dict[str, Any], early: list[rules.FieldError], who: Principal, create: bool) -> bool:
        """Validate and publish; True if the key was new."""
        key = record["key"]
        async with backend.write_lock:  # one change at a time: the ownership check and the write stay together
            existing = backend.campaigns.get(key)
            if existing is not None and existing.get("partner") != who.partner and not create:
                raise ApiError(403, rules.FieldError("key", f"campaign {key!r} belongs to another partner"))
            invalid, clashes = judged(record, early, backend.campaigns.snapshot(), who.partner)
            if invalid:
                raise ApiError(422, invalid)
            if clashes:
                raise ApiError(409, [rules.FieldError("key", f"{key!r} is already declared by another partner")])
            if existing is not None and create:
                raise ApiError(409, rules.FieldError("key", f"{key!r} is already declared; PUT "
                                                     f"/v1/campaigns/{key} changes it"))  # fmt: skip
            await backend.publish(key, record)
        return existing is None

    def now_ms() -> int:
        return time.time_ns() // 1_000_000

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics: request latency by route and status")
    async def metrics() -> Response:
        api_metrics.ready.set(1 if backend.ready else 0)
        return Response(api_metrics.render(), media_type=api_metrics.content_type)

    @app.get("/healthz", tags=["operations"],
             summary="200 once the tables are read and followed; 503 before, or once the in-process warehouse "
             "sink stopped (queries would answer from a store that no longer follows the topics)")  # fmt: skip
    async def healthz() -> Response:
        ok = backend.ready
        body: dict[str, Any] = {"status": "ok" if ok else "unavailable"}
        query = getattr(app.state, "query", None)
        sink = query.sink_state() if query is not None else None
        if sink is not None:
            body["warehouse_sink"] = sink
            if ok and sink != "running":
                body["status"], ok = "degraded", False
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.post("/v1/campaigns", status_code=201, response_model=CampaignOut, tags=["campaigns"],
              summary="declare a campaign (scope campaigns:write)",
              responses=_responses(401, 403, 409, 413, 422, 503))  # fmt: skip
    async def create_campaign(body: CampaignIn, who: Principal = can_write) -> Any:
        if not body.key:
            raise ApiError(422, rules.FieldError("key", "required"))
        record, early = build_record(body, body.key, who.partner, now_ms(), {})
        await declare(record, early, who, create=True)
        return campaign_view(record)

    @app.get("/v1/campaigns", response_model=CampaignList, tags=["campaigns"],
             summary="your campaigns (scope campaigns:read)", responses=_responses(401, 403))  # fmt: skip
    async def list_campaigns(who: Principal = can_read) -> Any:
        mine = [r for _, r in sorted(backend.campaigns.snapshot().items()) if r.get("partner") == who.partner]
        return {"campaigns": [campaign_view(r) for r in mine]}

    @app.get("/v1/campaigns/undeclared", response_model=UndeclaredList, tags=["undeclared"],
             summary="campaign tags seen on hits that nobody declared (scope campaigns:read)",
             responses=_responses(401, 403))  # fmt: skip
    async def list_undeclared(who: Principal = can_read) -> Any:
        declared = backend.campaigns.snapshot()
        drafts = [d for k, d in sorted(backend.undeclared.snapshot().items()) if k not in declared]
        return {"undeclared": [undeclared_view(d) for d in drafts]}

    @app.post("/v1/campaigns/undeclared/{key}/declare", status_code=201, response_model=CampaignOut,
              tags=["undeclared"], summary="declare a tag of the undeclared list (scope campaigns:write)",
              responses=_responses(401, 403, 404, 409, 413, 422, 503))  # fmt: skip
    async def declare_undeclared(key: str, body: DeclareUndeclaredIn | None = None, who: Principal = can_write) -> Any:
        owner = backend.campaigns.get(key)
        if owner is not None:
            reason = "already declared" + ("" if owner.get("partner") == who.partner else " by another partner")
            raise ApiError(409, rules.FieldError("key", reason))
        draft = backend.undeclared.get(key)
        if draft is None:
            raise ApiError(404, rules.FieldError("key", f"{key!r} is not in the undeclared list"))
        defaults = rules.draft_defaults(draft)
        record, early = build_record(body or DeclareUndeclaredIn(), key, who.partner, now_ms(), defaults)
        await declare(record, early, who, create=True)
        return campaign_view(record)

    @app.post("/v1/campaigns/urls", response_model=TaggedUrlList, tags=["tagged URLs"],
              summary="tagged URLs for several campaigns and landing pages (scope campaigns:read)",
              responses=_responses(401, 403, 413, 422))  # fmt: skip
    async def tagged_urls(body: UrlBatchIn, who: Principal = can_read) -> Any:
        if len(body.urls) > config.max_batch_urls:
            raise ApiError(413, rules.FieldError("urls", f"{len(body.urls)} URLs in one request; at most "
                                                 f"{config.max_batch_urls}, split the batch"))  # fmt: skip
        results, invalid, foreign = [], [], []
        for index, item in enumerate(body.urls):
            record = backend.campaigns.get(item.campaign)
            if record is None:
                invalid.append(rules.FieldError(f"urls[{index}].campaign", f"no campaign {item.campaign!r}"))
                continue
            if record.get("partner") != who.partner:
                foreign.append(rules.FieldError(f"urls[{index}].campaign", "belongs to another partner"))
                continue
            try:
                results.append(tagged(record, item.landing))
            except ApiError as exc:
                invalid.extend(rules.FieldError(f"urls[{index}].landing", e.reason) for e in exc.errors)
        if foreign:
            raise ApiError(403, foreign)
        if invalid:
            raise ApiError(422, invalid)
        return {"urls": results}

    @app.get("/v1/campaigns/{key}", response_model=CampaignOut, tags=["campaigns"],
             summary="one of your campaigns (scope campaigns:read)",
             responses=_responses(401, 403, 404))  # fmt: skip
    async def get_campaign(key: str, who: Principal = can_read) -> Any:
        return campaign_view(owned(key, who))

    @app.put("/v1/campaigns/{key}", response_model=CampaignOut, tags=["campaigns"],
             summary="declare or replace one of your campaigns (scope campaigns:write); 201 when new, 200 replaced",
             responses=_responses(401, 403, 413, 422, 503))  # fmt: skip
    async def put_campaign(key: str, body: CampaignIn, response: Response, who: Principal = can_write) -> Any:
        if body.key is not None and body.key != key:
            raise ApiError(422, rules.FieldError("key", f"differs from the path's {key!r}"))
        record, early = build_record(body, key, who.partner, now_ms(), {})
        created = await declare(record, early, who, create=False)
        response.status_code = 201 if created else 200
        return campaign_view(record)

    @app.delete("/v1/campaigns/{key}", status_code=204, tags=["campaigns"],
                summary="delete one of your campaigns (scope campaigns:write): its hits become undeclared",
                responses=_responses(401, 403, 404, 503))  # fmt: skip
    async def delete_campaign(key: str, who: Principal = can_write) -> Response:
        async with backend.write_lock:
            owned(key, who)
            await backend.publish(key, None)
        return Response(status_code=204)

    @app.get("/v1/campaigns/{key}/url", response_model=TaggedUrl, tags=["tagged URLs"],
             summary="a landing URL carrying the campaign's tag (scope campaigns:read)",
             responses=_responses(401, 403, 404, 422))  # fmt: skip
    async def tagged_one(
        key: str,
        who: Principal = can_read,
        landing: str | None = Query(default=None, description="Landing URL to tag; default: the campaign's"),
    ) -> Any:
        try:
            return tagged(owned(key, who), landing)
        except ApiError as exc:
            if exc.status_code == 422:
                raise ApiError(422, [rules.FieldError("landing", e.reason) for e in exc.errors]) from None
            raise

    from passerelle.connectors.partner_api import impressions, metrics_routes  # they import this module

    impressions.install(app, backend, scoped("impressions:write"))
    metrics_routes.install(app, backend, scoped("metrics:write"))
    if config.warehouse_url is not None:
        from passerelle.connectors.partner_api import query_routes

        app.state.query = query_routes.QueryService(config)
        query_routes.install(app, app.state.query, scoped)
    if config.warehouse_url is not None or config.prometheus_url is not None:
        from passerelle.connectors.partner_api import ops_routes, page_routes

        # the template builder and the live dashboard (with a store), the operations page (its proxy answers 503
        # naming PASSERELLE_API_PROMETHEUS_URL while no Prometheus is configured)
        page_routes.install(app, skip=() if config.warehouse_url is not None else ("builder", "dashboard"))
        ops_routes.install(app, config.prometheus_url, config.prometheus_timeout_s, scoped)
    return app


def tagged(record: dict[str, Any], landing: str | None) -> dict[str, str]:
    """``{"campaign", "landing", "url"}`` for one of the partner's campaigns; 422 for a bad landing URL."""
    target = landing if landing is not None else landing_of(record)
    tag = tag_of(record)
    problem = landing_problem(target)
    if tag is None:
        raise ApiError(422, rules.FieldError("campaign", "its declaration carries no tag this API can write"))
    if problem is not None:
        raise ApiError(422, rules.FieldError("landing", problem))
    url = tag_url(target, tag)
    if len(url) > 2 * 2048:
        raise ApiError(422, rules.FieldError("landing", "the tagged URL would be too long"))
    return {"campaign": str(record["key"]), "landing": target, "url": url}


def undeclared_view(draft: dict[str, Any]) -> dict[str, Any]:
    partner = draft.get("partner")
    return {
        "key": draft["key"],
        "name": draft.get("name") or draft["key"],
        "source": None if partner in (None, "unknown") else partner,
        "medium": draft.get("medium") or "unknown",
        "seen_url": draft.get("tagged_url_template") or "",
        "reported_at": _iso(draft.get("declared_at")) or "",
    }


def _serve_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI with its scripts and styles served by the API itself (no CDN, works offline)."""
    import swagger_ui_bundle
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs/static", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="passerelle partner API",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon-32x32.png",
        )
