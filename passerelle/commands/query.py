"""``passerelle query``: run a report template or an ad-hoc query through the partner API; list the templates.

The command is an HTTP client of ``passerelle api`` (the API owns the store:
with DuckDB no other process may open it), authenticated by an API key with
the ``query:read`` scope (``--key`` or ``PASSERELLE_API_KEY``). ``--format
table`` prints the rows as a table; the other formats are the API's, written
to ``--out`` or to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from passerelle.errors import PasserelleError

FILE_FORMATS = ("json", "csv", "xlsx", "html")
KEY_ENV = "PASSERELLE_API_KEY"
URL_ENV = "PASSERELLE_API_URL"


def _base_url(args: argparse.Namespace) -> str:
    if args.api:
        return str(args.api).rstrip("/")
    if os.environ.get(URL_ENV):
        return os.environ[URL_ENV].rstrip("/")
    from passerelle.settings import ApiSettings, load

    settings = load(ApiSettings)
    assert isinstance(settings, ApiSettings)
    return f"http://{settings.api_host}:{settings.api_port}"


def _client(args: argparse.Namespace) -> Any:
    import httpx

    key = args.key or os.environ.get(KEY_ENV)
    if not key:
        raise PasserelleError(f"no API key: give --key or set {KEY_ENV} (a key with the scope query:read)")
    return httpx.Client(base_url=_base_url(args), headers={"Authorization": f"Bearer {key}"}, timeout=300)


def _check(response: Any) -> Any:
    if response.status_code >= 400:
        try:
            problems = "; ".join(f"{e['field']}: {e['reason']}" for e in response.json()["errors"])
        except (ValueError, KeyError, TypeError):
            problems = response.text[:500]
        raise PasserelleError(f"the API answered {response.status_code}: {problems}")
    return response


def _request(client: Any, args: argparse.Namespace, fmt: str) -> Any:
    params: dict[str, str] = {"format": fmt}
    if args.period:
        params["period"] = args.period
    if args.compare:
        params["compare"] = "true"
    if args.query is not None:
        try:
            body = json.loads(args.query)
        except ValueError as exc:
            raise PasserelleError(f"--query is not JSON: {exc}") from None
        return _check(client.post("/v1/query", params=params, json=body))
    if not args.template:
        raise PasserelleError("name a TEMPLATE_ID or give --query JSON")
    return _check(client.get(f"/v1/query/templates/{args.template}/run", params=params))


def _table(answer: dict[str, Any], title: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    period = answer.get("period") or {}
    table = Table(title=title, caption=f"{period.get('start')} .. {period.get('end')} ({period.get('expression')})")
    for column in answer["columns"]:
        metric = column.get("kind") == "metric"
        table.add_column(str(column.get("label") or column["name"]), justify="right" if metric else "left")
    for row in answer["rows"]:
        table.add_row(*("" if value is None else str(value) for value in row))
    Console().print(table)


def _run(args: argparse.Namespace, client: Any = None) -> int:
    fmt = "json" if args.format == "table" else args.format
    own = client is None
    client = client or _client(args)
    try:
        response = _request(client, args, fmt)
    finally:
        if own:
            client.close()
    if args.format == "table" and args.out is None:
        _table(response.json(), args.template)
    elif args.out is not None:
        with open(args.out, "wb") as out:
            out.write(response.content)
        print(f"wrote {len(response.content)} bytes to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(response.text) if fmt != "xlsx" else sys.stdout.buffer.write(response.content)
    return 0


def _templates(args: argparse.Namespace, client: Any = None) -> int:
    own = client is None
    client = client or _client(args)
    try:
        templates = _check(client.get("/v1/query/templates")).json()["templates"]
    finally:
        if own:
            client.close()
    from rich.console import Console
    from rich.table import Column, Table

    # the id is what the user copies: never cut
    table = Table(Column("ID", no_wrap=True, min_width=16), "NAME", "VERSION", "PERIOD", "METRICS", "UPDATED")
    for t in templates:
        query = t.get("query") or {}
        table.add_row(t["id"], t["name"], str(t["version"]), str(query.get("period", "")),
                      ", ".join(query.get("metrics", [])), t["updated_at"])  # fmt: skip
    Console().print(table)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``query``."""
    p = sub.add_parser(
        "query",
        help="run report templates or ad-hoc queries through the partner API",
        description="Ask the partner API (`passerelle api`) for a report: a saved template or an ad-hoc query, "
        f"printed as a table or written as a file. Key: --key or {KEY_ENV} (scope query:read); API: --api or "
        f"{URL_ENV} (default: http://PASSERELLE_API_HOST:PASSERELLE_API_PORT).",
    )
    group = p.add_subparsers(dest="query_command", metavar="ACTION")
    group.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--key", help=f"API key <key_id>.<secret> (default: ${KEY_ENV})")
    common.add_argument("--api", help=f"API base URL (default: ${URL_ENV} or the API settings)")

    run = group.add_parser(
        "run",
        parents=[common],
        help="run a template or an ad-hoc query",
        description="Run TEMPLATE_ID (its default period unless --period) or the --query JSON body "
        '(e.g. \'{"metrics": ["visits"], "dimensions": ["day"], "period": "last7"}\').',
    )
    run.add_argument("template", metavar="TEMPLATE_ID", nargs="?", help="a template id (see `query templates`)")
    run.add_argument("--query", help="an ad-hoc query as JSON, instead of a template")
    run.add_argument("--period", help="last7, yesterday, lastmonth, {R:{D:-1}}, 2026-11-01,2026-11-30…")
    run.add_argument("--compare", action="store_true", help="add the previous period's metrics")
    run.add_argument("--format", choices=("table", *FILE_FORMATS), default="table", help="default: table")
    run.add_argument("--out", metavar="FILE", help="write the answer to FILE (default: stdout)")
    run.set_defaults(func=_run)

    lst = group.add_parser("templates", parents=[common], help="your saved templates",
                           description="List the templates of the key's partner.")  # fmt: skip
    lst.set_defaults(func=_templates)
