"""Scoring requests: their schema (served as OpenAPI), parsing and validation.

A request is one JSON object: the transaction's keys and request-time fields (those of the
model's `FeatureSpec.request_fields`), and optionally `features`, values of looked-up features
that replace the online store's. Anything else is refused with a 4xx whose message names the
field and what is wrong with it; `RequestError` carries the status and every problem found.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlops_assets.features.spec import FeatureSpec

MAX_BODY_BYTES = 16 * 1024
MAX_ID_LENGTH = 128
MAX_TEXT_LENGTH = 64
# Request fields that are not strings; every other request field is a string.
NUMBER_FIELDS = ("amount",)
TIME_FIELDS = ("event_time",)
OPTIONAL_FIELDS_DEFAULT_NOW = ("event_time",)
FEATURES_FIELD = "features"
API_VERSION = "1.0.0"
SCORE_PATH = "/v1/score"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: the field (a JSON pointer-like path) and what."""

    field: str
    message: str

    def to_dict(self) -> dict[str, str]:
        """As JSON data."""
        return {"field": self.field, "message": self.message}


class RequestError(ValueError):
    """A request the server refuses, with its HTTP status and the problems found."""

    def __init__(self, status: int, problems: list[Problem]) -> None:
        self.status = status
        self.problems = problems
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))

    def to_dict(self) -> dict[str, Any]:
        """The error response body."""
        return {
            "error": {
                "status": self.status,
                "message": str(self),
                "problems": [p.to_dict() for p in self.problems],
            }
        }


@dataclass(frozen=True)
class ScoreRequest:
    """A valid request: its fields (event_time a UTC datetime) and feature overrides."""

    fields: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestSchema:
    """What a model's requests hold, derived from its feature spec.

    Attributes:
        required: Fields a request must give (the keys looked up, the id, the amount).
        optional: Fields a request may give (null allowed).
        feature_types: Looked-up feature name to `int`, `float`, `bool` or `str`: what
            `features` may override.
    """

    required: tuple[str, ...]
    optional: tuple[str, ...]
    feature_types: dict[str, str]

    @classmethod
    def from_spec(cls, spec: FeatureSpec) -> RequestSchema:
        """The request schema of a feature spec."""
        keys = {k for lookup in spec.lookups for k in lookup.keys}
        must = keys | {"transaction_id"} | set(NUMBER_FIELDS)
        required = tuple(f for f in spec.request_fields if f in must)
        optional = tuple(f for f in spec.request_fields if f not in must)
        types = {
            name: lookup.definition.feature(name).dtype
            for lookup in spec.lookups
            for name in lookup.features
        }
        return cls(required=required, optional=optional, feature_types=types)

    @property
    def fields(self) -> tuple[str, ...]:
        """Every top-level field a request may hold."""
        return (*self.required, *self.optional, FEATURES_FIELD)


def _duplicate_check(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKeyError(key)
        seen[key] = value
    return seen


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def decode_json(body: bytes) -> Any:
    """Parse a JSON body strictly: UTF-8, no NaN/Infinity, no repeated keys.

    Raises:
        RequestError: 400 naming the problem (and the position for syntax errors).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(400, [Problem("body", f"is not UTF-8 (byte {error.start})")]) from None
    try:
        return json.loads(text, object_pairs_hook=_duplicate_check, parse_constant=_no_constants)
    except _DuplicateKeyError as error:
        raise RequestError(400, [Problem(error.key, "is given more than once")]) from None
    except json.JSONDecodeError as error:
        raise RequestError(
            400,
            [
                Problem(
                    "body",
                    f"is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}",
                )
            ],
        ) from None
    except ValueError as error:
        raise RequestError(400, [Problem("body", f"is not valid JSON: {error}")]) from None
    except RecursionError:
        raise RequestError(400, [Problem("body", "is nested too deeply")]) from None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _check_string(name: str, value: Any, limit: int, problems: list[Problem]) -> str | None:
    if not isinstance(value, str):
        problems.append(Problem(name, f"must be a string, got {_type_name(value)}"))
        return None
    if not value.strip():
        problems.append(Problem(name, "must not be empty"))
        return None
    if len(value) > limit:
        problems.append(Problem(name, f"must be at most {limit} characters, got {len(value)}"))
        return None
    return value


def _check_number(name: str, value: Any, problems: list[Problem]) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.append(Problem(name, f"must be a number, got {_type_name(value)}"))
        return None
    try:
        number = float(value)
    except OverflowError:
        problems.append(Problem(name, "is too large"))
        return None
    if not math.isfinite(number):
        problems.append(Problem(name, "must be a finite number"))
        return None
    if number < 0:
        problems.append(Problem(name, f"must be >= 0, got {value}"))
        return None
    return number


def _check_time(name: str, value: Any, problems: list[Problem]) -> datetime.datetime | None:
    if not isinstance(value, str):
        problems.append(
            Problem(name, f"must be an ISO 8601 date-time string, got {_type_name(value)}")
        )
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        problems.append(
            Problem(
                name,
                f"must be an ISO 8601 date-time like 2026-01-07T12:00:00Z, got {value!r}"[:200],
            )
        )
        return None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        problems.append(Problem(name, "must have a time zone (e.g. Z or +01:00)"))
        return None
    try:
        return parsed.astimezone(datetime.UTC)
    except OverflowError:
        problems.append(Problem(name, "is out of range"))
        return None


def _check_feature(name: str, kind: str, value: Any, problems: list[Problem]) -> Any:
    where = f"{FEATURES_FIELD}.{name}"
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(Problem(where, f"must be an integer, got {_type_name(value)}"))
            return None
        if not -(2**63) <= value < 2**63:
            problems.append(Problem(where, "is out of the 64-bit integer range"))
            return None
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(Problem(where, f"must be a number, got {_type_name(value)}"))
            return None
        try:
            number = float(value)
        except OverflowError:
            problems.append(Problem(where, "is too large"))
            return None
        if not math.isfinite(number):
            problems.append(Problem(where, "must be a finite number"))
            return None
        return number
    if kind == "bool":
        if not isinstance(value, bool):
            problems.append(Problem(where, f"must be a boolean, got {_type_name(value)}"))
            return None
        return value
    if not isinstance(value, str) or len(value) > MAX_TEXT_LENGTH:
        problems.append(Problem(where, f"must be a string of at most {MAX_TEXT_LENGTH} characters"))
        return None
    return value


def parse_score_request(
    body: bytes, schema: RequestSchema, now: datetime.datetime | None = None
) -> ScoreRequest:
    """Parse and validate a scoring request body.

    Args:
        body: The raw body.
        schema: The model's request schema.
        now: The receive time, used as `event_time` when the request gives none.

    Returns:
        The request's fields (each of `schema.required` and `schema.optional`; absent
        optional ones are None) and its feature overrides.

    Raises:
        RequestError: 400 for a body that is not a JSON object, 422 for fields that are
            missing, unknown, or of the wrong type or range (every problem is listed).
    """
    data = decode_json(body)
    if not isinstance(data, dict):
        raise RequestError(400, [Problem("body", f"must be a JSON object, got {_type_name(data)}")])
    return validate_request(data, schema, now)


def validate_request(
    data: Mapping[str, Any], schema: RequestSchema, now: datetime.datetime | None = None
) -> ScoreRequest:
    """Validate one decoded request object (the rules of `parse_score_request`).

    Raises:
        RequestError: 422 listing every field that is missing, unknown, or of the wrong type
            or range.
    """
    problems: list[Problem] = []
    allowed = set(schema.fields)
    for name in data:
        if name not in allowed:
            shown = name if len(name) <= 64 else name[:64] + "..."
            problems.append(
                Problem(shown, f"is not a known field; known: {', '.join(schema.fields)}")
            )
    fields: dict[str, Any] = {}
    for name in schema.required:
        if name not in data or data[name] is None:
            problems.append(Problem(name, "is required"))
            continue
        fields[name] = _check_value(name, data[name], problems)
    for name in schema.optional:
        value = data.get(name)
        if value is None:
            if name in OPTIONAL_FIELDS_DEFAULT_NOW:
                fields[name] = now or datetime.datetime.now(datetime.UTC)
            else:
                fields[name] = None
            continue
        fields[name] = _check_value(name, value, problems)
    overrides: dict[str, Any] = {}
    given = data.get(FEATURES_FIELD)
    if given is not None:
        if not isinstance(given, dict):
            problems.append(Problem(FEATURES_FIELD, f"must be an object, got {_type_name(given)}"))
        else:
            for name, value in given.items():
                kind = schema.feature_types.get(name)
                if kind is None:
                    shown = name if len(name) <= 64 else name[:64] + "..."
                    problems.append(
                        Problem(
                            f"{FEATURES_FIELD}.{shown}",
                            "is not a looked-up feature of the model; known: "
                            + ", ".join(schema.feature_types),
                        )
                    )
                    continue
                overrides[name] = _check_feature(name, kind, value, problems)
    if problems:
        raise RequestError(422, problems)
    return ScoreRequest(fields=fields, overrides=overrides)


def _check_value(name: str, value: Any, problems: list[Problem]) -> Any:
    if name in NUMBER_FIELDS:
        return _check_number(name, value, problems)
    if name in TIME_FIELDS:
        return _check_time(name, value, problems)
    limit = MAX_ID_LENGTH if name.endswith("_id") else MAX_TEXT_LENGTH
    return _check_string(name, value, limit, problems)


def _field_schema(name: str) -> dict[str, Any]:
    if name in NUMBER_FIELDS:
        return {"type": "number", "minimum": 0, "description": "Transaction amount."}
    if name in TIME_FIELDS:
        return {
            "type": "string",
            "format": "date-time",
            "description": "When the transaction happened (ISO 8601 with a time zone); the "
            "receive time when absent.",
        }
    limit = MAX_ID_LENGTH if name.endswith("_id") else MAX_TEXT_LENGTH
    return {"type": "string", "minLength": 1, "maxLength": limit, "pattern": r"\S"}


_JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}


def openapi_document(schema: RequestSchema, *, model_name: str, secured: bool) -> dict:
    """The server's OpenAPI 3.1 document for a model's request schema."""
    properties: dict[str, Any] = {}
    for name in schema.required:
        properties[name] = _field_schema(name)
    for name in schema.optional:
        base = _field_schema(name)
        properties[name] = {**base, "type": [base["type"], "null"]}
    properties[FEATURES_FIELD] = {
        "type": "object",
        "description": "Values of looked-up features that replace the online store's for "
        "this request (request-time features are derived from them).",
        "additionalProperties": False,
        "properties": {
            name: {"type": _JSON_TYPES[kind]} for name, kind in schema.feature_types.items()
        },
    }
    error = {
        "description": "The request was refused; `problems` names each field and what is wrong.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    score_responses: dict[str, Any] = {
        "200": {
            "description": "The transaction's fraud score and decision.",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ScoreResponse"}}
            },
        },
        "400": error,
        "411": error,
        "413": error,
        "415": error,
        "422": error,
        "503": error,
    }
    if secured:
        score_responses["401"] = error
    operation: dict[str, Any] = {
        "operationId": "score",
        "summary": "Score one card transaction",
        "description": "Looks up the card's and merchant's features in the online store, "
        "derives the request-time features, scores with the champion model, and logs the "
        f"request and prediction to the inference log. Model: `{model_name}@champion`. "
        "A card the online store has never seen is scored with the features' defaults and "
        "marked `new_card`.",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ScoreRequest"}}
            },
        },
        "responses": score_responses,
    }
    if secured:
        operation["security"] = [{"bearer": []}]
    status_response = {
        "description": "Status of the model, the online store and the inference log.",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Fraud scoring",
            "version": API_VERSION,
            "description": "Online scoring of card transactions by the champion fraud detector.",
        },
        "paths": {
            SCORE_PATH: {"post": operation},
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness and status (degraded when a new champion failed to "
                    "load and the old one still serves)",
                    "responses": {"200": status_response},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "ready",
                    "summary": "Readiness: a model is loaded and the inference log writes",
                    "responses": {"200": status_response, "503": status_response},
                }
            },
            INVOCATIONS_PATH: {"post": _invocations_operation(secured)},
            "/ping": {
                "get": {
                    "operationId": "ping",
                    "summary": "MLflow's liveness probe: 200 while the champion is loaded",
                    "responses": {"200": status_response, "503": status_response},
                }
            },
            "/version": {
                "get": {
                    "operationId": "version",
                    "summary": "MLflow's version probe: the MLflow, API and model versions",
                    "responses": {"200": status_response},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Metrics in the Prometheus text exposition format",
                    "responses": {
                        "200": {
                            "description": "Request counts and latency, inference log "
                            "backlog, the versions serving, model loads.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": {"description": "The OpenAPI document."}},
                }
            },
        },
        "components": {
            "schemas": {
                "ScoreRequest": {
                    "type": "object",
                    "required": list(schema.required),
                    "additionalProperties": False,
                    "properties": properties,
                },
                "ScoreResponse": {
                    "type": "object",
                    "required": [
                        "request_id",
                        "transaction_id",
                        "score",
                        "decision",
                        "threshold",
                        "model",
                    ],
                    "properties": {
                        "request_id": {"type": "string"},
                        "transaction_id": {"type": "string"},
                        "score": {"type": "number", "minimum": 0, "maximum": 1},
                        "decision": {"type": "boolean", "description": "score >= threshold"},
                        "threshold": {"type": "number"},
                        "new_card": {
                            "type": ["boolean", "null"],
                            "description": "The online store had never seen the card (scored "
                            "with the features' defaults).",
                        },
                        "model": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "version": {"type": "string"},
                                "alias": {"type": "string"},
                            },
                        },
                        "latency_ms": {"type": "number"},
                    },
                },
                **_invocation_schemas(),
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "status": {"type": "integer"},
                                "message": {"type": "string"},
                                "problems": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "field": {"type": "string"},
                                            "message": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        }
                    },
                },
            },
        },
    }
    if secured:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return document


def _invocations_operation(secured: bool) -> dict[str, Any]:
    """The OpenAPI operation of `POST /invocations` (MLflow's scoring protocol)."""
    error = {
        "description": "Refused, as MLflow's scoring server refuses: `error_code` and "
        "`message` (every problem named with its row).",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MlflowError"}}},
    }
    operation: dict[str, Any] = {
        "operationId": "invocations",
        "summary": "Score a batch in MLflow's scoring format (as `mlflow models serve`)",
        "description": "Takes exactly one of `dataframe_split`, `dataframe_records`, "
        "`instances` or `inputs`, each row a `ScoreRequest`; every row is scored and logged "
        f"as `POST {SCORE_PATH}` does. At most {MAX_INVOCATION_ROWS} rows; the whole batch is "
        "refused (400) when any row is invalid.",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Invocation"}}
            },
        },
        "responses": {
            "200": {
                "description": "One prediction per row, in order.",
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/InvocationResponse"}
                    }
                },
            },
            **{status: error for status in ("400", "411", "413", "415", "503")},
        },
    }
    if secured:
        operation["responses"]["401"] = error
        operation["security"] = [{"bearer": []}]
    return operation


def _invocation_schemas() -> dict[str, Any]:
    """Components of `POST /invocations`: the payload, its answer and MLflow's error."""
    row = {"$ref": "#/components/schemas/ScoreRequest"}
    records = {"type": "array", "items": row, "minItems": 1, "maxItems": MAX_INVOCATION_ROWS}
    columns = {
        "type": "object",
        "description": "Column name to one value per row.",
        "additionalProperties": {"type": "array"},
    }
    params = {"type": ["object", "null"], "maxProperties": 0}

    def one_of(name: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": [name],
            "additionalProperties": False,
            "properties": {name: schema, "params": params},
        }

    return {
        "Invocation": {
            "oneOf": [
                one_of(
                    "dataframe_split",
                    {
                        "type": "object",
                        "required": ["columns", "data"],
                        "additionalProperties": False,
                        "properties": {
                            "columns": {"type": "array", "items": {"type": "string"}},
                            "data": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": MAX_INVOCATION_ROWS,
                                "items": {"type": "array"},
                            },
                            "index": {"type": "array"},
                        },
                    },
                ),
                one_of("dataframe_records", records),
                one_of("instances", {"oneOf": [records, columns]}),
                one_of("inputs", {"oneOf": [records, columns]}),
            ]
        },
        "InvocationResponse": {
            "type": "object",
            "required": ["predictions"],
            "properties": {
                "predictions": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "request_id": {"type": "string"},
                            "transaction_id": {"type": "string"},
                            "score": {"type": "number", "minimum": 0, "maximum": 1},
                            "decision": {"type": "boolean"},
                            "threshold": {"type": "number"},
                            "new_card": {"type": ["boolean", "null"]},
                            "model_name": {"type": "string"},
                            "model_version": {"type": "string"},
                        },
                    },
                }
            },
        },
        "MlflowError": {
            "type": "object",
            "required": ["error_code", "message"],
            "properties": {
                "error_code": {"type": "string"},
                "message": {"type": "string"},
                "problems": {"type": "array", "items": {"type": "object"}},
            },
        },
    }


def describe_request(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The request's fields as JSON data (for logs): times as ISO strings."""
    return {k: v.isoformat() if isinstance(v, datetime.datetime) else v for k, v in fields.items()}


# -- MLflow scoring payloads (`POST /invocations`) ------------------------------------------

INVOCATIONS_PATH = "/invocations"
INVOCATION_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
MAX_INVOCATION_BYTES = 1024 * 1024
MAX_INVOCATION_ROWS = 1_000
# Problems listed in one refusal at most (a batch may hold a thousand bad rows).
MAX_LISTED_PROBLEMS = 50


def _columns_to_rows(where: str, columns: Mapping[str, Any]) -> list[Any]:
    """Column name to equal-length lists (MLflow's columnar `inputs`) as one object per row."""
    lengths = {name: len(v) for name, v in columns.items() if isinstance(v, list)}
    not_lists = [name for name in columns if name not in lengths]
    if not_lists:
        raise RequestError(
            400,
            [Problem(f"{where}.{n}", "must be an array (one value per row)") for n in not_lists],
        )
    if len(set(lengths.values())) > 1:
        raise RequestError(
            400, [Problem(where, f"columns must have the same length, got {lengths}"[:300])]
        )
    height = next(iter(lengths.values()), 0)
    return [{name: values[i] for name, values in columns.items()} for i in range(height)]


def _split_to_rows(where: str, split: Any) -> list[Any]:
    """`{"columns": [...], "data": [[...], ...]}` (pandas' split orient) as row objects."""
    if not isinstance(split, dict):
        raise RequestError(400, [Problem(where, f"must be an object, got {_type_name(split)}")])
    unknown = [k for k in split if k not in ("columns", "data", "index")]
    if unknown:
        raise RequestError(
            400,
            [
                Problem(f"{where}.{k}"[:100], "is not a known field; known: columns, data, index")
                for k in unknown[:MAX_LISTED_PROBLEMS]
            ],
        )
    columns, data = split.get("columns"), split.get("data")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise RequestError(400, [Problem(f"{where}.columns", "must be an array of strings")])
    if len(set(columns)) != len(columns):
        raise RequestError(400, [Problem(f"{where}.columns", "names a column more than once")])
    if not isinstance(data, list):
        raise RequestError(
            400, [Problem(f"{where}.data", f"must be an array of rows, got {_type_name(data)}")]
        )
    index = split.get("index")
    if index is not None and (not isinstance(index, list) or len(index) != len(data)):
        raise RequestError(
            400, [Problem(f"{where}.index", "must be an array with one label per row")]
        )
    problems = [
        Problem(f"{where}.data[{i}]", f"must be an array of {len(columns)} values")
        for i, row in enumerate(data)
        if not isinstance(row, list) or len(row) != len(columns)
    ]
    if problems:
        raise RequestError(400, problems[:MAX_LISTED_PROBLEMS])
    return [dict(zip(columns, row, strict=True)) for row in data]


def invocation_rows(data: Any) -> tuple[str, list[dict[str, Any]]]:
    """The request objects of an MLflow scoring payload.

    The payload is a JSON object with exactly one of `dataframe_split` (`columns` and `data`,
    pandas' split orient), `dataframe_records` (an array of objects), `instances` (an array
    of objects, or an object of columns) or `inputs` (the same), and optionally `params`
    (this model takes none: absent, null or empty). Each row object holds the fields of a
    `POST /v1/score` request.

    Returns:
        The payload's format and its rows in order (each validated later by
        `validate_request`).

    Raises:
        RequestError: 400 naming what is wrong with the payload's shape.
    """
    if not isinstance(data, dict):
        raise RequestError(
            400,
            [
                Problem(
                    "body",
                    f"must be a JSON object with one of {', '.join(INVOCATION_FORMATS)}, "
                    f"got {_type_name(data)}",
                )
            ],
        )
    given = [k for k in INVOCATION_FORMATS if k in data]
    unknown = [k for k in data if k not in INVOCATION_FORMATS and k != "params"]
    if unknown:
        raise RequestError(
            400,
            [
                Problem(
                    k if len(k) <= 64 else k[:64] + "...",
                    f"is not a known field; known: {', '.join(INVOCATION_FORMATS)}, params",
                )
                for k in unknown[:MAX_LISTED_PROBLEMS]
            ],
        )
    if len(given) != 1:
        raise RequestError(
            400,
            [
                Problem(
                    "body",
                    f"must hold exactly one of {', '.join(INVOCATION_FORMATS)}, got "
                    + (", ".join(given) if given else "none"),
                )
            ],
        )
    params = data.get("params")
    if params not in (None, {}):
        raise RequestError(400, [Problem("params", "this model takes no parameters")])
    kind = given[0]
    payload = data[kind]
    if kind == "dataframe_split":
        rows = _split_to_rows(kind, payload)
    elif isinstance(payload, dict) and kind in ("instances", "inputs"):
        rows = _columns_to_rows(kind, payload)
    elif isinstance(payload, list):
        rows = payload
    else:
        shape = "an array of objects" + (
            "" if kind == "dataframe_records" else " or an object of columns"
        )
        raise RequestError(400, [Problem(kind, f"must be {shape}, got {_type_name(payload)}")])
    if not rows:
        raise RequestError(400, [Problem(kind, "holds no rows")])
    if len(rows) > MAX_INVOCATION_ROWS:
        raise RequestError(
            400,
            [Problem(kind, f"holds {len(rows)} rows; at most {MAX_INVOCATION_ROWS} are accepted")],
        )
    problems = [
        Problem(f"{kind}[{i}]", f"must be an object, got {_type_name(row)}")
        for i, row in enumerate(rows)
        if not isinstance(row, dict)
    ]
    if problems:
        raise RequestError(400, problems[:MAX_LISTED_PROBLEMS])
    return kind, rows


def validate_rows(
    kind: str, rows: list[dict[str, Any]], schema: RequestSchema, now: datetime.datetime
) -> list[ScoreRequest]:
    """Validate every row of an invocation; refuse the whole batch if any row is wrong.

    Raises:
        RequestError: 400 listing (up to `MAX_LISTED_PROBLEMS`) problems, each field named
            with its row, e.g. `dataframe_records[3].amount`.
    """
    parsed: list[ScoreRequest] = []
    problems: list[Problem] = []
    bad_rows = 0
    for i, row in enumerate(rows):
        try:
            parsed.append(validate_request(row, schema, now))
        except RequestError as error:
            bad_rows += 1
            problems.extend(Problem(f"{kind}[{i}].{p.field}", p.message) for p in error.problems)
    if problems:
        listed = problems[:MAX_LISTED_PROBLEMS]
        if len(problems) > len(listed):
            listed.append(
                Problem(kind, f"{len(problems) - len(listed)} more problems in {bad_rows} rows")
            )
        raise RequestError(400, listed)
    return parsed


# MLflow's error codes (`mlflow.protos.databricks_pb2`) for the statuses this server answers.
MLFLOW_ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    404: "RESOURCE_DOES_NOT_EXIST",
    405: "BAD_REQUEST",
    411: "BAD_REQUEST",
    413: "REQUEST_LIMIT_EXCEEDED",
    415: "BAD_REQUEST",
    422: "BAD_REQUEST",
    500: "INTERNAL_ERROR",
    503: "TEMPORARILY_UNAVAILABLE",
}


def mlflow_error(error: RequestError) -> tuple[int, dict[str, Any]]:
    """A refusal as MLflow's scoring server answers: status and `{"error_code", "message"}`.

    MLflow answers invalid input with 400 (this server's 422 becomes 400); `problems` lists
    each field as the native routes do.
    """
    status = 400 if error.status == 422 else error.status
    return status, {
        "error_code": MLFLOW_ERROR_CODES.get(status, "BAD_REQUEST"),
        "message": str(error),
        "problems": [p.to_dict() for p in error.problems],
    }
