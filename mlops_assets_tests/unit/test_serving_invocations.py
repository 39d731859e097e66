"""MLflow scoring payloads (`POST /invocations`): shapes, rows, refusals as MLflow answers."""

import datetime

import pytest

from mlops_assets.features.spec import FRAUD_SPEC
from mlops_assets.serving.requests import (
    MAX_INVOCATION_ROWS,
    RequestError,
    RequestSchema,
    invocation_rows,
    mlflow_error,
    validate_rows,
)

NOW = datetime.datetime(2026, 1, 7, 12, tzinfo=datetime.UTC)
ROWS = [
    {"transaction_id": "t1", "card_id": "c1", "merchant_id": "m1", "amount": 12.5},
    {"transaction_id": "t2", "card_id": "c2", "merchant_id": "m2", "amount": 3.0},
]
COLUMNS = list(ROWS[0])


@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_split": {"columns": COLUMNS, "data": [list(r.values()) for r in ROWS]}},
        {
            "dataframe_split": {
                "index": [0, 1],
                "columns": COLUMNS,
                "data": [list(r.values()) for r in ROWS],
            }
        },
        {"dataframe_records": ROWS},
        {"instances": ROWS},
        {"instances": {c: [r[c] for r in ROWS] for c in COLUMNS}},
        {"inputs": ROWS, "params": {}},
        {"inputs": {c: [r[c] for r in ROWS] for c in COLUMNS}, "params": None},
    ],
)
def test_every_payload_shape_gives_the_same_rows(payload):
    kind, rows = invocation_rows(payload)
    assert kind in payload and rows == ROWS
    parsed = validate_rows(kind, rows, RequestSchema.from_spec(FRAUD_SPEC), NOW)
    assert [p.fields["card_id"] for p in parsed] == ["c1", "c2"]
    assert all(p.fields["event_time"] == NOW for p in parsed)


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        ({}, "body", "exactly one of"),
        ({"dataframe_records": ROWS, "inputs": ROWS}, "body", "got dataframe_records, inputs"),
        ({"data": ROWS}, "data", "not a known field"),
        ({"dataframe_records": {"a": 1}}, "dataframe_records", "must be an array of objects"),
        ({"dataframe_records": []}, "dataframe_records", "holds no rows"),
        ({"dataframe_records": [1]}, "dataframe_records[0]", "must be an object"),
        (
            {"dataframe_split": {"columns": ["a", "a"], "data": []}},
            "dataframe_split.columns",
            "more than once",
        ),
        (
            {"dataframe_split": {"columns": ["a"], "data": [[1], [1, 2]]}},
            "dataframe_split.data[1]",
            "array of 1 values",
        ),
        (
            {"dataframe_split": {"columns": ["a"], "data": [[1]], "orient": "x"}},
            "dataframe_split.orient",
            "not a known field",
        ),
        ({"inputs": {"a": [1, 2], "b": [1]}}, "inputs", "same length"),
        ({"inputs": {"a": 1}}, "inputs.a", "must be an array"),
        ({"inputs": ROWS, "params": {"k": 1}}, "params", "takes no parameters"),
        (
            {"dataframe_records": [ROWS[0]] * (MAX_INVOCATION_ROWS + 1)},
            "dataframe_records",
            f"at most {MAX_INVOCATION_ROWS}",
        ),
    ],
)
def test_payloads_of_the_wrong_shape_are_refused_naming_the_field(payload, field, words):
    with pytest.raises(RequestError) as caught:
        invocation_rows(payload)
    error = caught.value
    assert error.status == 400 and error.problems[0].field == field
    assert words in error.problems[0].message


def test_a_bad_row_refuses_the_batch_naming_each_row_and_field():
    rows = [ROWS[0], {**ROWS[1], "amount": "x", "color": "red"}, {"card_id": "c"}]
    with pytest.raises(RequestError) as caught:
        validate_rows("dataframe_records", rows, RequestSchema.from_spec(FRAUD_SPEC), NOW)
    fields = {p.field for p in caught.value.problems}
    assert {"dataframe_records[1].amount", "dataframe_records[1].color"} <= fields
    assert "dataframe_records[2].transaction_id" in fields
    status, body = mlflow_error(caught.value)
    assert status == 400 and body["error_code"] == "BAD_REQUEST"
    assert "dataframe_records[1].amount" in body["message"]


def test_mlflow_error_codes_follow_the_status():
    from mlops_assets.serving.requests import Problem

    for status, code in (
        (413, "REQUEST_LIMIT_EXCEEDED"),
        (503, "TEMPORARILY_UNAVAILABLE"),
        (401, "UNAUTHENTICATED"),
        (422, "BAD_REQUEST"),
    ):
        got, body = mlflow_error(RequestError(status, [Problem("x", "y")]))
        assert body["error_code"] == code and got == (400 if status == 422 else status)
