"""Feature assets on a temporary lake: correctness against brute force, lineage, idempotence."""

import datetime

import dagster as dg
import polars as pl
import pytest

from mlops_assets.definitions import build_definitions
from mlops_assets.defs.runner import run_days
from mlops_assets.features.discovery import describe, list_tables
from mlops_assets.features.online_store import OnlineStore
from mlops_assets.features.registry import CARD_BEHAVIOUR
from mlops_assets.features.spec import FRAUD_SPEC, FeatureSpec
from mlops_assets.lakehouse.catalog import Catalog
from mlops_assets.lakehouse.delta_io import read_lineage, scan_table, table_version
from mlops_assets.settings import load_settings
from mlops_assets.simulate import Scenario, simulate

START = datetime.date(2026, 1, 1)
DAYS = [START + datetime.timedelta(days=i) for i in range(10)]


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    settings = load_settings({"MLOPS_DATA_ROOT": str(root), "MLOPS_ENV": "dev"})
    scenario = Scenario.demo(
        days=len(DAYS), transactions_per_day=1_500, n_cards=300, seed=5, start_date=START
    )
    simulate(scenario, settings.landing_root)
    defs = build_definitions(settings)
    with dg.DagsterInstance.ephemeral() as instance:
        assert all(r.success for r in run_days(defs, DAYS, instance, log_level="ERROR"))
        runs = run_days(defs, DAYS, instance, job_name="features_daily", log_level="ERROR")
        assert [r.success for r in runs] == [True] * len(DAYS)
        assert defs.resolve_job_def("online_publish").execute_in_process(instance=instance).success
        assert build_training_set(defs, instance).success
        yield settings, defs, instance


CUTOFF = "2026-01-11T00:00:00+00:00"


def build_training_set(defs, instance):
    job = dg.define_asset_job("training_set_only", selection=[dg.AssetKey(["ml", "training_set"])])
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    return merged.resolve_job_def("training_set_only").execute_in_process(
        instance=instance,
        run_config={
            "ops": {"ml__training_set": {"config": {"label_cutoff": CUTOFF, "days": 10}}},
            "loggers": {"console": {"config": {"log_level": "ERROR"}}},
        },
    )


def read(settings, layer, name) -> pl.DataFrame:
    return scan_table(settings.lake_root / layer / name).collect()


def test_card_features_match_a_brute_force_count(lake):
    settings, *_ = lake
    silver = read(settings, "silver", "transactions")
    features = read(settings, "features", "card_behaviour")
    busiest = features.sort("txn_count_7d", descending=True).row(0, named=True)
    card, at = busiest["card_id"], busiest["event_time"]
    history = silver.filter(pl.col("card_id") == card)

    def within(hours: float) -> pl.DataFrame:
        since = at - datetime.timedelta(hours=hours)
        return history.filter(pl.col("event_time") > since, pl.col("event_time") <= at)

    assert busiest["txn_count_1h"] == within(1).height
    assert busiest["txn_count_24h"] == within(24).height
    assert busiest["txn_count_7d"] == within(24 * 7).height
    assert busiest["amount_sum_24h"] == pytest.approx(within(24)["amount"].sum())
    assert busiest["amount_mean_7d"] == pytest.approx(within(24 * 7)["amount"].mean())
    foreign = within(24 * 7).select((pl.col("country") != pl.col("card_country")).mean()).item()
    assert busiest["foreign_share_7d"] == pytest.approx(foreign)


def test_one_card_row_per_transaction_of_each_day(lake):
    settings, *_ = lake
    silver = read(settings, "silver", "transactions").filter(pl.col("event_date").is_in(DAYS))
    features = read(settings, "features", "card_behaviour")
    assert features.height == silver.height
    assert features.select("card_id", "transaction_id").is_duplicated().sum() == 0


def test_merchant_risk_counts_only_chargebacks_reported_before_the_day(lake):
    settings, *_ = lake
    silver = read(settings, "silver", "transactions")
    labels = read(settings, "silver", "labels").join(
        silver.select("transaction_id", "merchant_id"), on="transaction_id"
    )
    risk = read(settings, "features", "merchant_risk")
    day = DAYS[-1]
    as_of = datetime.datetime.combine(
        day + datetime.timedelta(days=1), datetime.time(), datetime.UTC
    )
    expected = (
        labels.filter(
            pl.col("reported_at") < as_of,
            pl.col("reported_date") >= day - datetime.timedelta(days=29),
        )
        .group_by("merchant_id")
        .agg(pl.col("is_fraud").sum().alias("expected"))
    )
    got = risk.filter(pl.col("day") == day).join(expected, on="merchant_id", how="left")
    assert expected.height > 0
    assert (got["fraud_reported_30d"] == got["expected"].fill_null(0)).all()
    assert (got["as_of"] == as_of).all()
    assert got["fraud_rate_30d"].is_between(0, 1).all()


def test_lineage_records_the_source_versions_read(lake):
    settings, *_ = lake
    lineage = read_lineage(settings.lake_root / "features" / "card_behaviour")
    assert lineage["sources"]["silver/transactions"] == table_version(
        settings.lake_root / "silver" / "transactions"
    )
    assert lineage["lookback_days"] == 7
    assert lineage["day"] == DAYS[-1].isoformat()
    earlier = read_lineage(settings.lake_root / "features" / "card_behaviour", DAYS[2].isoformat())
    assert earlier["day"] == DAYS[2].isoformat()
    assert earlier["sources"]["silver/transactions"] <= lineage["sources"]["silver/transactions"]


def test_discovery_lists_tables_with_keys_freshness_and_lineage(lake):
    settings, *_ = lake
    catalog = Catalog(settings)
    names = {row["name"]: row for row in list_tables(catalog)}
    assert names["card_behaviour"]["entity_keys"] == ("card_id",)
    assert names["merchant_risk"]["rows"] > 0
    info = describe(catalog, "card_behaviour")
    assert info["latest_feature_time"].startswith(DAYS[-1].isoformat())
    assert info["lineage"]["code_version"]
    assert {f["name"] for f in info["features"]} >= {"txn_count_24h", "amount_mean_7d"}


def test_online_store_answers_for_every_recent_card_and_defaults_unknown_ones(lake):
    settings, *_ = lake
    features = read(settings, "features", "card_behaviour")
    latest = features.sort("event_time").group_by("card_id").last()
    store = OnlineStore(settings.online_store_path)
    vectors = store.lookup_many("card_behaviour", latest["card_id"].to_list())
    assert all(v.found for v in vectors)
    expected = {r["card_id"]: r for r in latest.iter_rows(named=True)}
    for vector in vectors[:50]:
        row = expected[vector.key]
        assert vector.feature_time == row["event_time"]
        assert vector.values["txn_count_24h"] == row["txn_count_24h"]
    unknown = store.lookup("card_behaviour", "card_never_seen")
    assert not unknown.found
    assert unknown.values == CARD_BEHAVIOUR.defaults
    assert store.stats()["card_behaviour"]["misses"] == 1
    merchants = read(settings, "features", "merchant_risk")["merchant_id"].unique().to_list()
    assert all(v.found for v in store.lookup_many("merchant_risk", merchants))
    store.close()


def test_refreshing_a_day_again_changes_nothing(lake):
    settings, defs, instance = lake
    before = {
        name: read(settings, "features", name).sort(pl.all())
        for name in ("card_behaviour", "merchant_daily", "merchant_risk")
    }
    assert all(
        r.success
        for r in run_days(defs, [DAYS[4]], instance, job_name="features_daily", log_level="ERROR")
    )
    for name, frame in before.items():
        assert read(settings, "features", name).sort(pl.all()).equals(frame), name


def test_training_set_uses_only_features_known_strictly_before_each_event(lake):
    settings, *_ = lake
    rows = read(settings, "ml", "training_set")
    # Events whose labels are 3 days mature at the cutoff, over the 10 days ending then.
    mature_until = datetime.datetime.fromisoformat(CUTOFF) - datetime.timedelta(days=3)
    silver = read(settings, "silver", "transactions").filter(
        pl.col("event_time") <= mature_until,
        pl.col("event_date") > mature_until.date() - datetime.timedelta(days=10),
    )
    assert rows.height == silver.height
    assert rows["event_time"].max() <= mature_until
    assert rows["transaction_id"].is_duplicated().sum() == 0
    for column in ("card_behaviour__feature_time", "merchant_risk__feature_time"):
        known = rows.filter(pl.col(column).is_not_null())
        assert known.height > 0.5 * rows.height, column
        assert (known[column] < known["event_time"]).all(), column
    # The card row used is the card's latest row strictly before the event.
    features = read(settings, "features", "card_behaviour")
    sample = rows.filter(pl.col("card_behaviour__feature_time").is_not_null()).sample(200, seed=1)
    for row in sample.iter_rows(named=True):
        before = features.filter(
            pl.col("card_id") == row["card_id"], pl.col("event_time") < row["event_time"]
        )
        assert row["card_behaviour__feature_time"] == before["event_time"].max()
    # Labels: fraud means a fraud chargeback reported by the cutoff.
    labels = read(settings, "silver", "labels").filter(
        pl.col("is_fraud"), pl.col("reported_at") <= datetime.datetime.fromisoformat(CUTOFF)
    )
    fraud_ids = set(rows.filter(pl.col("is_fraud"))["transaction_id"])
    assert fraud_ids == set(labels["transaction_id"]) & set(rows["transaction_id"])
    assert len(fraud_ids) > 0


def test_training_set_is_deterministic(lake):
    settings, defs, instance = lake
    first = read(settings, "ml", "training_set")
    assert build_training_set(defs, instance).success
    assert read(settings, "ml", "training_set").equals(first)


def test_serving_from_the_online_store_matches_the_training_join(lake):
    settings, *_ = lake
    cards = read(settings, "features", "card_behaviour")
    risk = read(settings, "features", "merchant_risk")
    tables = {"card_behaviour": cards, "merchant_risk": risk}
    # Requests just after everything the store holds, for cards and merchants seen lately.
    at = max(cards["event_time"].max(), risk["as_of"].max()) + datetime.timedelta(minutes=1)
    silver = read(settings, "silver", "transactions")
    recent = silver.sort("event_time").tail(40)
    events = recent.select(FRAUD_SPEC.request_fields).with_columns(pl.lit(at).alias("event_time"))
    offline = FRAUD_SPEC.training_set(events, tables)
    store = OnlineStore(settings.online_store_path)
    try:
        for request, expected in zip(
            events.iter_rows(named=True), offline.iter_rows(named=True), strict=True
        ):
            served = FRAUD_SPEC.fetch(store, request).row(0, named=True)
            for name in FRAUD_SPEC.feature_columns:
                assert served[name] == pytest.approx(expected[name]), name
        # Forty days later every looked-up row is stale: both sides fall back to defaults.
        late = events.with_columns(pl.col("event_time") + datetime.timedelta(days=40))
        offline_late = FRAUD_SPEC.training_set(late, tables).row(0, named=True)
        served_late = FRAUD_SPEC.fetch(store, late.row(0, named=True)).row(0, named=True)
        for name in FRAUD_SPEC.feature_columns:
            assert served_late[name] == pytest.approx(offline_late[name]), name
        assert served_late["txn_count_24h"] == 0
    finally:
        store.close()
    with pytest.raises(ValueError, match="event_time must be a datetime with a time zone"):
        FRAUD_SPEC.request_frame({**request, "event_time": datetime.datetime(2026, 1, 1)}, {})
    assert FeatureSpec.from_json(FRAUD_SPEC.to_json()) == FRAUD_SPEC


def test_late_events_reach_a_day_when_it_is_refreshed_after_they_land(tmp_path):
    settings = load_settings({"MLOPS_DATA_ROOT": str(tmp_path), "MLOPS_ENV": "dev"})
    days = DAYS[:5]
    scenario = Scenario.demo(
        days=len(days), transactions_per_day=1_500, n_cards=300, seed=9, start_date=START
    )
    simulate(scenario, settings.landing_root)
    defs = build_definitions(settings)
    day = days[1]
    card_rows = settings.lake_root / "features" / "card_behaviour"
    with dg.DagsterInstance.ephemeral() as instance:
        assert all(r.success for r in run_days(defs, days[:2], instance, log_level="ERROR"))
        assert run_days(defs, [day], instance, job_name="features_daily", log_level="ERROR")[
            0
        ].success
        before = scan_table(card_rows).filter(pl.col("event_date") == day).collect()
        # The next landing days bring late events of `day`.
        assert all(r.success for r in run_days(defs, days[2:], instance, log_level="ERROR"))
        silver = read(settings, "silver", "transactions").filter(pl.col("event_date") == day)
        late = silver.filter(pl.col("landing_date") > day)
        assert late.height > 0
        assert before.height == silver.height - late.height
        assert run_days(defs, [day], instance, job_name="features_daily", log_level="ERROR")[
            0
        ].success
        after = scan_table(card_rows).filter(pl.col("event_date") == day).collect()
    assert after.height == silver.height
    assert set(late["transaction_id"]) <= set(after["transaction_id"])


def test_training_registers_a_model_a_clean_process_loads_with_its_spec(lake):
    import subprocess
    import sys

    import mlflow

    from mlops_assets.models.registry import load_feature_spec
    from mlops_assets.models.training import train

    settings, defs, instance = lake
    job = dg.define_asset_job("train_only", selection=[dg.AssetKey(["ml", "fraud_model"])])
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    result = merged.resolve_job_def("train_only").execute_in_process(instance=instance)
    assert result.success
    built = result.asset_materializations_for_node("ml__fraud_model")[0].metadata
    version, run_id = built["version"].value, built["mlflow_run_id"].value
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlops.dagster_run_id"] == result.run_id
    assert "training_set" in run.data.tags["mlops.inputs"]
    assert {"pr_auc", "recall_at_1pct_fpr", "brier"} <= set(run.data.metrics)
    model_uri = f"models:/dev.fraud_detector/{version}"
    assert load_feature_spec(model_uri) == FRAUD_SPEC
    # A clean process loads the model by its registry URI and scores.
    script = (
        "import mlflow, polars as pl, sys\n"
        f"mlflow.set_tracking_uri({settings.mlflow_uri!r})\n"
        f"model = mlflow.pyfunc.load_model({model_uri!r})\n"
        "from mlops_assets.features.spec import FRAUD_SPEC\n"
        "from mlops_assets.models.training import model_inputs\n"
        f"frame = pl.read_delta({str(settings.lake_root / 'ml' / 'training_set')!r}).head(20)\n"
        "scores = model.predict(model_inputs(frame, FRAUD_SPEC))[:, 1]\n"
        "fractional = any(0 < s < 1 for s in scores)\n"
        "print(len(scores), bool(((scores >= 0) & (scores <= 1)).all()), fractional)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-3:] == ["20", "True", "True"]
    # The same data, seed and code give the same metrics.
    frame = read(settings, "ml", "training_set")
    first, second = train(frame, FRAUD_SPEC, seed=3), train(frame, FRAUD_SPEC, seed=3)
    assert first.metrics == second.metrics
