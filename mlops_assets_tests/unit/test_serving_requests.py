"""Scoring request parsing: valid requests, and a 4xx naming the field for everything else."""

import datetime
import json

import pytest

from mlops_assets.features.spec import FRAUD_SPEC
from mlops_assets.serving.requests import (
    RequestError,
    RequestSchema,
    openapi_document,
    parse_score_request,
)

SCHEMA = RequestSchema.from_spec(FRAUD_SPEC)
NOW = datetime.datetime(2026, 1, 7, 12, tzinfo=datetime.UTC)
VALID = {
    "transaction_id": "t-1",
    "card_id": "card_000001",
    "merchant_id": "m_00001",
    "amount": 12.5,
    "event_time": "2026-01-07T10:00:00+01:00",
    "merchant_category": "grocery",
    "channel": "pos",
}


def parse(data) -> object:
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    return parse_score_request(body, SCHEMA, now=NOW)


def refused(data) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse(data)
    return caught.value


def test_a_valid_request_gives_typed_fields_and_defaults():
    request = parse(VALID)
    assert request.fields["event_time"] == datetime.datetime(2026, 1, 7, 9, tzinfo=datetime.UTC)
    assert request.fields["amount"] == 12.5 and request.fields["country"] is None
    assert set(request.fields) == set(FRAUD_SPEC.request_fields)
    without_time = parse({k: v for k, v in VALID.items() if k != "event_time"})
    assert without_time.fields["event_time"] == NOW
    assert parse({**VALID, "amount": 3}).fields["amount"] == 3.0


def test_the_schema_requires_keys_id_and_amount():
    assert set(SCHEMA.required) == {"transaction_id", "card_id", "merchant_id", "amount"}
    assert "txn_count_24h" in SCHEMA.feature_types


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        (b"{not json", 400, "body", "not valid JSON"),
        (b"\xff\xfe", 400, "body", "not UTF-8"),
        (b"[1, 2]", 400, "body", "must be a JSON object, got array"),
        (b"", 400, "body", "not valid JSON"),
        (b'{"amount": NaN}', 400, "body", "NaN"),
        (b'{"card_id": "a", "card_id": "b"}', 400, "card_id", "more than once"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "body", "nested too deeply"),
    ],
)
def test_bodies_that_are_not_a_json_object_are_400(body, status, field, words):
    error = refused(body)
    assert error.status == status
    assert error.problems[0].field == field
    assert words in error.problems[0].message


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"card_id": None}, "card_id", "is required"),
        ({"amount": "12"}, "amount", "must be a number, got string"),
        ({"amount": True}, "amount", "must be a number, got boolean"),
        ({"amount": -1}, "amount", "must be >= 0"),
        ({"amount": 10**400}, "amount", "too large"),
        ({"transaction_id": 7}, "transaction_id", "must be a string, got number"),
        ({"transaction_id": "  "}, "transaction_id", "must not be empty"),
        ({"card_id": "x" * 500}, "card_id", "at most 128 characters"),
        ({"event_time": "yesterday"}, "event_time", "ISO 8601"),
        ({"event_time": "2026-01-07T10:00:00"}, "event_time", "time zone"),
        ({"channel": ["pos"]}, "channel", "must be a string, got array"),
        ({"colour": "red"}, "colour", "is not a known field"),
        ({"features": {"txn_count_24h": 1.5}}, "features.txn_count_24h", "must be an integer"),
        ({"features": {"fraud_rate_30d": "high"}}, "features.fraud_rate_30d", "must be a number"),
        ({"features": {"made_up": 1}}, "features.made_up", "not a looked-up feature"),
        ({"features": [1]}, "features", "must be an object"),
    ],
)
def test_wrong_fields_are_422_naming_the_field(change, field, words):
    data = {**VALID, **change}
    if change.get("card_id", "") is None:
        del data["card_id"]
    error = refused(data)
    assert error.status == 422
    assert [p.field for p in error.problems] == [field]
    assert words in error.problems[0].message
    body = error.to_dict()["error"]
    assert body["status"] == 422 and field in body["message"]


def test_every_problem_is_reported_at_once():
    error = refused({"amount": "x", "extra": 1})
    fields = {p.field for p in error.problems}
    assert fields == {"amount", "extra", "transaction_id", "card_id", "merchant_id"}


def test_feature_overrides_are_typed():
    request = parse({**VALID, "features": {"txn_count_24h": 4, "fraud_rate_30d": 1}})
    assert request.overrides == {"txn_count_24h": 4, "fraud_rate_30d": 1.0}
    assert isinstance(request.overrides["fraud_rate_30d"], float)


def test_the_openapi_document_describes_the_request_schema():
    document = openapi_document(SCHEMA, model_name="dev.fraud_detector", secured=True)
    request = document["components"]["schemas"]["ScoreRequest"]
    assert set(request["required"]) == set(SCHEMA.required)
    assert request["additionalProperties"] is False
    assert request["properties"]["amount"]["type"] == "number"
    assert request["properties"]["country"]["type"] == ["string", "null"]
    operation = document["paths"]["/v1/score"]["post"]
    assert {"200", "400", "401", "413", "422"} <= set(operation["responses"])
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    json.dumps(document)
