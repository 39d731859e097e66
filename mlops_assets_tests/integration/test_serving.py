"""The REST server in-process on 127.0.0.1, a real model trained on a small simulated lake."""

import datetime
import http.client
import json
import string
import threading
import time

import mlflow
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlops_assets.features.online_store import OnlineStore
from mlops_assets.features.spec import FRAUD_SPEC
from mlops_assets.models.lifecycle import Lifecycle, model_name
from mlops_assets.models.training import model_inputs
from mlops_assets.serving.app import ScoringServer, build_service
from mlops_assets_tests.serving_env import build_serving_env

NAME = model_name("dev")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return build_serving_env(tmp_path_factory.mktemp("serving"), models=2)


def start(env, **options) -> ScoringServer:
    options = {"poll_seconds": 0.2, "flush_interval_ms": 100, "wait_for_model": 120, **options}
    service = build_service(env.settings, **options)
    assert service.holder.current is not None
    return ScoringServer(("127.0.0.1", 0), service).start()


class Client:
    """One keep-alive connection."""

    def __init__(self, server: ScoringServer, token: str | None = None) -> None:
        host, port = server.server_address[:2]
        self.connection = http.client.HTTPConnection(host, port, timeout=30)
        self.token = token

    def call(self, method: str, path: str, body=None, headers=None) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json", **(headers or {})}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if isinstance(body, dict):
            body = json.dumps(body)
        self.connection.request(method, path, body, headers)
        response = self.connection.getresponse()
        return response.status, json.loads(response.read())

    def score(self, request: dict) -> tuple[int, dict]:
        return self.call("POST", "/v1/score", request)


def log_table(server: ScoringServer) -> pl.DataFrame:
    """The inference log rows of this server (the tests' servers run one after another)."""
    table = pl.read_delta(server.service.inference_log.uri)
    return table.filter(pl.col("logged_at") >= server.service.started_at)


def wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.mark.parametrize("log_writer", ["thread", "process"])
def test_scores_equal_the_pyfunc_path_and_every_answer_is_logged(env, log_writer):
    requests = env.requests(400, seed=2)
    server = start(env, log_writer=log_writer)
    client = Client(server)
    try:
        answers = [client.score(r) for r in requests]
    finally:
        server.stop()
    assert [status for status, _ in answers] == [200] * len(requests)
    # The reference: features from the online store as FeatureSpec.fetch builds them,
    # model_inputs, and the registered model's pyfunc predict.
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    store = OnlineStore(env.settings.online_store_path)
    try:
        frames = [
            FRAUD_SPEC.fetch(
                store,
                {**r, "event_time": datetime.datetime.fromisoformat(r["event_time"])},
            )
            for r in requests
        ]
    finally:
        store.close()
    expected = pyfunc.predict(model_inputs(pl.concat(frames, how="diagonal_relaxed"), FRAUD_SPEC))
    assert [a["score"] for _, a in answers] == [float(p) for p in expected[:, 1]]
    assert {a["model"]["version"] for _, a in answers} == {env.versions[0]}
    # The threshold is the one training stored with the model (its 1% false-positive point).
    threshold = pyfunc.metadata.metadata["decision_threshold"]
    assert {a["threshold"] for _, a in answers} == {threshold}
    assert all(a["decision"] == (a["score"] >= threshold) for _, a in answers)

    table = log_table(server).filter(pl.col("status") == "ok")
    assert table.height == len(requests)
    assert set(table["request_id"]) == {a["request_id"] for _, a in answers}
    logged = table.sort("transaction_id")
    served = pl.concat(frames, how="diagonal_relaxed").sort("transaction_id")
    for name in ("txn_count_24h", "amount_zscore_7d", "fraud_rate_30d", "is_foreign"):
        assert logged[name].to_list() == served[name].to_list(), name
    first = logged.row(0, named=True)
    assert first["mode"] == "online" and first["model_alias"] == "champion"
    assert first["day"] == first["event_time"].date() and first["latency_ms"] > 0
    assert json.loads(first["request"])["transaction_id"] == first["transaction_id"]


def test_bad_requests_get_a_4xx_naming_the_field_and_are_logged_as_errors(env):
    good = env.requests(1, seed=3)[0]
    server = start(env)
    client = Client(server)
    try:
        status, body = client.call("POST", "/v1/score", b'{"card_id": ')
        assert status == 400 and body["error"]["problems"][0]["field"] == "body"
        status, body = client.score({**good, "card_id": "card_never_seen"})
        assert status == 200 and body["new_card"] is True
        status, body = client.score({**good, "amount": "12", "surprise": 1})
        assert status == 422
        assert {p["field"] for p in body["error"]["problems"]} == {"amount", "surprise"}
        status, body = client.call("POST", "/v1/score", b"x" * 100_000)
        assert status == 413 and "at most" in body["error"]["message"]
        client = Client(server)  # the server closes a connection whose body it did not read
        status, body = client.call(
            "POST", "/v1/score", json.dumps(good), {"Content-Type": "text/plain"}
        )
        assert status == 415 and body["error"]["problems"][0]["field"] == "Content-Type"
        assert client.call("GET", "/nowhere")[0] == 404
        assert client.call("GET", "/v1/score")[0] == 405
        assert client.call("DELETE", "/v1/score")[0] == 405
        status, body = client.score(good)
        assert status == 200
    finally:
        server.stop()
    table = log_table(server)
    ok = table.filter(pl.col("status") == "ok")
    assert ok.height == 2
    assert ok.filter(pl.col("card_id") == "card_never_seen")["new_card"].to_list() == [True]
    errors = table.filter(pl.col("status") == "error")
    assert errors.height == 4 and errors["score"].null_count() == 4


def test_the_bearer_token_guards_scoring_and_probes_stay_open(env):
    request = env.requests(1, seed=4)[0]
    server = start(env, token="s3cret")
    try:
        assert Client(server).score(request)[0] == 401
        assert Client(server, token="wrong").score(request)[0] == 401
        assert Client(server, token="s3cret").score(request)[0] == 200
        assert Client(server).call("GET", "/openapi.json")[0] == 401
        status, document = Client(server, token="s3cret").call("GET", "/openapi.json")
        assert status == 200 and "bearer" in document["components"]["securitySchemes"]
        assert Client(server).call("GET", "/healthz")[0] == 200
        assert Client(server).call("GET", "/readyz")[0] == 200
    finally:
        server.stop()
    # Unauthorised requests are not served, so they are not logged.
    assert log_table(server)["request_id"].len() == 1


def load(server: ScoringServer, requests: list[dict], stop: threading.Event, out: list) -> None:
    client = Client(server)
    i = 0
    while not stop.is_set():
        try:
            status, body = client.score(requests[i % len(requests)])
        except (OSError, http.client.HTTPException) as error:
            out.append((None, repr(error)))
            client = Client(server)
            continue
        out.append((status, body))
        i += 1


def test_alias_moves_under_load_swap_models_with_no_failed_request(env):
    cycle = Lifecycle(env.client, NAME)
    first, second = env.versions[:2]
    requests = env.requests(200, seed=5)
    server = start(env)
    stop = threading.Event()
    results: list[list] = [[] for _ in range(4)]
    threads = [threading.Thread(target=load, args=(server, requests, stop, out)) for out in results]
    for thread in threads:
        thread.start()
    try:

        def served_versions() -> list:
            return [b["model"]["version"] for out in results for s, b in list(out) if s == 200]

        wait_for(lambda: len(served_versions()) > 100)
        cycle.promote(second, "test", "swap under load")
        wait_for(lambda: served_versions()[-1] == second)
        seen = len(served_versions())
        wait_for(lambda: len(served_versions()) > seen + 100)
        cycle.rollback("test", "swap back under load")
        wait_for(lambda: served_versions()[-1] == first)
        seen = len(served_versions())
        wait_for(lambda: len(served_versions()) > seen + 100)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        server.stop()
    answers = [item for out in results for item in out]
    failed = [item for item in answers if item[0] != 200]
    assert failed == []
    versions = [body["model"]["version"] for _, body in answers]
    assert set(versions) == {first, second}
    assert server.service.holder.swaps >= 3
    table = log_table(server)
    assert table.height == len(answers)
    logged = dict(zip(table["request_id"], table["model_version"], strict=True))
    assert all(logged[body["request_id"]] == body["model"]["version"] for _, body in answers)


def test_a_champion_that_fails_to_load_leaves_the_old_one_serving_and_says_so(env, tmp_path):
    client = env.client
    cycle = Lifecycle(client, NAME)
    champion = cycle.version_of("champion")
    # A registered version whose artifacts are not a model.
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "MLmodel").write_text("not: [a model")
    broken = str(client.create_model_version(NAME, str(tmp_path / "broken")).version)
    cycle.record_validation(broken, True, {"by": "test"})
    # A good version whose metadata sets the decision threshold.
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}/{champion}")
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name(NAME).experiment_id):
        logged = mlflow.sklearn.log_model(
            pyfunc.get_raw_model(),
            name="model",
            serialization_format="cloudpickle",
            pyfunc_predict_fn="predict_proba",
            registered_model_name=NAME,
            metadata={"feature_spec": FRAUD_SPEC.to_dict(), "decision_threshold": 1e-4},
        )
    strict = str(logged.registered_model_version)
    cycle.record_validation(strict, True, {"by": "test"})
    request = env.requests(1, seed=6)[0]
    server = start(env)
    http_client = Client(server)
    try:
        cycle.promote(broken, "test", "a bad release")
        wait_for(lambda: server.service.holder.status()["load_error"] is not None)
        status, health = http_client.call("GET", "/healthz")
        assert status == 200 and health["status"] == "degraded"
        assert health["model"]["load_error"]["version"] == broken
        assert health["model"]["serving_version"] == champion and health["model"]["stale"]
        assert http_client.call("GET", "/readyz")[0] == 200
        status, body = http_client.score(request)
        assert status == 200 and body["model"]["version"] == champion

        cycle.promote(strict, "test", "a good release with its own threshold")
        wait_for(lambda: server.service.holder.status()["serving_version"] == strict)
        status, health = http_client.call("GET", "/healthz")
        assert health["status"] == "ok" and health["model"]["load_error"] is None
        status, body = http_client.score(request)
        assert status == 200 and body["threshold"] == 1e-4
        assert body["decision"] == (body["score"] >= 1e-4)
    finally:
        server.stop()
        cycle.client.set_registered_model_alias(NAME, "champion", champion)


# -- fuzzing against the OpenAPI document ------------------------------------------------------


def strategy_for(schema: dict) -> st.SearchStrategy:
    """Values valid for one property of the served OpenAPI document."""
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    options = []
    for kind in types:
        if kind == "null":
            options.append(st.none())
        elif kind == "number":
            low = schema.get("minimum")
            options.append(st.floats(min_value=low, allow_nan=False, allow_infinity=False))
            options.append(st.integers(min_value=0 if low is not None else None, max_value=10**12))
        elif kind == "integer":
            options.append(st.integers(min_value=-(2**63), max_value=2**63 - 1))
        elif kind == "boolean":
            options.append(st.booleans())
        elif kind == "string" and schema.get("format") == "date-time":
            offsets = st.integers(-14 * 60, 14 * 60).map(
                lambda m: datetime.timezone(datetime.timedelta(minutes=m))
            )
            options.append(
                st.datetimes(
                    min_value=datetime.datetime(2000, 1, 1),
                    max_value=datetime.datetime(2100, 1, 1),
                    timezones=offsets,
                ).map(lambda d: d.isoformat())
            )
        elif kind == "string":
            options.append(
                st.text(
                    min_size=schema.get("minLength", 0), max_size=schema.get("maxLength", 64)
                ).filter(lambda s: s.strip() != "")
            )
        elif kind == "object":
            properties = schema.get("properties", {})
            options.append(
                st.fixed_dictionaries(
                    {}, optional={name: strategy_for(p) for name, p in properties.items()}
                )
            )
    return st.one_of(options)


def request_strategy(document: dict, known_cards: list[str]) -> st.SearchStrategy:
    schema = document["components"]["schemas"]["ScoreRequest"]
    required = {n: strategy_for(schema["properties"][n]) for n in schema["required"]}
    required["card_id"] = st.sampled_from(known_cards) | required["card_id"]
    optional = {
        n: strategy_for(p) for n, p in schema["properties"].items() if n not in schema["required"]
    }
    return st.fixed_dictionaries(required, optional=optional)


WRONG_VALUES = {
    "number": st.one_of(st.text(max_size=5), st.booleans(), st.lists(st.integers(), max_size=2)),
    "string": st.one_of(
        st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.just([])
    ),
    "object": st.one_of(st.integers(), st.text(max_size=3), st.just([1])),
}


@pytest.fixture(scope="module")
def fuzz_server(env):
    server = start(env)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fuzz_document(fuzz_server):
    return Client(fuzz_server).call("GET", "/openapi.json")[1]


@pytest.fixture(scope="module")
def known_cards(env):
    return sorted({r["card_id"] for r in env.requests(50, seed=9)})


FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_requests_valid_by_the_openapi_document_are_scored(
    data, fuzz_server, fuzz_document, known_cards
):
    request = data.draw(request_strategy(fuzz_document, known_cards))
    status, body = Client(fuzz_server).score(request)
    assert status == 200, body
    assert 0.0 <= body["score"] <= 1.0 and body["transaction_id"] == request["transaction_id"]
    # A card the store does not hold is scored too, and marked as new.
    assert isinstance(body["new_card"], bool)
    if request["card_id"] in known_cards:
        assert body["new_card"] is False


@pytest.mark.slow
@FUZZ
@given(data=st.data())
def test_requests_breaking_the_openapi_document_get_a_4xx_naming_the_field(
    data, fuzz_server, fuzz_document, known_cards
):
    schema = fuzz_document["components"]["schemas"]["ScoreRequest"]
    request = data.draw(request_strategy(fuzz_document, known_cards))
    mutation = data.draw(st.sampled_from(["missing", "wrong_type", "unknown_field"]))
    if mutation == "missing":
        field = data.draw(st.sampled_from(schema["required"]))
        del request[field]
    elif mutation == "wrong_type":
        field = data.draw(st.sampled_from(sorted(schema["properties"])))
        kind = schema["properties"][field]["type"]
        kind = kind[0] if isinstance(kind, list) else kind
        request[field] = data.draw(WRONG_VALUES[kind])
    else:
        field = data.draw(
            st.text(string.ascii_letters + "_.-", min_size=1, max_size=20).filter(
                lambda name: name not in schema["properties"]
            )
        )
        request[field] = data.draw(st.integers() | st.text(max_size=5))
    status, body = Client(fuzz_server).score(request)
    assert status == 422, body
    assert field in [p["field"] for p in body["error"]["problems"]]
    assert all(p["message"] for p in body["error"]["problems"])


@pytest.mark.slow
@FUZZ
@given(body=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_arbitrary_bodies_never_get_a_5xx(body, fuzz_server):
    status, answer = Client(fuzz_server).call("POST", "/v1/score", body)
    assert 400 <= status < 500, answer
    assert answer["error"]["problems"][0]["field"]
