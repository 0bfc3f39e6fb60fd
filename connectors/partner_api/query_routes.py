"""The Data Query endpoints: ad-hoc queries, saved report templates, and their refreshable run URLs.

- ``POST /v1/query?format=`` (scope ``query:read``): run the query of the JSON
  body (``metrics``, ``dimensions``, ``site``, ``filters``, ``period``…).
- ``GET /v1/query/templates`` (``query:read``), ``POST`` (``query:write``):
  the partner's templates; ``GET|PUT|DELETE /v1/query/templates/{id}``; a
  save bumps ``version``. ``POST /v1/query/templates/{id}/token``
  (``query:write``) renews the run token (the old run URLs stop working).
- ``GET /v1/query/templates/{id}/run?period=&format=&compare=``: the
  template's result; ``period`` overrides the stored default (which stays
  relative). It authenticates with an API key (``query:read``, owner only) or
  with ``token=`` (the template's run token, see ``query_templates``): Excel
  and browsers cannot send headers, so the links the API hands out (``links``
  in the answers of create and token renewal) carry the token. ``format=iqy``
  answers an Excel web-query file pointing at the same URL in ``format=html``
  with the period left relative, so Excel's refresh brings the new days.
- ``GET /v1/attribution/markov?period=&format=`` (``query:read``): the
  data-driven attribution of a period label as ``passerelle attribution
  markov`` last computed it (``connectors/data_query/markov``), in any format
  but IQY; without ``period``, the most recently computed run. 404 naming the
  labels the store has.

Formats: ``json`` (query echoed, resolved period), ``csv``, ``xlsx``, ``html``,
``iqy``; results are streamed. Errors: 400 naming the problem (field
``query``, ``period``, ``format``), 401, 403 (scope, another partner's
template), 404, 503 (Kafka did not take a change). Templates live on the
compacted ``query.templates`` topic; results come from the analytics store
(``connectors/warehouse``), which with DuckDB is filled by a sink running in a
thread of the API (DuckDB admits one process per file).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlencode

from fastapi import Body, Depends, FastAPI, Query, Request, Security
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials

from passerelle.connectors.data_query import engine, formats, markov, periods
from passerelle.connectors.data_query.result import Result
from passerelle.connectors.partner_api import query_templates as qt
from passerelle.connectors.partner_api.app import _api_key, _bearer, principal  # create_app imports this module
from passerelle.connectors.partner_api.campaign_rules import FieldError
from passerelle.connectors.partner_api.config import ApiConfig, ApiStartupError
from passerelle.connectors.partner_api.keys import Principal
from passerelle.connectors.partner_api.tables import TableFollower, TopicWriter

if TYPE_CHECKING:
    from passerelle.connectors.warehouse.store import Store

log = logging.getLogger(__name__)

FORMAT_HELP = f"One of {', '.join(formats.FORMATS)}"
EXAMPLE: dict[str, Any] = {"metrics": ["visits", "orders"], "dimensions": ["day"], "period": "last7"}
PERIOD_HELP = "last7, yesterday, previous30, lastmonth, {R:{D:-1}}, 2026-11-01,2026-11-30…; default: the template's"


class QueryService:
    """The query side of the API: the templates table and its writer, the store, the in-process sink (DuckDB)."""

    def __init__(self, config: ApiConfig) -> None:
        if config.warehouse_url is None:
            raise ValueError("QueryService needs config.warehouse_url")
        self.config = config
        self.url = config.warehouse_url
        self.templates = TableFollower(config.conn, config.topics.templates)
        self.writer = TopicWriter(config.conn, config.topics.templates, "QueryTemplate",
                                  catalog_path=config.catalog_path, auto_register=config.auto_register_schemas,
                                  timeout_s=config.produce_timeout_s)  # fmt: skip
        self.store: Store | None = None
        self.lock = asyncio.Lock()
        self._stop = threading.Event()
        self._sink: threading.Thread | None = None
        self.sink: Any = None
        self.sink_error: str | None = None
        """Why the in-process sink stopped, if it did: the store no longer follows the topics (``/healthz``)."""

    def start(self) -> None:
        from passerelle.connectors.warehouse.store import StoreError, open_store

        try:
            self.store = open_store(self.url)
        except StoreError as exc:
            raise ApiStartupError(str(exc)) from exc
        self.templates.start(self.config.start_timeout_s)
        self.writer.start()
        if self.store.dialect == "duckdb" and self.config.warehouse_sink:
            self._start_sink(self.store)

    def _start_sink(self, store: Store) -> None:
        from passerelle.connectors.warehouse.rows import parse_site_timezones
        from passerelle.connectors.warehouse.sink import Sink, SinkConfig, parse_topics

        cfg = self.config
        try:
            zones, topics = parse_site_timezones(cfg.warehouse_site_timezones), parse_topics(cfg.warehouse_topics)
        except ValueError as exc:
            raise ApiStartupError(f"the warehouse sink of the API: {exc}") from exc
        sink = Sink(store, SinkConfig(connection=cfg.conn, topics=topics, site_timezones=zones,
                                      group_id=cfg.warehouse_group_id, catalog_path=cfg.catalog_path))  # fmt: skip
        self.sink = sink

        def loop() -> None:
            try:
                sink.run(self._stop)
            except Exception as exc:
                self.sink_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                log.exception("the warehouse sink in the API stopped")

        self._sink = threading.Thread(target=loop, name="warehouse-sink", daemon=True)
        self._sink.start()

    def close(self) -> None:
        self._stop.set()
        if self._sink is not None:
            self._sink.join(timeout=30)
        self.writer.close()
        self.templates.close()
        if self.store is not None:
            self.store.close()

    def sink_state(self) -> str | None:
        """``running``, ``stopped: <why>``, or None when this API runs no sink (PostgreSQL, or turned off)."""
        if self._sink is None:
            return None
        if self.sink_error is not None:
            return f"stopped: {self.sink_error}"
        return "running" if self._sink.is_alive() or self._stop.is_set() else "stopped"

    def the_store(self) -> Store:
        if self.store is None:
            raise RuntimeError("the query service is not started")
        return self.store

    async def publish(self, template_id: str, record: dict[str, Any] | None) -> None:
        from passerelle.connectors.partner_api.app import ApiError

        try:
            _, offset = await asyncio.to_thread(self.writer.write, template_id, record)
        except RuntimeError as exc:
            log.warning("template %s not written: %s", template_id, exc)
            raise ApiError(503, FieldError("template", "Kafka did not acknowledge the change; nothing changed, "
                                           "retry"), {"Retry-After": "5"}) from None  # fmt: skip
        self.templates.apply(template_id, record, offset)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _check_period(expression: str) -> None:
    periods.resolve(expression, datetime.now(UTC), "UTC")


def _filename(name: str, fmt: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:80] or "query"
    return f"{slug}.{fmt}"


def _run_result(store: Store, body: Mapping[str, Any], period_text: str | None, compare: bool | None) -> Result:
    """Parse, resolve the period in the site's zone (``period_text`` overrides the query's), run.

    ``QueryError`` / ``PeriodError`` go to the caller (400)."""
    query = engine.parse_query(body)
    expression = period_text or query.period
    if not expression:
        raise periods.PeriodError("no period: give ?period= or a period in the query (e.g. last7)")
    zone = engine.site_timezone(store, query.site)
    period = periods.resolve(expression, datetime.now(UTC), zone)
    wanted = query.compare if compare is None else compare
    return engine.run(store, query, period, compare=periods.previous(period) if wanted else None)


def install(app: FastAPI, service: QueryService, scoped: Callable[[str], Callable[..., Awaitable[Principal]]]) -> None:
    """Add the query endpoints to the API."""
    from passerelle.connectors.partner_api.app import ApiError, _responses

    can_read, can_write = Depends(scoped("query:read")), Depends(scoped("query:write"))

    def owned(template_id: str, who: Principal) -> dict[str, Any]:
        record = service.templates.get(template_id)
        if record is None:
            raise ApiError(404, FieldError("id", f"no template {template_id!r}"))
        if record.get("partner") != who.partner:
            raise ApiError(403, FieldError("id", f"template {template_id!r} belongs to another partner"))
        return record

    def links(request: Request, template_id: str, token: str) -> dict[str, str]:
        base = str(request.url_for("run_template", template_id=template_id))
        return {fmt: f"{base}?{urlencode({'format': fmt, 'token': token})}" for fmt in formats.FORMATS}

    def definition(body: Any) -> qt.Definition:
        found, errors = qt.check_definition(body, engine.parse_query, _check_period)
        if found is None:
            raise ApiError(400, errors)
        return found

    async def answer(body: Mapping[str, Any], period: str | None, fmt: str, compare: bool | None, *, title: str | None,
                     iqy_url: str | None = None) -> Response:  # fmt: skip
        fmt = fmt.lower()
        if fmt not in formats.FORMATS:
            raise ApiError(400, FieldError("format", f"unknown format {fmt!r}: one of {', '.join(formats.FORMATS)}"))
        store = service.the_store()
        if fmt == "iqy":
            if iqy_url is None:
                raise ApiError(400, FieldError("format", "iqy is for a template's run URL carrying its token"))
            await asyncio.to_thread(lambda: engine.parse_query(body))  # a broken template is refused now, not in Excel
            chunks: Iterator[bytes] = iter([formats.iqy(iqy_url)])
        else:
            try:
                result = await asyncio.to_thread(_run_result, store, body, period, compare)
            except engine.QueryError as exc:
                raise ApiError(400, FieldError("query", str(exc))) from None
            except periods.PeriodError as exc:
                raise ApiError(400, FieldError("period", str(exc))) from None
            chunks = formats.render(result, fmt, title=title)
        headers = {}
        if fmt in ("csv", "xlsx", "iqy"):
            headers["Content-Disposition"] = f'attachment; filename="{_filename(title or "query", fmt)}"'
        return StreamingResponse(chunks, media_type=formats.media_type(fmt), headers=headers)

    @app.post("/v1/query", tags=["query"], summary="run a query (scope query:read)",
              responses=_responses(400, 401, 403))  # fmt: skip
    async def adhoc(
        body: Annotated[dict[str, Any], Body(examples=[EXAMPLE])],
        who: Principal = can_read,
        format: str = Query(default="json", description=FORMAT_HELP + " (not iqy: save a template)"),
        period: str | None = Query(default=None, description="Overrides the body's period"),
    ) -> Response:
        return await answer(body, period, format, None, title=None)

    @app.get("/v1/attribution/markov", tags=["query"], responses=_responses(400, 401, 403, 404),
             summary="data-driven (Markov) attribution of a period label, as last computed (scope query:read)")
    async def markov_attribution(
        who: Principal = can_read,
        period: str | None = Query(default=None, description="The run's label (`passerelle attribution markov "
                                   "--label`); default: the most recently computed run"),
        format: str = Query(default="json", description=FORMAT_HELP + " (not iqy)"),
    ) -> Response:  # fmt: skip
        fmt = format.lower()
        if fmt not in formats.FORMATS or fmt == "iqy":
            choices = ", ".join(f for f in formats.FORMATS if f != "iqy")
            raise ApiError(400, FieldError("format", f"unknown format {fmt!r}: one of {choices}"))
        try:
            result = await asyncio.to_thread(markov.latest, service.the_store(), period)
        except markov.NoRunError as exc:
            raise ApiError(404, FieldError("period", str(exc))) from None
        headers = {}
        if fmt in ("csv", "xlsx"):
            name = _filename("markov-" + result.period.expression, fmt)
            headers["Content-Disposition"] = f'attachment; filename="{name}"'
        return StreamingResponse(formats.render(result, fmt, title="Markov attribution"),
                                 media_type=formats.media_type(fmt), headers=headers)  # fmt: skip

    @app.get("/v1/query/templates", tags=["query"], summary="your report templates (scope query:read)",
             responses=_responses(401, 403))  # fmt: skip
    async def list_templates(who: Principal = can_read) -> Any:
        mine = [r for _, r in sorted(service.templates.snapshot().items()) if r.get("partner") == who.partner]
        return {"templates": [qt.template_view(r) for r in sorted(mine, key=lambda r: (r["name"], r["template_id"]))]}

    @app.post("/v1/query/templates", status_code=201, tags=["query"],
              summary="save a report template (scope query:write); the answer's links carry its run token",
              responses=_responses(400, 401, 403, 503))  # fmt: skip
    async def create_template(request: Request, body: Annotated[Any, Body()], who: Principal = can_write) -> Any:
        found = definition(body)
        template_id, token = qt.new_template_id(), qt.new_token()
        record = qt.template_record(found, template_id, who.partner, who.key_id, _now_ms(), None, token)
        async with service.lock:
            await service.publish(template_id, record)
        return {**qt.template_view(record), "token": token, "links": links(request, template_id, token)}

    @app.get("/v1/query/templates/{template_id}", tags=["query"], summary="one of your templates (scope query:read)",
             responses=_responses(401, 403, 404))  # fmt: skip
    async def get_template(template_id: str, who: Principal = can_read) -> Any:
        return qt.template_view(owned(template_id, who))

    @app.put("/v1/query/templates/{template_id}", tags=["query"],
             summary="change one of your templates (scope query:write): its version goes up by one",
             responses=_responses(400, 401, 403, 404, 503))  # fmt: skip
    async def put_template(template_id: str, body: Annotated[Any, Body()], who: Principal = can_write) -> Any:
        found = definition(body)
        async with service.lock:
            previous = owned(template_id, who)
            record = qt.template_record(found, template_id, who.partner, who.key_id, _now_ms(), previous, None)
            await service.publish(template_id, record)
        return qt.template_view(record)

    @app.delete("/v1/query/templates/{template_id}", status_code=204, tags=["query"],
                summary="delete one of your templates (scope query:write): its run URLs stop working",
                responses=_responses(401, 403, 404, 503))  # fmt: skip
    async def delete_template(template_id: str, who: Principal = can_write) -> Response:
        async with service.lock:
            owned(template_id, who)
            await service.publish(template_id, None)
        return Response(status_code=204)

    @app.post("/v1/query/templates/{template_id}/token", tags=["query"],
              summary="renew a template's run token (scope query:write): the old run URLs stop working",
              responses=_responses(401, 403, 404, 503))  # fmt: skip
    async def renew_token(request: Request, template_id: str, who: Principal = can_write) -> Any:
        token = qt.new_token()
        async with service.lock:
            record = qt.with_token(owned(template_id, who), token, who.key_id, _now_ms())
            await service.publish(template_id, record)
        return {**qt.template_view(record), "token": token, "links": links(request, template_id, token)}

    @app.get("/v1/query/templates/{template_id}/run", name="run_template", tags=["query"],
             summary="run a template: with an API key (scope query:read) or its run token (?token=)",
             responses=_responses(400, 401, 403, 404))  # fmt: skip
    async def run_template(
        request: Request,
        template_id: str,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
        api_key: Annotated[str | None, Security(_api_key)],
        period: str | None = Query(default=None, description=PERIOD_HELP),
        format: str = Query(default="json", description=FORMAT_HELP),
        compare: bool | None = Query(default=None, description="Add the previous period's metrics (<metric>_previous)"),
        token: str | None = Query(default=None, description="The template's run token, instead of an API key"),
    ) -> Response:
        if token is not None and not (api_key or bearer):
            record = service.templates.get(template_id)
            if record is None or not qt.token_matches(token, record):
                raise ApiError(401, FieldError("token", "run token not valid for this template (renewed or deleted?)"))
        else:
            who = await principal(request, bearer, api_key)
            if "query:read" not in who.scopes:
                raise ApiError(403, FieldError("authorization", "this API key lacks the scope query:read"))
            record = owned(template_id, who)
        iqy_url = None
        if format.lower() == "iqy":
            if token is None:
                raise ApiError(400, FieldError("format", "the IQY file must carry the run token: use the iqy link "
                                               "given when the template was saved (or renew its token)"))  # fmt: skip
            params = {"format": "html", "token": token, **({"period": period} if period else {})}
            if compare is not None:
                params["compare"] = "true" if compare else "false"
            iqy_url = f"{request.url_for('run_template', template_id=template_id)}?{urlencode(params)}"
        return await answer(qt.stored_query(record), period, format, compare, title=str(record["name"]),
                            iqy_url=iqy_url)  # fmt: skip

    @app.exception_handler(engine.QueryError)
    async def query_error(request: Request, exc: engine.QueryError) -> Response:
        return JSONResponse({"errors": [{"field": "query", "reason": str(exc)}]}, 400)
