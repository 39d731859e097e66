"""The online REST server: score a transaction with each declared model's champion, log it.

`POST /v1/score` takes a transaction's keys and request-time fields (see `requests.py` and
`GET /openapi.json`), looks its card and merchant up in the online store, scores with the
primary model's version holding the `champion` alias and answers with the score, the decision
and the model version; `POST /v1/models/<name>/score` does the same with the champion of the
declared model `<name>` (`models.declaration.MODELS`; the fields it takes are its spec's). Each
request after authentication, answered or refused, becomes a row of the inference log before
its response is sent. `GET /healthz` says whether the process lives and what it serves
(`degraded` when a new champion failed to load and the previous one still serves); `GET
/readyz` answers 200 only while the primary model is loaded (and every other model whose
champion exists), the log writes and the online store answers. Both list every model served
(`models`: version, scorer, and why the reference pyfunc path serves when the compiled one
does not) and name the online store (`online_store`: backend and location).

A card the online store has never seen is scored with the features' documented defaults (the
model's `card_without_history` input tells it the card had no history) and marked `new_card`
in the answer and in the log. `POST /invocations` takes MLflow's scoring payloads
(`dataframe_split`, `dataframe_records`, `instances`, `inputs`) and answers as `mlflow models
serve` does (`{"predictions": [...]}`; errors `{"error_code", "message"}`), each row scored and
logged as a `/v1/score` request; `GET /ping` is MLflow's liveness probe. `GET /metrics` gives
the Prometheus text format (`serving.metrics`). A method a route does not take gets 405 with
an `Allow` header.

The HTTP layer is the standard library's threaded server speaking HTTP/1.1 with keep-alive,
one thread per connection. Stopping (`ScoringServer.stop`, or SIGTERM in `serve`) stops
accepting, lets requests already read finish and answer, closes idle connections, then
writes the inference log's last rows: every answered request is in the log.
"""

from __future__ import annotations

import contextlib
import datetime
import hmac
import http.server
import json
import logging
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from mlops_assets.features.online_store import OnlineStore, open_online_store
from mlops_assets.serving.http_head import HeadError, parse_head
from mlops_assets.serving.inference_log import (
    NEW_CARD_TABLE,
    InferenceLog,
    InferenceLogError,
    feature_schema,
    inference_schema,
)
from mlops_assets.serving.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from mlops_assets.serving.metrics import PREFIX, ServingMetrics, family, sample
from mlops_assets.serving.model import ChampionHolder, ServingModel
from mlops_assets.serving.requests import (
    API_VERSION,
    INVOCATIONS_PATH,
    MAX_BODY_BYTES,
    MAX_INVOCATION_BYTES,
    SCORE_PATH,
    Problem,
    RequestError,
    RequestSchema,
    ScoreRequest,
    decode_json,
    invocation_rows,
    mlflow_error,
    openapi_document,
    parse_score_request,
    validate_rows,
)

if TYPE_CHECKING:
    from mlops_assets.serving.log_writer import ProcessInferenceLog

log = logging.getLogger(__name__)

# Requests as received are logged up to this many characters.
MAX_LOGGED_REQUEST = 4096


@dataclass(frozen=True)
class Response:
    """An HTTP response: status, JSON body (or `text` of `content_type`), extra headers."""

    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()
    text: str | None = None
    content_type: str = "application/json"


def _error(status: int, field: str, message: str) -> Response:
    return Response(status, RequestError(status, [Problem(field, message)]).to_dict())


class ScoringService:
    """The server's logic without HTTP: scoring, health, readiness and the OpenAPI document.

    Args:
        holder: Holds the primary model's champion (`POST /v1/score`).
        store: The online feature store (`OnlineStore` or `RedisOnlineStore`).
        inference_log: Where every request's row goes.
        token: When set, `POST /v1/score` and `/openapi.json` need `Authorization: Bearer`.
        reject_unknown_cards: Refuse requests whose card the online store does not hold
            (422 on the card's field). By default such a card is scored with the features'
            defaults and marked `new_card` in the answer and the inference log.
        holders: Declared model name to the holder of its champion (`POST
            /v1/models/<name>/score`); the primary model's is `holder` (added when absent).
    """

    def __init__(
        self,
        holder: ChampionHolder,
        store: OnlineStore,
        inference_log: InferenceLog | ProcessInferenceLog,
        *,
        token: str | None = None,
        reject_unknown_cards: bool = False,
        max_body_bytes: int = MAX_BODY_BYTES,
        holders: dict[str, ChampionHolder] | None = None,
    ) -> None:
        self.holder = holder
        self.holders = dict(holders or {})
        if not any(h is holder for h in self.holders.values()):
            self.holders = {_base_name(holder.name): holder, **self.holders}
        self.store = store
        self.inference_log = inference_log
        self.token = token or None
        self._token_bytes = None if not token else token.encode()
        self.reject_unknown_cards = reject_unknown_cards
        self.max_body_bytes = max_body_bytes
        self.started_at = datetime.datetime.now(datetime.UTC)
        self._schemas: dict[int, RequestSchema] = {}
        self._logged_models: set[int] = set()
        self._schema_lock = threading.Lock()
        self.counts = {"ok": 0, "error": 0}
        self._count_lock = threading.Lock()
        self.metrics = ServingMetrics()
        # Seconds from process start to each step of `serve` (see `process_age`).
        self.startup: dict[str, float | None] = {}

    # -- authentication --------------------------------------------------------------------

    def authorized(self, header: str | None) -> bool:
        """Whether an `Authorization` header passes (always, without a token)."""
        if self._token_bytes is None:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), self._token_bytes)

    # -- scoring -----------------------------------------------------------------------------

    def _schema(self, model: ServingModel) -> RequestSchema:
        schema = self._schemas.get(id(model.spec))
        if schema is None:
            schema = RequestSchema.from_spec(model.spec)
            self._schemas[id(model.spec)] = schema
        return schema

    def _ready(
        self, holder: ChampionHolder, model: ServingModel | None, refused: RequestError | None
    ) -> None:
        """Raise what stops a request before its body is read: a refusal, or no model yet."""
        if refused is not None:
            raise refused
        if model is None:
            raise RequestError(
                503, [Problem("model", f"no version of {holder.name} is loaded yet")]
            )
        self._log_schema_for(model)

    def _log_schema_for(self, model: ServingModel) -> None:
        # A new champion may bring feature columns the log does not have yet.
        if id(model) in self._logged_models:
            return
        with self._schema_lock:
            if id(model) not in self._logged_models:
                self.inference_log.add_columns(feature_schema(model.spec))
                self._logged_models.add(id(model))

    def score(
        self,
        body: bytes | None,
        *,
        request_id: str,
        started: float,
        refused: RequestError | None = None,
        holder: ChampionHolder | None = None,
    ) -> Response:
        """Score one request body and log it; refusals are logged too.

        Args:
            body: The raw body (None when it was not read).
            request_id: The request's id (echoed and logged).
            started: `time.perf_counter()` when the request arrived.
            refused: An error found before the body was parsed (size, content type).
            holder: The model to score with (the primary model's champion by default).
        """
        received = datetime.datetime.now(datetime.UTC)
        holder = holder or self.holder
        model = holder.current
        parsed: ScoreRequest | None = None
        try:
            self._ready(holder, model, refused)
            parsed = parse_score_request(body or b"", self._schema(model), now=received)
            fields = parsed.fields
            features, score, new_card = self._predict(model, parsed)
        except RequestError as error:
            return self._refuse(error, body, request_id, started, received, model, parsed, holder)
        decision = score >= model.threshold
        latency_ms = (time.perf_counter() - started) * 1000
        row = _ok_row(
            request_id, received, model, fields, features, score, new_card, latency_ms, body
        )
        try:
            self.inference_log.record(row)
        except InferenceLogError as error:
            # No answer without its log row.
            return _error(503, "inference_log", str(error))
        with self._count_lock:
            self.counts["ok"] += 1
        self.metrics.predicted(model.name, new_card)
        return Response(
            200,
            {
                "request_id": request_id,
                "transaction_id": fields.get("transaction_id"),
                "score": score,
                "decision": decision,
                "threshold": model.threshold,
                "new_card": new_card,
                "model": {"name": model.name, "version": model.version, "alias": model.alias},
                "latency_ms": round(latency_ms, 3),
            },
        )

    def _predict(
        self, model: ServingModel, parsed: ScoreRequest
    ) -> tuple[dict[str, Any], float, bool | None]:
        """Look a valid request's keys up, build its features and score them.

        Returns:
            The model input, the score, and whether the online store has never seen the card
            (None when the model looks no card up).

        Raises:
            RequestError: 422 on the card's field for a new card when new cards are refused.
        """
        fields = parsed.fields
        looked_up = {}
        new_card = None
        for lookup in model.spec.lookups:
            key_field = lookup.keys[0]
            vector = self.store.lookup(lookup.table, fields[key_field])
            if lookup.table == NEW_CARD_TABLE:
                new_card = not vector.found
                if new_card and self.reject_unknown_cards:
                    raise RequestError(
                        422,
                        [
                            Problem(
                                key_field,
                                f"{fields[key_field]!r} is not known to the online store "
                                f"({lookup.table})",
                            )
                        ],
                    )
            looked_up[lookup.table] = vector
        features = model.features(fields, looked_up, parsed.overrides)
        return features, model.score(features), new_card

    def invocations(
        self,
        body: bytes | None,
        *,
        request_id: str,
        started: float,
        refused: RequestError | None = None,
    ) -> Response:
        """Score an MLflow scoring payload with the primary model; answer as MLflow does.

        The payload's rows (`dataframe_split`, `dataframe_records`, `instances` or `inputs`,
        see `requests.invocation_rows`) are `POST /v1/score` requests: each is validated,
        looked up, scored and logged (request id `<request id>-<row>`) as there. The answer is
        `{"predictions": [...]}`, one object per row in order; a refusal is MLflow's
        `{"error_code", "message"}` (400 for invalid input, see `requests.mlflow_error`), the
        whole batch refused when any row is invalid, and logged as one error row.
        """
        received = datetime.datetime.now(datetime.UTC)
        holder = self.holder
        model = holder.current
        try:
            self._ready(holder, model, refused)
            kind, rows = invocation_rows(decode_json(body or b""))
            requests = validate_rows(kind, rows, self._schema(model), received)
            scored = [self._predict(model, parsed) for parsed in requests]
        except RequestError as error:
            refusal = self._refuse(error, body, request_id, started, received, model, None)
            status, payload = mlflow_error(error)
            return Response(status, payload, refusal.headers)
        predictions = []
        logged = []
        latency_ms = (time.perf_counter() - started) * 1000
        for i, (parsed, row, (features, score, new_card)) in enumerate(
            zip(requests, rows, scored, strict=True)
        ):
            row_id = f"{request_id}-{i}"
            logged.append(
                _ok_row(
                    row_id,
                    received,
                    model,
                    parsed.fields,
                    features,
                    score,
                    new_card,
                    latency_ms,
                    json.dumps(row, separators=(",", ":")).encode(),
                )
            )
            predictions.append(
                {
                    "request_id": row_id,
                    "transaction_id": parsed.fields.get("transaction_id"),
                    "score": score,
                    "decision": score >= model.threshold,
                    "threshold": model.threshold,
                    "new_card": new_card,
                    "model_name": model.name,
                    "model_version": model.version,
                }
            )
        try:
            # All rows or none: a refused batch leaves nothing in the log to be retried twice.
            self.inference_log.record_many(logged)
        except InferenceLogError as error:
            status, payload = mlflow_error(
                RequestError(503, [Problem("inference_log", str(error))])
            )
            return Response(status, payload)
        with self._count_lock:
            self.counts["ok"] += len(logged)
        new_cards = sum(1 for p in predictions if p["new_card"])
        if new_cards:
            self.metrics.predicted(model.name, True, new_cards)
        if len(predictions) > new_cards:
            self.metrics.predicted(model.name, False, len(predictions) - new_cards)
        return Response(200, {"predictions": predictions})

    def _refuse(
        self,
        error: RequestError,
        body: bytes | None,
        request_id: str,
        started: float,
        received: datetime.datetime,
        model: ServingModel | None,
        parsed: ScoreRequest | None,
        holder: ChampionHolder | None = None,
    ) -> Response:
        holder = holder or self.holder
        fields = parsed.fields if parsed is not None else {}
        row = {
            "request_id": request_id,
            "mode": "online",
            "logged_at": received,
            "event_time": fields.get("event_time") or received,
            "transaction_id": fields.get("transaction_id"),
            "card_id": fields.get("card_id"),
            "merchant_id": fields.get("merchant_id"),
            "model_name": holder.name,
            "model_version": None if model is None else model.version,
            "model_alias": holder.alias,
            "score": None,
            "decision": None,
            "threshold": None if model is None else model.threshold,
            "latency_ms": (time.perf_counter() - started) * 1000,
            "status": "error",
            "error": f"{error.status}: {error}"[:2000],
            "request": _request_text(body),
        }
        # The refusal is answered even if the log refuses the row: nothing was scored.
        with contextlib.suppress(InferenceLogError):
            self.inference_log.record(row)
        with self._count_lock:
            self.counts["error"] += 1
        body_out = error.to_dict()
        body_out["request_id"] = request_id
        return Response(error.status, body_out)

    # -- status ------------------------------------------------------------------------------

    def store_info(self) -> dict[str, Any]:
        """Which online store serves: `backend` (`sqlite`, `redis`) and `location` (file, URL)."""
        return {
            "backend": getattr(self.store, "backend", type(self.store).__name__),
            "location": getattr(self.store, "location", None),
        }

    def holder_for(self, name: str) -> ChampionHolder:
        """The holder of a declared model's champion.

        Raises:
            RequestError: 404 when no served model has that name; the message lists them.
        """
        holder = self.holders.get(name)
        if holder is None:
            raise RequestError(
                404,
                [
                    Problem(
                        "model",
                        f"no model {name!r} is served; served models: "
                        + ", ".join(sorted(self.holders)),
                    )
                ],
            )
        return holder

    def models(self) -> dict[str, dict[str, Any]]:
        """Every served model's status (see `ChampionHolder.status`), by declared name."""
        return {name: holder.status() for name, holder in self.holders.items()}

    def health(self) -> Response:
        """Liveness with the served models' status: `ok`, `degraded` or `starting`."""
        model = self.holder.status()
        models = self.models()
        stats = self.inference_log.stats()
        if model["serving_version"] is None:
            status = "starting"
        elif stats.last_error or any(m["load_error"] or m["stale"] for m in models.values()):
            status = "degraded"
        else:
            status = "ok"
        return Response(
            200,
            {
                "status": status,
                "model": model,
                "models": models,
                "inference_log": {
                    **_log_stats(stats),
                    "writer": self.inference_log.writer,
                    "writer_pid": self.inference_log.pid,
                },
                "online_store": self.store_info(),
                "requests": dict(self.counts),
                "started_at": self.started_at.isoformat(),
                "startup": self.startup_info(),
            },
        )

    def startup_info(self) -> dict[str, Any]:
        """How the process started: seconds from its start to each step, and the load path.

        `serve_s`: `serve` called (interpreter and the server's imports); `listening_s`: the
        port bound (the service built); `model_load_s`: the primary model's load (registry
        read and cache or MLflow load, in the background from the service's build on);
        `load_path`: `cache` or `mlflow`.
        """
        current = self.holder.current
        return {
            **self.startup,
            "model_load_s": None if current is None else round(current.load_seconds, 4),
            "load_path": None if current is None else current.load_path,
        }

    def ready(self) -> Response:
        """200 while the models are loaded and the log writes; 503 with the reasons otherwise.

        The primary model must be loaded; every other model must be loaded once the registry
        names a champion of it (a model without a champion yet is listed, not waited for).
        """
        reasons = []
        model = self.holder.status()
        models = self.models()
        if model["serving_version"] is None:
            reasons.append(
                "no model loaded"
                + (f": {model['load_error']['error']}" if model["load_error"] else "")
            )
        for name, status in models.items():
            holder = self.holders[name]
            if holder is self.holder or status["serving_version"] is not None:
                continue
            if status["alias_version"] is not None:
                reasons.append(
                    f"{status['model']} version {status['alias_version']} is not loaded"
                    + (f": {status['load_error']['error']}" if status["load_error"] else "")
                )
        stats = self.inference_log.stats()
        if self.inference_log.closed:
            reasons.append("the inference log is closed")
        elif stats.last_error and stats.pending > self.inference_log.flush_rows * 10:
            reasons.append(f"the inference log cannot write: {stats.last_error}")
        try:
            self.store.tables()
        except Exception as error:  # noqa: BLE001 - reported, not raised
            reasons.append(f"online store unavailable: {error}")
        body = {
            "ready": not reasons,
            "reasons": reasons,
            "model": model,
            "models": models,
            "online_store": self.store_info(),
            "startup": self.startup_info(),
        }
        return Response(200 if not reasons else 503, body)

    def ping(self) -> Response:
        """MLflow's `GET /ping`: 200 while the primary model is loaded, else 503."""
        loaded = self.holder.current is not None
        return Response(200 if loaded else 503, {"status": "ok" if loaded else "starting"})

    def version(self) -> Response:
        """MLflow's `GET /version`: the MLflow version, with this API's and the model's."""
        from importlib.metadata import version

        model = self.holder.current
        return Response(
            200,
            {
                "mlflow_version": version("mlflow"),
                "api_version": API_VERSION,
                "model": None if model is None else {"name": model.name, "version": model.version},
            },
        )

    def metrics_text(self) -> str:
        """Every metric in the Prometheus text exposition format (see `serving.metrics`)."""
        lines = self.metrics.render()
        stats = self.inference_log.stats()
        lines += family(
            f"{PREFIX}inference_log_pending_rows",
            "gauge",
            "Inference log rows recorded and not yet committed (the backlog).",
            [sample(f"{PREFIX}inference_log_pending_rows", None, stats.pending)],
        )
        for name, value, text in (
            ("written_rows_total", stats.written, "Inference log rows committed."),
            ("commits_total", stats.commits, "Inference log commits."),
            ("flush_failures_total", stats.failures, "Inference log flushes that failed."),
        ):
            metric = f"{PREFIX}inference_log_{name}"
            lines += family(metric, "counter", text, [sample(metric, None, value)])
        info, loads, load_seconds = [], [], []
        for name, holder in sorted(self.holders.items()):
            current = holder.current
            if current is not None:
                labels = {
                    "model": name,
                    "registered_model": current.name,
                    "version": current.version,
                    "alias": current.alias,
                    "scorer": current.scorer,
                }
                info.append(sample(f"{PREFIX}model_info", labels, 1))
                load_seconds.append(
                    sample(f"{PREFIX}model_load_seconds", {"model": name}, current.load_seconds)
                )
            for outcome, count in (("ok", holder.swaps), ("error", holder.load_failures)):
                loads.append(
                    sample(f"{PREFIX}model_loads_total", {"model": name, "outcome": outcome}, count)
                )
        lines += family(
            f"{PREFIX}model_info",
            "gauge",
            "The version serving each model (1 per serving version, labels name it).",
            info,
        )
        lines += family(
            f"{PREFIX}model_loads_total",
            "counter",
            "Versions loaded (ok: swapped in, the first load and each reload) or failed.",
            loads,
        )
        lines += family(
            f"{PREFIX}model_load_seconds",
            "gauge",
            "Seconds the serving version took to load and check.",
            load_seconds,
        )
        lines += family(
            f"{PREFIX}start_time_seconds",
            "gauge",
            "When the server started, in seconds since the Unix epoch.",
            [sample(f"{PREFIX}start_time_seconds", None, self.started_at.timestamp())],
        )
        return "\n".join(lines) + "\n"

    def openapi(self) -> Response:
        """The OpenAPI document for the served model's requests."""
        from mlops_assets.features.spec import FRAUD_SPEC

        model = self.holder.current
        schema = RequestSchema.from_spec(model.spec if model is not None else FRAUD_SPEC)
        return Response(
            200,
            openapi_document(schema, model_name=self.holder.name, secured=self.token is not None),
        )


def _ok_row(
    request_id: str,
    received: datetime.datetime,
    model: ServingModel,
    fields: dict[str, Any],
    features: dict[str, Any],
    score: float,
    new_card: bool | None,
    latency_ms: float,
    body: bytes | None,
) -> dict[str, Any]:
    """The inference log row of a scored request."""
    return {
        "request_id": request_id,
        "mode": "online",
        "logged_at": received,
        "event_time": fields["event_time"],
        "transaction_id": fields.get("transaction_id"),
        "card_id": fields.get("card_id"),
        "merchant_id": fields.get("merchant_id"),
        "model_name": model.name,
        "model_version": model.version,
        "model_alias": model.alias,
        "score": score,
        "decision": score >= model.threshold,
        "threshold": model.threshold,
        "new_card": new_card,
        "latency_ms": latency_ms,
        "status": "ok",
        "error": None,
        "request": _request_text(body),
        **features,
    }


def _log_stats(stats: Any) -> dict[str, Any]:
    return {
        "recorded": stats.recorded,
        "written": stats.written,
        "pending": stats.pending,
        "commits": stats.commits,
        "failures": stats.failures,
        "last_error": stats.last_error,
        "last_flush_at": None if stats.last_flush_at is None else stats.last_flush_at.isoformat(),
        "last_version": stats.last_version,
    }


def _request_text(body: bytes | None) -> str | None:
    if body is None:
        return None
    text = body[: MAX_LOGGED_REQUEST * 4].decode("utf-8", errors="replace")
    return text if len(text) <= MAX_LOGGED_REQUEST else text[:MAX_LOGGED_REQUEST] + "..."


_REASONS = {status.value: status.phrase for status in HTTPStatus}


class _Clock:
    """The `Date` header's value, formatted once per second."""

    second = -1
    text = ""

    @classmethod
    def date(cls) -> str:
        now = int(time.time())
        if now != cls.second:
            cls.text, cls.second = formatdate(now, usegmt=True), now
        return cls.text


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mlops-serving"
    sys_version = ""
    server: ScoringServer
    _started = 0.0

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # every scoring request is in the inference log; access logs would slow it

    def parse_request(self) -> bool:
        """Parse the request line and headers as `BaseHTTPRequestHandler` does, faster.

        The same checks and answers (400 on a bad line or version, 505 on HTTP/2 and later,
        431 on too long or too many header lines, keep-alive by version and `Connection`,
        `Expect: 100-continue`), with headers read by `http_head.parse_head` instead of the
        `email` parser. Notes when the request line was read, for the latency histogram.
        """
        self._started = time.perf_counter()
        self.command = None  # type: ignore[assignment]
        self.request_version = version = self.default_request_version
        self.close_connection = True
        requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        self.requestline = requestline
        words = requestline.split()
        if not words:
            return False
        if len(words) >= 3:
            version = words[-1]
            try:
                if not version.startswith("HTTP/"):
                    raise ValueError
                base_version = version.split("/", 1)[1]
                numbers = base_version.split(".")
                if len(numbers) != 2 or any(not n.isdigit() or len(n) > 10 for n in numbers):
                    raise ValueError
                version_number = int(numbers[0]), int(numbers[1])
            except (ValueError, IndexError):
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request version ({version!r})")
                return False
            if version_number >= (1, 1) and self.protocol_version >= "HTTP/1.1":
                self.close_connection = False
            if version_number >= (2, 0):
                self.send_error(
                    HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"Invalid HTTP version ({base_version})"
                )
                return False
            self.request_version = version
        if not 2 <= len(words) <= 3:
            self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({requestline!r})")
            return False
        command, path = words[:2]
        if len(words) == 2:
            self.close_connection = True
            if command != "GET":
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad HTTP/0.9 request type ({command!r})")
                return False
        self.command, self.path = command, path
        if self.path.startswith("//"):
            self.path = "/" + self.path.lstrip("/")
        try:
            self.headers = parse_head(self.rfile)  # type: ignore[assignment]
        except HeadError as error:
            self.send_error(error.status, str(error))
            return False
        connection = self.headers.get("Connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive" and self.protocol_version >= "HTTP/1.1":
            self.close_connection = False
        expect = self.headers.get("Expect", "").lower()
        if (
            expect == "100-continue"
            and self.protocol_version >= "HTTP/1.1"
            and self.request_version >= "HTTP/1.1"
        ):
            return self.handle_expect_100()
        return True

    def __getattr__(self, name: str) -> Any:
        # Any method without a handler (TRACE, CONNECT, PROPFIND, ...) is answered 405 (or
        # 404 on an unknown path), not the standard library's 501.
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _send(self, response: Response, request_id: str | None = None) -> None:
        if response.text is not None:
            payload = response.text.encode()
        else:
            payload = json.dumps(response.body, separators=(",", ":")).encode()
        lines = [
            f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}",
            f"Date: {_Clock.date()}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(payload)}",
        ]
        if request_id:
            lines.append(f"X-Request-ID: {request_id}")
        for name, value in response.headers:
            lines.append(f"{name}: {value}")
        if self.server.draining or self.close_connection:
            self.close_connection = True
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self.command == "HEAD":
            payload = b""  # a HEAD answer has headers only
        # Counted before the answer leaves: a client that has its answer finds it in /metrics.
        command = getattr(self, "command", None) or "-"
        path = getattr(self, "path", "") or ""
        self.server.service.metrics.observe(
            route_label(path.split("?", 1)[0]),
            command if command in _KNOWN_METHODS else "other",
            response.status,
            time.perf_counter() - self._started if self._started else 0.0,
        )
        self.wfile.write(head + payload)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """JSON errors for what the standard library refuses (bad request line, headers)."""
        self.close_connection = True
        text = message or _REASONS.get(code, "error")
        with contextlib.suppress(OSError):
            self._send(_error(code, "request", text))

    def _request_id(self) -> str:
        given = self.headers.get("X-Request-ID")
        if given and len(given) <= 128 and given.isprintable() and given.isascii():
            return given
        return uuid.uuid4().hex

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        started = self._started or time.perf_counter()
        service = self.server.service
        path = self.path.split("?", 1)[0]
        model_name = _model_in_path(path)
        invocations = path == INVOCATIONS_PATH
        if path != SCORE_PATH and model_name is None and not invocations:
            self._not_allowed()
            return
        if not service.authorized(self.headers.get("Authorization")):
            self._discard_body()
            error = RequestError(
                401, [Problem("Authorization", "a valid bearer token is required")]
            )
            if invocations:
                status, body = mlflow_error(error)
                self._send(Response(status, body))
            else:
                self._send(Response(401, error.to_dict()))
            return
        holder = None
        if model_name is not None:
            try:
                holder = service.holder_for(model_name)
            except RequestError as error:
                self._discard_body()
                self._send(Response(error.status, error.to_dict()))
                return
        request_id = self._request_id()
        limit = max(service.max_body_bytes, MAX_INVOCATION_BYTES if invocations else 0)
        body, refused = self._read_body(limit)
        try:
            if invocations:
                response = service.invocations(
                    body, request_id=request_id, started=started, refused=refused
                )
            else:
                response = service.score(
                    body, request_id=request_id, started=started, refused=refused, holder=holder
                )
        except Exception as error:  # noqa: BLE001 - a bug must not kill the connection thread
            log.exception("scoring failed")
            response = _error(500, "server", f"internal error: {type(error).__name__}")
            if invocations:
                response = Response(
                    500,
                    {"error_code": "INTERNAL_ERROR", "message": response.body["error"]["message"]},
                )
        self._send(response, request_id)

    def _read_body(self, limit: int) -> tuple[bytes | None, RequestError | None]:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return None, RequestError(
                411, [Problem("Content-Length", "is required (chunked bodies are not accepted)")]
            )
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return None, RequestError(411, [Problem("Content-Length", "is required")])
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            return None, RequestError(
                400,
                [
                    Problem(
                        "Content-Length",
                        f"must be a non-negative integer, got {length_text!r}"[:200],
                    )
                ],
            )
        if length > limit:
            # The body is not read: close the connection after answering.
            self.close_connection = True
            return None, RequestError(
                413, [Problem("body", f"is {length} bytes; at most {limit} are accepted")]
            )
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            self.close_connection = True
            return body, RequestError(
                400, [Problem("body", f"ended after {len(body)} of {length} bytes")]
            )
        content_type = self.headers.get("Content-Type")
        if content_type is not None:
            media = content_type.split(";", 1)[0].strip().lower()
            if media != "application/json" and not media.endswith("+json"):
                return body, RequestError(
                    415, [Problem("Content-Type", f"must be application/json, got {media!r}"[:200])]
                )
        return body, None

    def _discard_body(self) -> None:
        length_text = self.headers.get("Content-Length")
        try:
            length = int(length_text or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES or self.headers.get("Transfer-Encoding"):
            self.close_connection = True
        elif length:
            self.rfile.read(length)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        service = self.server.service
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(service.health())
        elif path == "/readyz":
            self._send(service.ready())
        elif path == "/ping":
            self._send(service.ping())
        elif path == "/version":
            self._send(service.version())
        elif path == METRICS_PATH:
            self._send(
                Response(200, {}, text=service.metrics_text(), content_type=METRICS_CONTENT_TYPE)
            )
        elif path == "/openapi.json":
            if not service.authorized(self.headers.get("Authorization")):
                self._send(_error(401, "Authorization", "a valid bearer token is required"))
            else:
                self._send(service.openapi())
        else:
            self._not_allowed()

    def _not_allowed(self) -> None:
        """405 with `Allow` on a path that takes other methods; 404 on an unknown path."""
        self._discard_body()
        path = self.path.split("?", 1)[0]
        allowed = allowed_methods(path)
        if allowed is None:
            self._send(_error(404, "path", f"no {self.command} {path}"[:300]))
            return
        response = _error(
            405, "method", f"{self.command} is not allowed on {path}; allowed: {allowed}"[:300]
        )
        self._send(Response(405, response.body, (("Allow", allowed),)))


METRICS_PATH = "/metrics"
_GET_PATHS = ("/healthz", "/readyz", "/openapi.json", METRICS_PATH, "/ping", "/version")
_POST_PATHS = (SCORE_PATH, INVOCATIONS_PATH)
# Methods counted by name in the metrics; any other is counted as `other`.
_KNOWN_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT")
# `POST /v1/models/<name>/score` scores with the champion of the declared model `<name>`.
MODEL_SCORE_PREFIX = "/v1/models/"
MODEL_SCORE_SUFFIX = "/score"


def allowed_methods(path: str) -> str | None:
    """The `Allow` header's value for a path the API declares, None for an unknown path."""
    if path in _GET_PATHS:
        return "GET"
    if path in _POST_PATHS or _model_in_path(path) is not None:
        return "POST"
    return None


def route_label(path: str) -> str:
    """A path as the metrics' `route` label: a declared route, its template, or `other`."""
    if path in _GET_PATHS or path in _POST_PATHS:
        return path
    if _model_in_path(path) is not None:
        return f"{MODEL_SCORE_PREFIX}{{name}}{MODEL_SCORE_SUFFIX}"
    return "other"


def model_score_path(name: str) -> str:
    """The scoring path of a declared model, e.g. `/v1/models/fraud_linear/score`."""
    return f"{MODEL_SCORE_PREFIX}{name}{MODEL_SCORE_SUFFIX}"


def _model_in_path(path: str) -> str | None:
    """The model a `/v1/models/<name>/score` path names, else None."""
    if not (path.startswith(MODEL_SCORE_PREFIX) and path.endswith(MODEL_SCORE_SUFFIX)):
        return None
    name = path[len(MODEL_SCORE_PREFIX) : -len(MODEL_SCORE_SUFFIX)]
    return name if name and "/" not in name else None


def _base_name(registered: str) -> str:
    """A registered name's declared model name (`dev.fraud_detector` gives `fraud_detector`)."""
    return registered.split(".", 1)[-1]


class ScoringServer(http.server.ThreadingHTTPServer):
    """The threaded HTTP server, with a graceful stop that keeps the log complete.

    Args:
        address: (host, port); port 0 picks a free one.
        service: The scoring logic.
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], service: ScoringService) -> None:
        self.service = service
        self.draining = False
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._lock = threading.Lock()
        self._serving: threading.Thread | None = None
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        """Base URL of the server."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        """Handle a connection in its own thread, tracked for the graceful stop."""
        if self.draining:
            self.shutdown_request(request)
            return
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        with self._lock:
            self._connections[request] = thread
        thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve one connection until it closes; then forget it."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._connections.pop(request, None)

    def start(self) -> ScoringServer:
        """Serve in a background thread; return self."""
        self._serving = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.1}, name="http-accept"
        )
        self._serving.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully and write the inference log's last rows.

        No new connections are accepted; requests being handled finish and answer; idle
        connections close; then the log writes what it holds.

        Args:
            timeout: Longest wait for connections to finish.
        """
        self.draining = True
        self.shutdown()  # the accept loop ends (serve_forever returns)
        if self._serving is not None:
            self._serving.join()
        self.socket.close()
        with self._lock:
            connections = list(self._connections.items())
        for connection, _ in connections:
            # Reading stops (a waiting keep-alive connection sees end of file); a request
            # already read is still answered, since writing stays open.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RD)
        deadline = time.monotonic() + timeout
        for _, thread in connections:
            thread.join(max(0.0, deadline - time.monotonic()))
        for holder in self.service.holders.values():
            holder.stop()
        self.service.inference_log.close()
        self.service.store.close()


def build_service(
    settings: Any,
    *,
    token: str | None = None,
    poll_seconds: float = 2.0,
    flush_rows: int = 2_000,
    flush_interval_ms: int = 1_000,
    reject_unknown_cards: bool = False,
    wait_for_model: float = 0.0,
    log_writer: str = "thread",
) -> ScoringService:
    """The service of an environment: its declared models' champions, online store, log table.

    Args:
        settings: The environment's `Settings`.
        token: Bearer token guarding scoring (None: open).
        poll_seconds: How often the champion alias is read.
        flush_rows: Inference log rows per commit at most.
        flush_interval_ms: Longest time a row waits for its commit.
        reject_unknown_cards: Refuse cards the online store does not hold (by default they
            are scored with the features' defaults and marked `new_card`).
        wait_for_model: Seconds to wait, before returning, for every declared model whose
            registry names a champion to be loaded.
        log_writer: Who makes the inference log's flushes: `thread` (a thread of this
            process, `InferenceLog`) or `process` (a writer process of its own,
            `log_writer.ProcessInferenceLog`; `serve`'s default: the flushes stay out of the
            requests' way).
    """
    if log_writer not in LOG_WRITERS:
        raise ValueError(f"log_writer={log_writer!r} is none of {LOG_WRITERS}")
    from mlops_assets.lakehouse.catalog import Catalog
    from mlops_assets.lakehouse.delta_io import table_exists
    from mlops_assets.models.lifecycle import model_name
    from mlops_assets.serving.fastload import CompiledCache, RegistryReader
    from mlops_assets.serving.inference_log import INFERENCE_LOG
    from mlops_assets.serving.model import load_serving_model

    # MLflow is imported only when a version must be loaded through it (no verified cache).
    cache_dir = settings.env_root / "serving_cache"
    registry = RegistryReader(settings.mlflow_uri, mirror_dir=cache_dir / "artifacts")
    cache = CompiledCache(cache_dir)
    mlflow_ready = threading.Lock()
    pointed: list[bool] = []

    def point_mlflow() -> None:
        with mlflow_ready:
            if not pointed:
                from mlops_assets.settings import use_mlflow_store

                use_mlflow_store(settings.mlflow_uri)
                pointed.append(True)

    def loader(name: str, version: str, alias: str) -> ServingModel:
        return load_serving_model(
            name, version, alias, registry=registry, cache=cache, before_mlflow=point_mlflow
        )

    uri = Catalog(settings).uri_for_write(INFERENCE_LOG)
    schema = inference_schema()
    if table_exists(uri):
        import polars as pl

        # Keep the types of columns the table has (features of earlier models).
        for name, dtype in pl.scan_delta(uri).collect_schema().items():
            schema.setdefault(name, dtype)
    if log_writer == "process":
        from mlops_assets.serving.log_writer import ProcessInferenceLog

        inference_log: InferenceLog | ProcessInferenceLog = ProcessInferenceLog(
            uri, schema=schema, flush_rows=flush_rows, flush_interval_ms=flush_interval_ms
        )
    else:
        inference_log = InferenceLog(
            uri, schema=schema, flush_rows=flush_rows, flush_interval_ms=flush_interval_ms
        )
    from mlops_assets.models.declaration import MODELS, primary

    holders = {}
    for name in MODELS:
        registered = model_name(settings.env, name)
        holders[name] = ChampionHolder(
            registered,
            poll_seconds=poll_seconds,
            loader=loader,
            resolver=lambda registered=registered: registry.alias_version(registered, "champion"),
        )
    for holder in holders.values():
        holder.start()

    def waiting(holder: ChampionHolder) -> bool:
        # Not loaded yet, while the alias is unread or names a version.
        return holder.current is None and (
            holder.last_poll_at is None or holder.champion_version is not None
        )

    deadline = time.monotonic() + wait_for_model
    while any(waiting(h) for h in holders.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    store = open_online_store(settings)
    return ScoringService(
        holders[primary().name],
        store,
        inference_log,
        token=token,
        reject_unknown_cards=reject_unknown_cards,
        holders=holders,
    )


# The server's concurrency models (`serve(http=...)`); `loop` is the default, by measurement.
HTTP_MODELS = ("threads", "loop")
# Who makes the inference log's flushes (`build_service(log_writer=...)`).
LOG_WRITERS = ("thread", "process")


def process_age() -> float | None:
    """Seconds since this process started (from `/proc`, to 10 ms), None where unknown."""
    import os

    try:
        with open("/proc/self/stat") as handle:
            # Fields after the command name; the start time is field 22 of the whole line.
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return round(uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError):
        return None


def serve(
    settings: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    poll_seconds: float = 2.0,
    ready_file: str | None = None,
    flush_rows: int = 2_000,
    flush_interval_ms: int = 1_000,
    http: str = "loop",
    log_writer: str = "process",
) -> int:
    """Run the server until SIGTERM or SIGINT, then stop gracefully (see `ScoringServer.stop`).

    Args:
        settings: The environment's `Settings`.
        host: Address to bind (127.0.0.1 by default).
        port: Port to bind; 0 picks a free one.
        token: Bearer token guarding scoring.
        poll_seconds: How often the champion alias is read.
        ready_file: When given, the bound URL is written there once the server listens.
        flush_rows: Inference log rows per commit at most.
        flush_interval_ms: Longest time a row waits for its commit.
        http: The concurrency model: `loop` (one event loop thread, `LoopScoringServer`, the
            default by measurement) or `threads` (a thread per connection, `ScoringServer`).
        log_writer: Who makes the inference log's flushes (see `build_service`): a process
            of its own by default, by measurement (the latency's tail).

    Returns:
        The process exit code.
    """
    serve_age = process_age()
    # Shorter GIL turns: a request waits less behind the log writer or the alias poller.
    sys.setswitchinterval(0.001)
    # The port is bound at once; /readyz answers 200 once the champion is loaded.
    service = build_service(
        settings,
        token=token,
        poll_seconds=poll_seconds,
        flush_rows=flush_rows,
        flush_interval_ms=flush_interval_ms,
        log_writer=log_writer,
    )
    if http not in HTTP_MODELS:
        raise ValueError(f"http={http!r} is no concurrency model; use one of {HTTP_MODELS}")
    if http == "loop":
        from mlops_assets.serving.loop_server import LoopScoringServer

        server: Any = LoopScoringServer((host, port), service)
    else:
        server = ScoringServer((host, port), service)
    service.startup = {"serve_s": serve_age, "listening_s": process_age()}
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    print(
        f"[serve] {server.url}{SCORE_PATH} serves {service.holder.name}@{service.holder.alias} "
        f"(loading; {server.url}/readyz says when it is ready); docs at {server.url}/openapi.json",
        flush=True,
    )
    for name, holder in service.holders.items():
        print(
            f"[serve] {server.url}{model_score_path(name)} serves {holder.name}@{holder.alias}",
            flush=True,
        )
    if ready_file:
        with open(ready_file + ".tmp", "w") as handle:
            handle.write(server.url)
        import os

        os.replace(ready_file + ".tmp", ready_file)
    stop.wait()
    print("[serve] stopping: finishing requests, writing the inference log", flush=True)
    server.stop()
    stats = service.inference_log.stats()
    print(
        f"[serve] stopped: {stats.written} inference log rows written in {stats.commits} "
        f"commits, {stats.pending} pending",
        flush=True,
    )
    return 0 if stats.pending == 0 else 1
