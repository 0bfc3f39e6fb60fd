"""A stand-in for the emailing partner's HTTP API, for tests and demos: records everything, fails on demand.

It accepts any ``POST``/``PUT``/``PATCH`` outside ``/_*`` like a partner would
(202 and a small JSON answer), records each request (method, path, headers,
idempotency key, JSON body, time, the status it answered), and can be told to
misbehave through ``POST /_control``::

    {"fail_ratio": 0.2, "status": 500, "delay_ms": 0, "fail_for_s": 10, "retry_after": "1",
     "require_headers": {"Authorization": "Bearer t0ken"}, "seed": 7, "reset": false}

It honours ``Idempotency-Key`` as real partners do: a request whose key was
already delivered is answered 202 again (header ``Idempotent-Replayed: true``)
and is not delivered twice. ``GET /_delivered`` gives the distinct keys that
were delivered (with how many deliveries each: more than 1 would be a partner
sending the same email twice) and ``replays``, how many repeated requests each
key got (a bridge re-sending after a crash or a lost answer). Every request,
replays included, is kept in ``GET /_requests`` for tests to judge.

Failure injection is deterministic: whether the n-th request carrying key
``k`` fails depends only on ``(seed, k, n)``, not on the order concurrent
requests arrive in, so a test run can be replayed exactly.

Run it with ``python -m passerelle.connectors.emailing.standin --port 8099``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

CONTROL_FIELDS = ("fail_ratio", "status", "delay_ms", "fail_for_s", "retry_after", "require_headers", "seed")


@dataclass
class Control:
    """How the stand-in misbehaves right now."""

    fail_ratio: float = 0.0
    status: int = 500
    delay_ms: int = 0
    fail_until: float = 0.0  # time.monotonic() until which every request fails
    retry_after: str | None = None
    require_headers: dict[str, str] = field(default_factory=dict)
    seed: int = 0

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data["fail_for_s"] = round(max(0.0, self.fail_until - time.monotonic()), 3)
        del data["fail_until"]
        return data


def draw(seed: int, key: str, n: int) -> float:
    """A number in [0, 1) fixed by (seed, key, n): the deterministic dice of failure injection."""
    digest = hashlib.sha256(f"{seed}\x00{key}\x00{n}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class StandIn:
    """The state of one stand-in: control settings and what it received."""

    def __init__(self, seed: int = 0) -> None:
        self.control = Control(seed=seed)
        self.requests: list[dict[str, Any]] = []
        self.seen: Counter[str] = Counter()
        self.delivered: Counter[str] = Counter()
        self.replays: Counter[str] = Counter()
        self.lock = threading.Lock()

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(changes) - set(CONTROL_FIELDS) - {"reset"})
        if unknown:
            raise ValueError(f"unknown control field(s): {', '.join(unknown)}; known: {', '.join(CONTROL_FIELDS)}")
        with self.lock:
            if changes.get("reset"):
                self.control = Control(seed=self.control.seed)
            c = self.control
            if "fail_ratio" in changes:
                ratio = float(changes["fail_ratio"])
                if not 0.0 <= ratio <= 1.0:
                    raise ValueError("fail_ratio must be within 0..1")
                c.fail_ratio = ratio
            if "status" in changes:
                c.status = int(changes["status"])
            if "delay_ms" in changes:
                c.delay_ms = max(0, int(changes["delay_ms"]))
            if "fail_for_s" in changes:
                c.fail_until = time.monotonic() + float(changes["fail_for_s"])
            if "retry_after" in changes:
                c.retry_after = None if changes["retry_after"] is None else str(changes["retry_after"])
            if "require_headers" in changes:
                c.require_headers = {str(k): str(v) for k, v in (changes["require_headers"] or {}).items()}
            if "seed" in changes:
                c.seed = int(changes["seed"])
            return c.public()

    def decide(self, key: str, headers: dict[str, str]) -> int:
        """The status to answer the next request carrying ``key`` with."""
        with self.lock:
            c = self.control
            for name, expected in c.require_headers.items():
                if headers.get(name.lower()) != expected:
                    return 401
            n = self.seen[key]
            self.seen[key] += 1
            if time.monotonic() < c.fail_until:
                return c.status
            if c.fail_ratio > 0 and draw(c.seed, key, n) < c.fail_ratio:
                return c.status
            return 202

    def is_replay(self, key: str) -> bool:
        """True when ``key`` was already delivered: answer as before, deliver nothing new."""
        with self.lock:
            return bool(key) and key in self.delivered

    def record(self, entry: dict[str, Any]) -> None:
        with self.lock:
            entry["seq"] = len(self.requests)
            self.requests.append(entry)
            key = entry["idempotency_key"]
            if entry.get("replay"):
                self.replays[key] += 1
            elif 200 <= entry["status"] < 300 and key:
                self.delivered[key] += 1

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
            self.seen.clear()
            self.delivered.clear()
            self.replays.clear()


def create_app(seed: int = 0) -> FastAPI:
    """The stand-in's ASGI app (``app.state.standin`` is its state, for in-process tests)."""
    standin = StandIn(seed)
    app = FastAPI(title="passerelle emailing partner stand-in", docs_url=None, redoc_url=None)
    app.state.standin = standin

    @app.get("/_control")
    async def get_control() -> dict[str, Any]:
        with standin.lock:
            return standin.control.public()

    @app.post("/_control")
    async def post_control(request: Request) -> Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object")
            return JSONResponse(standin.configure(changes))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    @app.get("/_requests")
    async def get_requests(key: str | None = None) -> dict[str, Any]:
        with standin.lock:
            found = [r for r in standin.requests if key is None or r["idempotency_key"] == key]
        return {"count": len(found), "requests": found}

    @app.delete("/_requests")
    async def delete_requests() -> dict[str, Any]:
        standin.clear()
        return {"cleared": True}

    @app.get("/_delivered")
    async def delivered() -> dict[str, Any]:
        with standin.lock:
            keys = dict(standin.delivered)
            replays = dict(standin.replays)
        return {"count": len(keys), "keys": keys, "replays": replays}

    @app.api_route("/{path:path}", methods=["POST", "PUT", "PATCH"])
    async def partner(path: str, request: Request) -> Response:
        received_at = time.time()
        raw = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        key = headers.get("idempotency-key", "")
        body: Any = None
        replay = standin.is_replay(key)
        try:
            body = json.loads(raw) if raw else None
            status = 202 if replay else standin.decide(key, headers)
        except ValueError:
            status = 400
        delay = standin.control.delay_ms
        if delay:
            await asyncio.sleep(delay / 1000)
        standin.record(
            {
                "method": request.method,
                "path": "/" + path,
                "query": str(request.url.query),
                "headers": headers,
                "idempotency_key": key,
                "body": body,
                "raw": None if body is not None or not raw else raw.decode(errors="replace"),
                "received_at": received_at,
                "status": status,
                "replay": replay,
            }
        )
        if replay:
            return JSONResponse({"accepted": True, "id": key}, status_code=status,
                                headers={"Idempotent-Replayed": "true"})  # fmt: skip
        if 200 <= status < 300:
            return JSONResponse({"accepted": True, "id": key}, status_code=status)
        extra = {"Retry-After": standin.control.retry_after} if standin.control.retry_after else {}
        answers = {400: "body is not valid JSON", 401: "missing or wrong credentials"}
        error = answers.get(status, f"injected failure {status}")
        return JSONResponse({"error": error, "id": key}, status_code=status, headers=extra)

    return app


def main(argv: list[str] | None = None) -> None:
    """``python -m passerelle.connectors.emailing.standin --port P [--host H] [--seed S]``."""
    import uvicorn

    parser = argparse.ArgumentParser(description="emailing partner stand-in (records requests, fails on demand)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--seed", type=int, default=0, help="seed of the deterministic failure injection")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.seed), host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
