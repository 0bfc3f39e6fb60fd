"""The Confluent Schema Registry REST API subset, over ``SchemaRegistry``.

Only what confluent-kafka's ``SchemaRegistryClient`` and serdes, and Kafka
Connect's AvroConverter, call. Every error answers ``{"error_code", "message"}``
because clients read the Confluent code, not the HTTP status alone.

With an :class:`~schemas.registry.auth.Authenticator`, every request but
``GET /`` needs HTTP basic credentials and the routes that write need role
``write`` (see :mod:`passerelle.schemas.registry.auth` for the rules and the file format).

Limits, so that no request can exhaust the process:

- a request body may take at most ``MAX_BODY_BYTES`` (4 MiB): over that it is a
  413 (``error_code`` 41301) answered before a byte of it is read when
  Content-Length says so, or as soon as a chunked body passes the limit; the
  connection is then closed, never drained;
- a schema may take at most 900 KiB in its ``_schemas`` record, so that it fits
  in one Kafka record (413, ``error_code`` 41302; see :mod:`passerelle.schemas.registry.service`);
  the body limit leaves room for that schema indented and escaped in JSON;
- JSON nested too deeply for the parser is a 400 (``error_code`` 400), like any
  body that is not JSON.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from passerelle.schemas.registry import errors
from passerelle.schemas.registry.auth import REALM, SCOPE_KEY, Authenticator, User, forbidden, is_anonymous
from passerelle.schemas.registry.service import SchemaRegistry
from passerelle.schemas.registry.state import SchemaVersion

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"
MAX_BODY_BYTES = 4 * 1024 * 1024


class RegistryResponse(JSONResponse):
    media_type = MEDIA_TYPE


def _error(status: int, code: int, message: str) -> RegistryResponse:
    return RegistryResponse({"error_code": code, "message": message}, status_code=status)


async def json_body(request: Request) -> Any:
    """Parse the body whatever the content type says; Confluent clients send the vnd type, curl users JSON."""
    raw = await request.body()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise errors.body_not_json(str(exc)) from exc
    except RecursionError:  # e.g. "[" x 100,000: Python's parser gives up past ~1,000 levels
        raise errors.body_too_deep() from None


JsonBody = Annotated[Any, Depends(json_body)]


def _flag(request: Request, *names: str) -> bool:
    """Query booleans: the Python client sends ``True``/``False`` as well as ``true``/``false``."""
    return any(request.query_params.get(name, "false").strip().lower() == "true" for name in names)


def _page(items: list[Any], request: Request) -> list[Any]:
    try:
        offset = max(0, int(request.query_params.get("offset", 0)))
        limit = int(request.query_params.get("limit", -1))
    except ValueError:
        return items
    items = items[offset:]
    return items if limit < 0 else items[:limit]


def _version_body(entry: SchemaVersion) -> dict[str, Any]:
    body: dict[str, Any] = {"subject": entry.subject, "version": entry.version, "id": entry.id}
    if entry.schema_type != "AVRO":
        body["schemaType"] = entry.schema_type
    body["schema"] = entry.schema
    return body


def _body_dict(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise errors.RegistryError(422, 422, "the request body must be a JSON object")
    return body


def _too_large(exc: errors.RegistryError) -> RegistryResponse:
    response = _error(exc.http_status, exc.error_code, exc.message)
    response.headers["Connection"] = "close"  # the rest of the body stays unread: this connection is done
    return response


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413 without reading them whole.

    A Content-Length over the limit is answered before a byte is read; a
    chunked body (or one longer than it said) stops being read as soon as the
    bytes received pass the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            await _too_large(errors.body_too_large(self.max_bytes))(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise errors.body_too_large(self.max_bytes)  # the route's error handler answers it
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except errors.RequestTooLargeError as exc:  # read outside a route: answer it here
            if started:
                raise
            await _too_large(exc)(scope, receive, send)


class BasicAuthMiddleware:
    """Authenticates every request but the health probe; the user goes into the scope for the role check."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_anonymous(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        header = next((value for name, value in scope["headers"] if name == b"authorization"), None)
        try:
            scope[SCOPE_KEY] = self.authenticator.authenticate(header)
        except errors.RegistryError as exc:
            response = _error(exc.http_status, exc.error_code, exc.message)
            response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def require_write(request: Request) -> None:
    """Dependency of every route that writes: role ``read`` gets 403 (no authenticator: anyone writes)."""
    user: User | None = request.scope.get(SCOPE_KEY)
    if user is not None and not user.can_write:
        raise forbidden(user)


WRITES = [Depends(require_write)]


def create_app(
    registry: SchemaRegistry, authenticator: Authenticator | None = None, max_body_bytes: int = MAX_BODY_BYTES
) -> FastAPI:
    """An app answering for ``registry``; the server binds it, tests can drive it in process.

    With ``authenticator``, requests need HTTP basic credentials and writes need role ``write``.
    Bodies over ``max_body_bytes`` are refused with 413 (see the module docstring).
    """
    app = FastAPI(title="passerelle schema registry", default_response_class=RegistryResponse, openapi_url=None)
    if authenticator is not None:
        app.add_middleware(BasicAuthMiddleware, authenticator=authenticator)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)  # outermost: before anything reads

    @app.exception_handler(errors.RegistryError)
    async def _registry_error(request: Request, exc: errors.RegistryError) -> Response:
        if isinstance(exc, errors.RequestTooLargeError):
            return _too_large(exc)
        return _error(exc.http_status, exc.error_code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc.status_code, exc.status_code, f"HTTP {exc.status_code} {exc.detail}")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0].get("msg", "invalid") if exc.errors() else "invalid"
        return _error(422, 422, f"Unprocessable request: {first}")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> Response:
        return _error(500, 50001, f"Internal error: {type(exc).__name__}: {exc}")

    @app.get("/")
    def root() -> dict[str, Any]:
        return {}

    # --- subjects -----------------------------------------------------------------------

    @app.get("/subjects")
    def subjects(request: Request) -> list[str]:
        names = registry.subjects(
            deleted=_flag(request, "deleted"),
            deleted_only=_flag(request, "deleted_only", "deletedOnly"),
            prefix=request.query_params.get("subjectPrefix", ""),
        )
        return _page(names, request)

    @app.get("/subjects/{subject}/versions")
    def versions(subject: str, request: Request) -> list[int]:
        found = registry.versions(
            subject, deleted=_flag(request, "deleted"), deleted_only=_flag(request, "deleted_only", "deletedOnly")
        )
        return _page(found, request)

    @app.post("/subjects/{subject}/versions", dependencies=WRITES)
    def register(subject: str, body: JsonBody) -> dict[str, Any]:
        body = _body_dict(body)
        return {"id": registry.register(subject, body.get("schema"), body.get("schemaType"), body.get("references"))}

    @app.get("/subjects/{subject}/versions/{version}")
    def version(subject: str, version: str, request: Request) -> dict[str, Any]:
        return _version_body(registry.version(subject, version, deleted=_flag(request, "deleted")))

    @app.get("/subjects/{subject}/versions/{version}/schema")
    def version_schema(subject: str, version: str, request: Request) -> Response:
        entry = registry.version(subject, version, deleted=_flag(request, "deleted"))
        return Response(entry.schema, media_type=MEDIA_TYPE)

    @app.get("/subjects/{subject}/versions/{version}/referencedby")
    def referenced_by(subject: str, version: str) -> list[int]:
        registry.version(subject, version, deleted=True)
        return []  # references are not supported, so nothing refers to anything

    @app.delete("/subjects/{subject}/versions/{version}", dependencies=WRITES)
    def delete_version(subject: str, version: str, request: Request) -> int:
        return registry.delete_version(subject, version, permanent=_flag(request, "permanent"))

    @app.post("/subjects/{subject}")
    def lookup(subject: str, request: Request, body: JsonBody) -> dict[str, Any]:
        body = _body_dict(body)
        entry = registry.lookup(subject, body.get("schema"), body.get("schemaType"), deleted=_flag(request, "deleted"))
        return _version_body(entry)

    @app.delete("/subjects/{subject}", dependencies=WRITES)
    def delete_subject(subject: str, request: Request) -> list[int]:
        return registry.delete_subject(subject, permanent=_flag(request, "permanent"))

    # --- schemas by id --------------------------------------------------------------------

    @app.get("/schemas/types")
    def schema_types() -> list[str]:
        return ["AVRO"]

    @app.get("/schemas")
    def list_schemas(request: Request) -> list[dict[str, Any]]:
        deleted = _flag(request, "deleted")
        prefix = request.query_params.get("subjectPrefix", "")
        latest_only = _flag(request, "latestOnly")
        found: list[dict[str, Any]] = []
        for subject in registry.subjects(deleted=deleted, prefix=prefix):
            entries = registry.state.versions(subject, include_deleted=deleted)
            found += [_version_body(e) for e in (entries[-1:] if latest_only else entries)]
        return _page(found, request)

    @app.get("/schemas/ids/{schema_id}")
    def schema_by_id(schema_id: int, request: Request) -> dict[str, Any]:
        text, schema_type = registry.schema_by_id(schema_id)
        body: dict[str, Any] = {"schema": text}
        if schema_type != "AVRO":
            body["schemaType"] = schema_type
        if _flag(request, "fetchMaxId"):
            body["maxId"] = registry.state.max_id
        return body

    @app.get("/schemas/ids/{schema_id}/schema")
    def raw_schema_by_id(schema_id: int) -> Response:
        return Response(registry.schema_by_id(schema_id)[0], media_type=MEDIA_TYPE)

    @app.get("/schemas/ids/{schema_id}/subjects")
    def id_subjects(schema_id: int, request: Request) -> list[str]:
        users = registry.id_users(schema_id, _flag(request, "deleted"), request.query_params.get("subject"))
        return _page(sorted({u.subject for u in users}), request)

    @app.get("/schemas/ids/{schema_id}/versions")
    def id_versions(schema_id: int, request: Request) -> list[dict[str, Any]]:
        users = registry.id_users(schema_id, _flag(request, "deleted"), request.query_params.get("subject"))
        return _page([{"subject": u.subject, "version": u.version} for u in users], request)

    # --- config ---------------------------------------------------------------------------

    def _requested_level(body: Any) -> object:
        body = _body_dict(body)
        return body.get("compatibility", body.get("compatibilityLevel"))

    @app.get("/config")
    def get_config() -> dict[str, Any]:
        return {"compatibilityLevel": registry.global_level()}

    @app.put("/config", dependencies=WRITES)
    def put_config(body: JsonBody) -> dict[str, Any]:
        return {"compatibility": registry.set_global_level(_requested_level(body))}

    @app.delete("/config", dependencies=WRITES)
    def delete_config() -> dict[str, Any]:
        return {"compatibilityLevel": registry.delete_global_level()}

    @app.get("/config/{subject}")
    def get_subject_config(subject: str, request: Request) -> dict[str, Any]:
        return {"compatibilityLevel": registry.subject_level(subject, _flag(request, "defaultToGlobal"))}

    @app.put("/config/{subject}", dependencies=WRITES)
    def put_subject_config(subject: str, body: JsonBody) -> dict[str, Any]:
        return {"compatibility": registry.set_subject_level(subject, _requested_level(body))}

    @app.delete("/config/{subject}", dependencies=WRITES)
    def delete_subject_config(subject: str) -> dict[str, Any]:
        return {"compatibilityLevel": registry.delete_subject_level(subject)}

    @app.get("/mode")
    def get_mode() -> dict[str, Any]:
        return {"mode": "READWRITE"}

    @app.get("/mode/{subject}")
    def get_subject_mode(subject: str) -> dict[str, Any]:
        return {"mode": "READWRITE"}

    # --- compatibility --------------------------------------------------------------------

    def _compatibility(subject: str, version: str | None, request: Request, body: Any) -> dict[str, Any]:
        body = _body_dict(body)
        problems = registry.test_compatibility(subject, body.get("schema"), version, body.get("schemaType"))
        answer: dict[str, Any] = {"is_compatible": not problems}
        if _flag(request, "verbose"):
            answer["messages"] = problems
        return answer

    @app.post("/compatibility/subjects/{subject}/versions/{version}")
    def compatibility_version(subject: str, version: str, request: Request, body: JsonBody) -> dict[str, Any]:
        return _compatibility(subject, version, request, body)

    @app.post("/compatibility/subjects/{subject}/versions")
    def compatibility_all(subject: str, request: Request, body: JsonBody) -> dict[str, Any]:
        return _compatibility(subject, None, request, body)

    return app
