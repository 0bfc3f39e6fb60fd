"""The baseline the collector is measured against: the least a Python endpoint can do for the same promise.

A bare ASGI app (no framework) on the same uvicorn stack as the collector:
``GET /hit`` parses the query, produces one record, waits for the broker's
acknowledgement and answers the 1x1 GIF; ``POST /v1/events`` parses the JSON
body, produces one record per event and answers ``{"accepted": n}`` once all
are acknowledged. Same producer guarantees as the collector (``acks=all``,
idempotence, lz4, ``linger.ms`` 5), one future per request resolved from a
poll thread. No validation, no Avro, no metrics, no limits: the difference
between this and the collector is the price of the collector's promises.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from confluent_kafka import KafkaError, Message, Producer

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002014400003b")
GIF_HEADERS = [(b"content-type", b"image/gif"), (b"cache-control", b"no-cache, no-store")]
JSON_HEADERS = [(b"content-type", b"application/json")]


class Acks:
    """One future per request, resolved on the loop when the request's last delivery report lands."""

    def __init__(self, bootstrap: str) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                                  "linger.ms": 5, "compression.type": "lz4"})  # fmt: skip
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    async def send(self, topic: str, records: Sequence[tuple[bytes, bytes]]) -> int:
        """Produce ``records`` (key, value); the number acknowledged."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        state = [len(records), 0]  # remaining, failed
        lock = threading.Lock()

        def delivered(err: KafkaError | None, msg: Message) -> None:
            with lock:
                state[0] -= 1
                state[1] += err is not None
                done = state[0] == 0
            if done:
                loop.call_soon_threadsafe(future.set_result, None)

        for key, value in records:
            self.producer.produce(topic, value, key, on_delivery=delivered)
        await future
        return len(records) - state[1]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.producer.flush(5)


def make_app(acks: Acks, topic: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        if path == "/hit":
            params = dict(parse_qsl(scope["query_string"].decode("latin-1")))
            ok = await acks.send(topic, [(params.get("vid", "").encode(), scope["query_string"])])
            status, headers, body = (200, GIF_HEADERS, GIF) if ok else (503, JSON_HEADERS, b"{}")
        elif path == "/v1/events":
            chunks = []
            while True:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            events = json.loads(b"".join(chunks))["events"]
            records = [(str(e.get("visitor_id", "")).encode(), json.dumps(e).encode()) for e in events]
            accepted = await acks.send(topic, records)
            status = 200 if accepted == len(records) else 503
            headers, body = JSON_HEADERS, json.dumps({"accepted": accepted}).encode()
        elif path == "/healthz":
            status, headers, body = 200, JSON_HEADERS, b'{"status": "ok"}'
        else:
            status, headers, body = 404, JSON_HEADERS, b"{}"
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.collector_baseline", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", default="auto", help="uvicorn event loop (the collector's: auto picks uvloop)")
    parser.add_argument("--http", default="auto", help="uvicorn HTTP protocol (auto picks httptools)")
    args = parser.parse_args(argv)
    acks = Acks(args.bootstrap)
    try:
        uvicorn.run(make_app(acks, args.topic), host="127.0.0.1", port=args.port, loop=args.loop, http=args.http,
                    log_level="warning", access_log=False, lifespan="on")  # fmt: skip
    finally:
        acks.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
