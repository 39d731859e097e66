"""MLflow registry webhooks as a CD feed: a receiver that verifies signatures, and an inbox.

When the registry is an `mlflow server`, it can POST an event for every new model version.
The receiver checks the HMAC-SHA256 signature MLflow computes over
`<delivery id>.<timestamp>.<body>` with the webhook's secret, refuses stale timestamps (replays)
and unsigned or forged deliveries, and stores each accepted delivery once in an SQLite inbox
under the environment's root. The CD sensor reads the inbox beside its own registry polling.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
# Deliveries older (or newer) than this many seconds are refused as possible replays.
TOLERANCE_SECONDS = 300
MAX_BODY_BYTES = 1_000_000
PATH = "/mlflow-webhook"


class WebhookError(ValueError):
    """A delivery the receiver refuses; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


def sign(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    """The signature header value MLflow sends for a delivery."""
    digest = hmac.new(
        secret.encode(), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256
    ).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance: int = TOLERANCE_SECONDS,
) -> dict[str, Any]:
    """Check a delivery's signature and age; return its JSON payload.

    Raises:
        WebhookError: A header is missing, the timestamp is stale, the signature does not
            match (401), or the body is not a JSON object (400).
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    missing = [
        h for h in (SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_HEADER) if h.lower() not in lowered
    ]
    if missing:
        raise WebhookError(f"delivery lacks header(s) {', '.join(missing)}")
    timestamp = lowered[TIMESTAMP_HEADER.lower()]
    try:
        age = abs((now if now is not None else time.time()) - int(timestamp))
    except ValueError as error:
        raise WebhookError(f"{TIMESTAMP_HEADER} {timestamp!r} is not a Unix time") from error
    if age > tolerance:
        raise WebhookError(f"delivery timestamp is {age:.0f} s off, more than {tolerance} s")
    try:
        text = body.decode()
    except UnicodeDecodeError as error:
        raise WebhookError("body is not UTF-8", status=400) from error
    expected = sign(secret, lowered[DELIVERY_HEADER.lower()], timestamp, text)
    if not hmac.compare_digest(expected, lowered[SIGNATURE_HEADER.lower()]):
        raise WebhookError(f"{SIGNATURE_HEADER} does not match the body and the shared secret")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise WebhookError(f"body is not JSON: {error}", status=400) from error
    if not isinstance(payload, dict):
        raise WebhookError("body is not a JSON object", status=400)
    return payload


@dataclass(frozen=True)
class Delivery:
    """One accepted delivery in the inbox."""

    seq: int
    delivery_id: str
    entity: str
    action: str
    model: str | None
    version: str | None
    received_at: float
    payload: dict[str, Any]


class Inbox:
    """Accepted deliveries in an SQLite file, each delivery id once, numbered in arrival order."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute(
                "create table if not exists deliveries ("
                " seq integer primary key autoincrement, delivery_id text unique not null,"
                " entity text, action text, model text, version text,"
                " received_at real not null, payload text not null)"
            )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10)
        db.execute("pragma journal_mode=wal")
        return db

    def add(self, delivery_id: str, payload: Mapping[str, Any]) -> bool:
        """Store a delivery; False when its id was stored before (a retry or a replay)."""
        data = payload.get("data") or {}
        with self._lock, self._connect() as db:
            cursor = db.execute(
                "insert or ignore into deliveries"
                " (delivery_id, entity, action, model, version, received_at, payload)"
                " values (?, ?, ?, ?, ?, ?, ?)",
                (
                    delivery_id,
                    payload.get("entity"),
                    payload.get("action"),
                    data.get("name"),
                    None if data.get("version") is None else str(data.get("version")),
                    time.time(),
                    json.dumps(payload, sort_keys=True),
                ),
            )
            return cursor.rowcount == 1

    def since(self, seq: int) -> list[Delivery]:
        """Deliveries after `seq`, oldest first."""
        with self._connect() as db:
            rows = db.execute(
                "select seq, delivery_id, entity, action, model, version, received_at, payload"
                " from deliveries where seq > ? order by seq",
                (seq,),
            ).fetchall()
        return [Delivery(*row[:7], json.loads(row[7])) for row in rows]


def make_server(inbox: Inbox, secret: str, host: str = "127.0.0.1", port: int = 0):
    """An HTTP server accepting signed MLflow deliveries at `/mlflow-webhook` into `inbox`.

    Answers 200 for a stored (or already stored) delivery, 401 for a bad or missing
    signature, 400 for a body that is not a JSON object, 413 for a body over 1 MB and 404 for
    other paths. Nothing is stored unless the signature verifies.
    """
    if not secret:
        raise ValueError("the webhook receiver needs a shared secret (MLOPS_WEBHOOK_SECRET)")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, status: int, body: Mapping[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 - the http.server naming
            if self.path != PATH:
                self._answer(404, {"error": f"unknown path {self.path}; deliveries go to {PATH}"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                self._answer(400, {"error": "Content-Length is not a number"})
                return
            if length > MAX_BODY_BYTES:
                self._answer(413, {"error": f"body of {length} bytes exceeds {MAX_BODY_BYTES}"})
                return
            body = self.rfile.read(length)
            try:
                payload = verify(secret, dict(self.headers.items()), body)
            except WebhookError as error:
                self._answer(error.status, {"error": str(error)})
                return
            new = inbox.add(self.headers[DELIVERY_HEADER], payload)
            self._answer(200, {"stored": new})

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

    return ThreadingHTTPServer((host, port), Handler)
