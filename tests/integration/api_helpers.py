"""What the partner API tests share: its topics and keys on a real broker, the process environment, the
CLI called in-process, and the API served by uvicorn on a port (for a browser)."""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections.abc import Iterable, Iterator

import pytest
from fastapi import FastAPI

from passerelle.cli import main
from passerelle.connectors.partner_api.config import ApiTopics
from tests.integration.kafka_helpers import create_topics


def cli(*args: str) -> tuple[int, str]:
    """``passerelle <args>`` in this process: (exit code, what it printed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


def api_topics(bootstrap: str, suffix: str) -> ApiTopics:
    """The API's four compacted tables, created under names ending in ``suffix`` (unique per test module)."""
    topics = ApiTopics(campaigns=f"campaigns.{suffix}", undeclared=f"campaigns.undeclared.{suffix}",
                       keys=f"partners.keys.{suffix}", templates=f"query.templates.{suffix}")  # fmt: skip
    create_topics(bootstrap, {topics.campaigns: 1, topics.undeclared: 1, topics.keys: 1, topics.templates: 1},
                  {"cleanup.policy": "compact"})  # fmt: skip
    return topics


def isolate_env(mp: pytest.MonkeyPatch, bootstrap: str, registry_url: str) -> None:
    """No ``PASSERELLE_*`` setting of the developer's shell leaks in; the broker and registry are the tests'."""
    for name in list(os.environ):
        if name.startswith("PASSERELLE_"):
            mp.delenv(name)
    mp.setenv("PASSERELLE_BOOTSTRAP_SERVERS", bootstrap)
    mp.setenv("PASSERELLE_SCHEMA_REGISTRY_URL", registry_url)


def make_keys(keys_topic: str, specs: Iterable[tuple[str, str, list[str]]]) -> dict[str, str]:
    """API keys made with ``passerelle partners add``: (name, partner, scopes) → {name: key}."""
    keys = {}
    for name, partner, scopes in specs:
        scope_args = [a for s in scopes for a in ("--scope", s)]
        code, out = cli("partners", "add", partner, *scope_args, "--label", name, "--topic", keys_topic)
        assert code == 0, out
        keys[name] = out.strip()
    return keys


@contextlib.contextmanager
def served(app: FastAPI, timeout_s: float = 60.0) -> Iterator[str]:
    """``app`` served by uvicorn on a free local port, in a thread: yields its base URL once it answers."""
    from passerelle.connectors.partner_api.server import bind, server
    from passerelle.deploy.local.stack import free_port

    port = free_port()
    sock = bind("127.0.0.1", port)
    srv = server(app, "127.0.0.1", port, log_level="warning")
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not srv.started:
            assert thread.is_alive(), "uvicorn stopped while starting (see the log above)"
            assert time.monotonic() < deadline, f"uvicorn did not start within {timeout_s:.0f} s"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(30)
        sock.close()
