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
        "Unknown cards are refused (422 on card_id).",
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


def describe_request(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The request's fields as JSON data (for logs): times as ISO strings."""
    return {k: v.isoformat() if isinstance(v, datetime.datetime) else v for k, v in fields.items()}
