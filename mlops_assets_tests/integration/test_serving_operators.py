"""What operators expect of the REST server, against a real server on 127.0.0.1.

`/metrics` read by a strict parser of the Prometheus text exposition format (0.0.4), counters
moving after requests; `/invocations` with each MLflow payload shape (and MLflow's own
scoring client); 405 with `Allow` for undeclared methods; a card the online store has never
seen scored, marked and logged; the training set marking cards without history.
"""

import datetime
import http.client
import json
import math
import re

import mlflow
import pandas as pd
import polars as pl
import pytest

from mlops_assets.features.online_store import OnlineStore
from mlops_assets.features.registry import CARD_BEHAVIOUR
from mlops_assets.features.spec import FRAUD_SPEC, FeatureSpec
from mlops_assets.models.lifecycle import model_name
from mlops_assets.models.training import model_inputs
from mlops_assets.serving.app import ScoringServer, build_service
from mlops_assets.serving.loop_server import LoopScoringServer
from mlops_assets_tests.serving_env import build_serving_env

NAME = model_name("dev")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return build_serving_env(tmp_path_factory.mktemp("serving_ops"), models=1)


@pytest.fixture(scope="module", params=["threads", "loop"])
def server(env, request):
    """The server with each concurrency model: a thread per connection, one event loop."""
    # Rows wait for a flush much longer than the tests: the backlog is observable.
    service = build_service(
        env.settings,
        poll_seconds=0.2,
        flush_rows=100_000,
        flush_interval_ms=600_000,
        wait_for_model=120,
    )
    assert service.holder.current is not None
    if request.param == "loop":
        running = LoopScoringServer(("127.0.0.1", 0), service).start()
    else:
        running = ScoringServer(("127.0.0.1", 0), service).start()
    yield running
    running.stop()


def call(server, method, path, body=None, headers=None):
    """One request on its own connection: status, headers, raw body."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        if isinstance(body, dict | list):
            body = json.dumps(body)
            headers = {"Content-Type": "application/json", **(headers or {})}
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


# -- a strict reader of the text exposition format ------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
_NUMBER = r"(?:[+-]?Inf|NaN|[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
_SAMPLE = re.compile(
    rf"^(?P<name>{_NAME})(?:\{{(?P<labels>(?:{_LABEL}={_VALUE}(?:,{_LABEL}={_VALUE})*)?,?)\}})?"
    rf" (?P<value>{_NUMBER})(?: -?\d+)?$"
)
_PAIR = re.compile(rf"({_LABEL})=({_VALUE})")
_HELP = re.compile(rf"^# HELP (?P<name>{_NAME}) (?P<text>.*)$")
_TYPE = re.compile(rf"^# TYPE (?P<name>{_NAME}) (?P<type>counter|gauge|histogram|summary|untyped)$")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value[1:-1])


def parse_exposition(text: str) -> dict[str, dict]:
    """Families by name: `type`, `help` and `samples` {(sample name, labels): value}.

    Fails on any line outside the grammar, a sample before its family's TYPE or of another
    family, a family declared twice, a repeated sample, and histograms whose buckets are not
    cumulative or do not end at `+Inf` with the count.
    """
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, dict] = {}
    current = None
    for number, line in enumerate(text[:-1].split("\n"), 1):
        assert line, f"line {number} is empty"
        if line.startswith("#"):
            if match := _HELP.match(line):
                name = match["name"]
                assert name not in families or families[name]["type"] is None, line
                families.setdefault(name, {"type": None, "help": None, "samples": {}})
                families[name]["help"] = match["text"]
                current = name
                continue
            match = _TYPE.match(line)
            assert match, f"line {number} is neither HELP nor TYPE: {line!r}"
            name = match["name"]
            family = families.setdefault(name, {"type": None, "help": None, "samples": {}})
            assert family["type"] is None and not family["samples"], f"{name} typed twice"
            family["type"] = match["type"]
            current = name
            continue
        match = _SAMPLE.match(line)
        assert match, f"line {number} breaks the sample grammar: {line!r}"
        assert current is not None and families[current]["type"], f"untyped sample: {line!r}"
        kind = families[current]["type"]
        suffixes = {"histogram": ("_bucket", "_sum", "_count")}.get(kind, ("",))
        assert any(match["name"] == current + s for s in suffixes), (
            f"sample {match['name']} outside its family {current}"
        )
        labels = tuple((k, _unescape(v)) for k, v in _PAIR.findall(match["labels"] or ""))
        assert len({k for k, _ in labels}) == len(labels), f"repeated label: {line!r}"
        key = (match["name"], labels)
        assert key not in families[current]["samples"], f"repeated sample: {line!r}"
        value = float(match["value"].replace("Inf", "inf"))
        if kind == "counter":
            assert value >= 0 and not math.isnan(value), line
        families[current]["samples"][key] = value
    for name, family in families.items():
        if family["type"] == "histogram":
            _check_histogram(name, family["samples"])
    return families


def _check_histogram(name: str, samples: dict) -> None:
    series: dict[tuple, list[tuple[float, float]]] = {}
    for (sample, labels), value in samples.items():
        if sample == f"{name}_bucket":
            rest = tuple(p for p in labels if p[0] != "le")
            le = dict(labels)["le"]
            series.setdefault(rest, []).append((float(le.replace("Inf", "inf")), value))
    assert set(series) == {tuple(p for p in labels if p[0] != "le") for _, labels in samples}, (
        f"histogram {name} has a sum or count without buckets"
    )
    for rest, buckets in series.items():
        bounds = [b for b, _ in buckets]
        assert bounds == sorted(bounds) and bounds[-1] == math.inf, (name, rest)
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), f"{name}{rest} buckets are not cumulative"
        assert samples[(f"{name}_count", rest)] == counts[-1], (name, rest)
        assert samples[(f"{name}_sum", rest)] >= 0


def metrics(server) -> dict[str, dict]:
    status, headers, body = call(server, "GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse_exposition(body.decode())


def value(families, family, sample=None, **labels) -> float:
    """A sample's value (0 when absent: a counter not yet incremented)."""
    key = (sample or family, tuple(sorted(labels.items())))
    for (name, got), number in families[family]["samples"].items():
        if (name, tuple(sorted(got))) == key:
            return number
    return 0.0


def test_the_parser_refuses_what_breaks_the_format():
    good = '# HELP a_total A.\n# TYPE a_total counter\na_total{x="1"} 2\n'
    assert parse_exposition(good)["a_total"]["samples"] == {("a_total", (("x", "1"),)): 2.0}
    for bad in (
        good.rstrip("\n"),
        good + "\n",
        '# TYPE a_total counter\na_total{x="1} 2\n',
        '# TYPE a_total counter\na_total{x="1"} two\n',
        'a_total{x="1"} 2\n',
        "# TYPE a_total counter\nb_total 2\n",
        "# TYPE a_total counter\na_total 1\na_total 1\n",
        '# TYPE h histogram\nh_bucket{le="1"} 3\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 2\n',
    ):
        with pytest.raises(AssertionError):
            parse_exposition(bad)


def test_metrics_follow_the_exposition_format_and_move_with_requests(env, server):
    before = metrics(server)
    assert (
        value(
            before,
            "mlops_serving_model_info",
            model="fraud_detector",
            registered_model=NAME,
            version=env.versions[0],
            alias="champion",
            scorer=server.service.holder.current.scorer,
        )
        == 1
    )
    assert (
        value(before, "mlops_serving_model_loads_total", model="fraud_detector", outcome="ok") == 1
    )
    assert (
        value(before, "mlops_serving_model_loads_total", model="fraud_detector", outcome="error")
        == 0
    )
    requests = env.requests(5, seed=11)
    for request in requests:
        assert call(server, "POST", "/v1/score", request)[0] == 200
    assert call(server, "POST", "/v1/score", {**requests[0], "amount": -1})[0] == 422
    assert call(server, "GET", "/healthz")[0] == 200
    after = metrics(server)
    requests_total = "mlops_serving_requests_total"
    for status, count in (("200", 5), ("422", 1)):
        moved = value(after, requests_total, route="/v1/score", method="POST", status=status) - (
            value(before, requests_total, route="/v1/score", method="POST", status=status)
        )
        assert moved == count, status
    assert (
        value(after, requests_total, route="/healthz", method="GET", status="200")
        - value(before, requests_total, route="/healthz", method="GET", status="200")
        == 1
    )
    # The scrape before this one is counted too.
    assert value(after, requests_total, route="/metrics", method="GET", status="200") >= 1
    histogram = "mlops_serving_request_duration_seconds"
    count = value(after, histogram, f"{histogram}_count", route="/v1/score") - value(
        before, histogram, f"{histogram}_count", route="/v1/score"
    )
    assert count == 6
    assert value(after, histogram, f"{histogram}_sum", route="/v1/score") > 0
    assert after[histogram]["type"] == "histogram"
    scored = sum(
        value(after, "mlops_serving_predictions_total", model=NAME, new_card=n)
        - value(before, "mlops_serving_predictions_total", model=NAME, new_card=n)
        for n in ("true", "false")
    )
    assert scored == 5
    # The backlog: every row recorded since the last flush (the refusal's row included).
    pending = "mlops_serving_inference_log_pending_rows"
    stats = server.service.inference_log.stats()
    assert value(after, pending) == stats.pending >= 6
    written = value(after, "mlops_serving_inference_log_written_rows_total")
    server.service.inference_log.flush()
    flushed = metrics(server)
    assert value(flushed, pending) == 0
    assert value(flushed, "mlops_serving_inference_log_written_rows_total") == (
        written + stats.pending
    )


def test_undeclared_methods_get_405_with_allow(server):
    for method, path, allow in (
        ("TRACE", "/v1/score", "POST"),
        ("TRACE", "/healthz", "GET"),
        ("CONNECT", "/invocations", "POST"),
        ("PROPFIND", "/metrics", "GET"),
        ("GET", "/v1/score", "POST"),
        ("GET", "/invocations", "POST"),
        ("POST", "/healthz", "GET"),
        ("DELETE", "/v1/models/fraud_detector/score", "POST"),
    ):
        status, headers, body = call(server, method, path)
        assert (status, headers.get("Allow")) == (405, allow), (method, path)
        assert json.loads(body)["error"]["status"] == 405
    status, headers, _ = call(server, "TRACE", "/nowhere")
    assert status == 404 and "Allow" not in headers
    status, headers, body = call(server, "HEAD", "/v1/score")
    assert (status, headers.get("Allow"), body) == (405, "POST", b"")
    families = metrics(server)
    assert (
        value(
            families,
            "mlops_serving_requests_total",
            route="/v1/score",
            method="TRACE",
            status="405",
        )
        >= 1
    )


def _native_scores(server, rows: list[dict]) -> list[float]:
    scores = []
    for row in rows:
        status, _, body = call(server, "POST", "/v1/score", row)
        assert status == 200, body
        scores.append(json.loads(body)["score"])
    return scores


def test_invocations_take_each_mlflow_payload_and_score_as_the_native_route(env, server):
    rows = env.requests(4, seed=12)
    rows[1] = {**rows[1], "card_id": "card_first_seen_in_invocations"}
    columns = list(rows[0])
    payloads = {
        "dataframe_split": {
            "dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}
        },
        "dataframe_records": {"dataframe_records": rows},
        "instances": {"instances": rows},
        "inputs": {"inputs": {c: [r[c] for r in rows] for c in columns}},
    }
    expected = _native_scores(server, rows)
    for kind, payload in payloads.items():
        status, headers, body = call(
            server, "POST", "/invocations", payload, {"X-Request-ID": f"inv-{kind}"}
        )
        assert status == 200, (kind, body)
        answer = json.loads(body)
        assert list(answer) == ["predictions"]
        predictions = answer["predictions"]
        assert [p["score"] for p in predictions] == expected, kind
        assert [p["transaction_id"] for p in predictions] == [r["transaction_id"] for r in rows]
        assert [p["new_card"] for p in predictions] == [False, True, False, False], kind
        assert {p["model_version"] for p in predictions} == {env.versions[0]}
        assert [p["request_id"] for p in predictions] == [f"inv-{kind}-{i}" for i in range(4)]
    server.service.inference_log.flush()
    log = pl.read_delta(server.service.inference_log.uri).filter(
        pl.col("request_id").str.starts_with("inv-dataframe_split-"),
        # This server's rows (each concurrency model's server logs the same requests).
        pl.col("logged_at") >= server.service.started_at,
    )
    assert log.sort("request_id")["score"].to_list() == expected
    assert log.sort("request_id")["new_card"].to_list() == [False, True, False, False]
    assert (log["status"] == "ok").all() and (log["mode"] == "online").all()


def test_mlflow_scoring_client_works_against_the_server(env, server):
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    host, port = server.server_address[:2]
    client = ScoringServerClient(host, port)
    client.wait_server_ready(timeout=30)
    assert json.loads(client.get_version())["mlflow_version"] == mlflow.__version__
    rows = env.requests(3, seed=13)
    predictions = client.invoke(pd.DataFrame(rows)).get_predictions()
    assert predictions["score"].tolist() == _native_scores(server, rows)


def test_invocations_refuse_as_mlflow_does(env, server):
    good = env.requests(2, seed=14)
    cases = [
        ({"dataframe_records": good, "instances": good}, "body"),
        ({"records": good}, "records"),
        ({"dataframe_records": []}, "dataframe_records"),
        (
            {"dataframe_records": [good[0], {**good[1], "amount": "x"}]},
            "dataframe_records[1].amount",
        ),
        (
            {"dataframe_split": {"columns": ["card_id"], "data": [[1, 2]]}},
            "dataframe_split.data[0]",
        ),
        ({"inputs": {"card_id": ["a", "b"], "amount": [1.0]}}, "inputs"),
        ({"dataframe_records": good, "params": {"threshold": 0.1}}, "params"),
        ([good[0]], "body"),
    ]
    for payload, field in cases:
        status, _, body = call(server, "POST", "/invocations", payload)
        answer = json.loads(body)
        assert status == 400 and answer["error_code"] == "BAD_REQUEST", (payload, answer)
        assert field in answer["message"] and answer["problems"][0]["field"] == field, answer
    status, _, body = call(
        server, "POST", "/invocations", b"{", {"Content-Type": "application/json"}
    )
    assert status == 400 and json.loads(body)["error_code"] == "BAD_REQUEST"
    status, _, body = call(
        server, "POST", "/invocations", json.dumps({"inputs": good}), {"Content-Type": "text/csv"}
    )
    assert status == 415 and json.loads(body)["error_code"] == "BAD_REQUEST"
    document = json.loads(call(server, "GET", "/openapi.json")[2])
    operation = document["paths"]["/invocations"]["post"]
    assert {"200", "400", "415"} <= set(operation["responses"])
    assert {"/metrics", "/ping", "/version"} <= set(document["paths"])
    shapes = document["components"]["schemas"]["Invocation"]["oneOf"]
    assert [s["required"] for s in shapes] == [
        ["dataframe_split"],
        ["dataframe_records"],
        ["instances"],
        ["inputs"],
    ]


def test_a_card_never_seen_is_scored_marked_and_logged(env, server):
    known = env.requests(1, seed=15)[0]
    new = {**known, "transaction_id": "first-txn-of-new-card", "card_id": "card_brand_new"}
    status, _, body = call(server, "POST", "/v1/score", new)
    assert status == 200, body
    answer = json.loads(body)
    assert answer["new_card"] is True and 0 <= answer["score"] <= 1
    status, _, body = call(server, "POST", "/v1/score", known)
    assert status == 200 and json.loads(body)["new_card"] is False
    # The score is the model's on the documented defaults, the card marked as without history.
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    request = {**new, "event_time": datetime.datetime.fromisoformat(new["event_time"])}
    store = OnlineStore(env.settings.online_store_path)
    try:
        frame = FRAUD_SPEC.fetch(store, request)
    finally:
        store.close()
    assert frame["card_without_history"].to_list() == [True]
    for name, default in CARD_BEHAVIOUR.defaults.items():
        assert frame[name].to_list() == [default], name
    assert answer["score"] == float(pyfunc.predict(model_inputs(frame, FRAUD_SPEC))[0, 1])
    server.service.inference_log.flush()
    log = pl.read_delta(server.service.inference_log.uri)
    row = log.filter(pl.col("transaction_id") == "first-txn-of-new-card").row(0, named=True)
    assert row["status"] == "ok" and row["new_card"] is True
    assert row["card_without_history"] is True
    for name, default in CARD_BEHAVIOUR.defaults.items():
        assert row[name] == default, name
    known_row = log.filter(
        pl.col("transaction_id") == known["transaction_id"], pl.col("status") == "ok"
    ).row(-1, named=True)
    assert known_row["new_card"] is False and known_row["card_without_history"] is False


def test_the_training_set_marks_cards_without_history_and_the_model_takes_it(env):
    frame = env.training_set
    assert "card_without_history" in FRAUD_SPEC.feature_columns
    marked = frame["card_without_history"]
    assert marked.to_list() == frame["card_behaviour__feature_time"].is_null().to_list()
    assert 0 < marked.sum() < frame.height
    # A card's first transaction (in silver) has no earlier card row: it is marked.
    silver = pl.read_delta(str(env.settings.lake_root / "silver" / "transactions"))
    firsts = silver.sort("event_time").group_by("card_id").first()["transaction_id"]
    first_rows = frame.filter(pl.col("transaction_id").is_in(firsts.implode()))
    assert first_rows.height > 0 and first_rows["card_without_history"].all()
    # The registered model was fitted with it and carries it in its stored spec.
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    spec = FeatureSpec.from_dict(pyfunc.metadata.metadata["feature_spec"])
    assert "card_without_history" in spec.feature_columns
    assert "card_without_history" in list(pyfunc.get_raw_model().feature_names_in_)
    assert "card_without_history" in model_inputs(frame.head(3), FRAUD_SPEC).columns


@pytest.fixture(scope="module")
def rejecting_server(env):
    service = build_service(
        env.settings, poll_seconds=0.2, wait_for_model=120, reject_unknown_cards=True
    )
    running = ScoringServer(("127.0.0.1", 0), service).start()
    yield running
    running.stop()


def test_new_cards_can_still_be_refused_when_asked(env, rejecting_server):
    known = env.requests(1, seed=16)[0]
    status, _, body = call(rejecting_server, "POST", "/v1/score", {**known, "card_id": "nope"})
    assert status == 422 and "not known to the online store" in json.loads(body)["error"]["message"]


# -- cold start: the registry read directly, the verified compiled cache ---------------------


def test_the_registry_reader_answers_as_the_mlflow_client(env):
    from mlops_assets.serving.fastload import RegistryReader

    reader = RegistryReader(env.settings.mlflow_uri)
    assert reader.kind == "sqlite"
    client = env.client
    assert reader.alias_version(NAME, "champion") == str(
        client.get_model_version_by_alias(NAME, "champion").version
    )
    assert reader.alias_version(NAME, "no-such-alias") is None
    assert reader.alias_version("dev.no_such_model", "champion") is None
    info = reader.version_info(NAME, env.versions[0])
    assert info.location == client.get_model_version_download_uri(NAME, env.versions[0])
    assert info.local_dir is not None and (info.local_dir / "MLmodel").is_file()


def test_a_version_loads_from_the_verified_cache_after_its_first_load(env, tmp_path):
    from mlops_assets.serving.fastload import CompiledCache, RegistryReader
    from mlops_assets.serving.model import load_serving_model, request_features

    reader = RegistryReader(env.settings.mlflow_uri)
    cache = CompiledCache(tmp_path / "cache")
    version = env.versions[0]
    first = load_serving_model(NAME, version, registry=reader, cache=cache)
    assert first.load_path == "mlflow" and "no cached scorer" in first.load_detail
    second = load_serving_model(NAME, version, registry=reader, cache=cache)
    assert second.load_path == "cache" and second.pyfunc is None
    assert second.scorer == first.scorer == "compiled"
    assert second.threshold == first.threshold
    assert second.spec.feature_columns == first.spec.feature_columns
    # The same scores, bit for bit, on real requests.
    from mlops_assets.features.online_store import OnlineStore

    store = OnlineStore(env.settings.online_store_path)
    try:
        for request in env.requests(50, seed=31):
            fields = {
                **request,
                "event_time": datetime.datetime.fromisoformat(request["event_time"]),
            }
            looked_up = {
                lookup.table: store.lookup(lookup.table, fields[lookup.keys[0]])
                for lookup in first.spec.lookups
            }
            features = request_features(first.spec, fields, looked_up)
            assert (
                second.score(features)
                == first.score(features)
                == first.reference_score([features])[0]
            )
    finally:
        store.close()


def test_the_cache_misses_on_changed_artifacts_code_or_scores(env, tmp_path):
    import pickle
    import shutil

    from mlops_assets.serving.fastload import CompiledCache, RegistryReader
    from mlops_assets.serving.model import load_serving_model

    reader = RegistryReader(env.settings.mlflow_uri)
    cache = CompiledCache(tmp_path / "cache")
    version = env.versions[0]
    load_serving_model(NAME, version, registry=reader, cache=cache)
    artifacts = reader.version_info(NAME, version).local_dir
    assert cache.load(NAME, version, artifacts)[0] is not None
    # Artifacts that differ in one byte of one file.
    changed = tmp_path / "artifacts"
    shutil.copytree(artifacts, changed)
    (changed / "requirements.txt").write_bytes((changed / "requirements.txt").read_bytes() + b"\n")
    cached, why = cache.load(NAME, version, changed)
    assert cached is None and "artifacts" in why and "changed" in why
    # Another version's name: no entry.
    assert cache.load(NAME, "999", artifacts)[0] is None
    # A cached scorer that no longer gives the pyfunc's recorded scores is refused.
    path = next((tmp_path / "cache").rglob("*.pkl"))
    entry = pickle.loads(path.read_bytes())
    entry["probe_scores"][3] = float(entry["probe_scores"][3]) + 1e-12
    path.write_bytes(pickle.dumps(entry))
    cached, why = cache.load(NAME, version, artifacts)
    assert cached is None and "the pyfunc gave" in why
    # An unreadable entry is a miss, and the full load rewrites it.
    path.write_bytes(b"not a pickle")
    assert "unreadable" in cache.load(NAME, version, artifacts)[1]
    reloaded = load_serving_model(NAME, version, registry=reader, cache=cache)
    assert reloaded.load_path == "mlflow" and "unreadable" in reloaded.load_detail
    assert cache.load(NAME, version, artifacts)[0] is not None


def test_a_new_process_serves_from_the_cache_without_importing_mlflow(env, tmp_path):
    import subprocess
    import sys

    from mlops_assets.serving.fastload import CompiledCache, RegistryReader
    from mlops_assets.serving.model import load_serving_model

    cache_dir = tmp_path / "cache"
    reader = RegistryReader(env.settings.mlflow_uri)
    load_serving_model(NAME, env.versions[0], registry=reader, cache=CompiledCache(cache_dir))
    script = (
        "import sys, json\n"
        "from mlops_assets.serving.fastload import CompiledCache, RegistryReader\n"
        "from mlops_assets.serving.model import load_serving_model\n"
        f"reader = RegistryReader({env.settings.mlflow_uri!r})\n"
        f"version = reader.alias_version({NAME!r}, 'champion')\n"
        f"model = load_serving_model({NAME!r}, version, registry=reader,\n"
        f"    cache=CompiledCache({str(cache_dir)!r}))\n"
        "print(json.dumps({'path': model.load_path, 'version': model.version,\n"
        "    'mlflow': 'mlflow' in sys.modules, 'sklearn': 'sklearn' in sys.modules}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer == {
        "path": "cache",
        "version": env.versions[0],
        "mlflow": False,
        "sklearn": False,
    }


def test_readiness_names_the_load_path_and_the_startup(env):
    from mlops_assets.serving.fastload import CompiledCache, RegistryReader
    from mlops_assets.serving.model import load_serving_model

    # A first load (as a server's) writes the environment's cache; the next start reads it.
    load_serving_model(
        NAME,
        env.versions[0],
        registry=RegistryReader(env.settings.mlflow_uri),
        cache=CompiledCache(env.settings.env_root / "serving_cache"),
    )
    service = build_service(env.settings, poll_seconds=0.2, wait_for_model=120)
    running = ScoringServer(("127.0.0.1", 0), service).start()
    try:
        status, _, body = call(running, "GET", "/readyz")
        ready = json.loads(body)
        assert status == 200, ready
        assert ready["model"]["load_path"] == "cache"
        assert ready["startup"]["load_path"] == "cache"
        assert ready["startup"]["model_load_s"] >= 0
        health = json.loads(call(running, "GET", "/healthz")[2])
        assert health["model"]["load_path"] == "cache"
        assert "verified on" in health["model"]["load_detail"]
    finally:
        running.stop()


def test_an_mlflow_server_registry_is_read_over_rest_and_proxied_artifacts_mirrored(env, tmp_path):
    """A real `mlflow server` proxying artifacts: alias, location and files without MLflow."""
    from mlops_assets.serving.fastload import CompiledCache, RegistryReader
    from mlops_assets.serving.model import load_serving_model
    from mlops_assets.settings import use_mlflow_store
    from mlops_assets.stack.mlflow_server import mlflow_process
    from mlops_assets.stack.process import free_port

    port = free_port()
    server = mlflow_process(
        f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts", tmp_path / "state", port
    )
    server.start(timeout=300)
    uri = f"http://127.0.0.1:{port}"
    try:
        source = mlflow.pyfunc.load_model(f"models:/{NAME}/{env.versions[0]}")
        metadata = source.metadata.metadata
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiment = client.create_experiment("proxied")
        # Through `use_mlflow_store`: MLflow's setters also write MLFLOW_TRACKING_URI, which
        # would point every later test's settings on this worker at this module's store.
        previous = mlflow.get_tracking_uri()
        use_mlflow_store(uri)
        try:
            with mlflow.start_run(experiment_id=experiment):
                logged = mlflow.sklearn.log_model(
                    source.get_raw_model(),
                    name="model",
                    serialization_format="cloudpickle",
                    pyfunc_predict_fn="predict_proba",
                    metadata=metadata,
                )
            registered = mlflow.register_model(logged.model_uri, NAME)
            client.set_registered_model_alias(NAME, "champion", registered.version)
            reader = RegistryReader(uri, mirror_dir=tmp_path / "mirror")
            assert reader.kind == "rest"
            assert reader.alias_version(NAME, "champion") == str(registered.version)
            assert reader.alias_version(NAME, "nobody") is None
            info = reader.version_info(NAME, str(registered.version))
            assert info.location.startswith("mlflow-artifacts:")
            assert info.local_dir is not None and info.local_dir.is_relative_to(tmp_path / "mirror")
            assert (info.local_dir / "MLmodel").is_file() and (
                info.local_dir / "model.pkl"
            ).is_file()
            cache = CompiledCache(tmp_path / "cache")
            first = load_serving_model(NAME, str(registered.version), registry=reader, cache=cache)
            second = load_serving_model(NAME, str(registered.version), registry=reader, cache=cache)
            assert (first.load_path, second.load_path) == ("mlflow", "cache")
            assert second.scorer == "compiled" and second.threshold == first.threshold
        finally:
            use_mlflow_store(previous)
    finally:
        server.stop()
