"""The medallion assets materialized in-process on a temporary lake from simulated landing days."""

import datetime

import dagster as dg
import polars as pl
import pytest

from mlops_assets.definitions import build_definitions
from mlops_assets.defs.runner import run_days
from mlops_assets.lakehouse.delta_io import scan_table
from mlops_assets.settings import load_settings
from mlops_assets.simulate import Scenario, simulate

START = datetime.date(2026, 1, 1)
DAYS = [START + datetime.timedelta(days=i) for i in range(4)]


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    settings = load_settings({"MLOPS_DATA_ROOT": str(root), "MLOPS_ENV": "dev"})
    scenario = Scenario.demo(days=len(DAYS), transactions_per_day=3_000, seed=11, start_date=START)
    manifests = simulate(scenario, settings.landing_root)
    defs = build_definitions(settings)
    with dg.DagsterInstance.ephemeral() as instance:
        runs = run_days(defs, DAYS, instance)
        assert [r.success for r in runs] == [True] * len(DAYS)
        gold = run_days(
            defs, DAYS, instance, selection=[dg.AssetKey(["gold", "merchant_category_daily"])]
        )
        assert all(r.success for r in gold)
        yield settings, defs, instance, manifests


def table(settings, layer, name) -> pl.DataFrame:
    return scan_table(settings.lake_root / layer / name).collect()


def counts(settings) -> dict[str, int]:
    out = {}
    for layer_dir in sorted(settings.lake_root.iterdir()):
        for table_dir in sorted(layer_dir.iterdir()):
            out[f"{layer_dir.name}/{table_dir.name}"] = scan_table(table_dir).collect().height
    return out


def test_every_table_is_built(lake):
    settings, *_ = lake
    assert set(counts(settings)) == {
        "bronze/transactions",
        "bronze/labels",
        "silver/transactions",
        "silver/labels",
        "gold/merchant_category_daily",
        "quarantine/bronze_transactions",
        "quarantine/bronze_labels",
        "quarantine/silver_transactions",
        "quarantine/silver_labels",
    }


def test_every_bad_landing_line_is_quarantined_with_a_reason(lake):
    settings, _, _, manifests = lake
    bronze_q = table(settings, "quarantine", "bronze_transactions")
    silver_q = table(settings, "quarantine", "silver_transactions")
    for manifest in manifests:
        day = (
            manifest.date
            if isinstance(manifest.date, datetime.date)
            else datetime.date.fromisoformat(str(manifest.date))
        )
        at_bronze = bronze_q.filter(pl.col("landing_date") == day).height
        at_silver = silver_q.filter(pl.col("landing_date") == day).height
        assert at_bronze == manifest.malformed, day
        assert at_silver == manifest.wrong_type + manifest.missing_field, day
    quarantined = pl.concat([bronze_q, silver_q])
    assert quarantined["reason"].null_count() == 0
    assert quarantined["raw"].null_count() == 0
    assert quarantined.filter(pl.col("stage") == "silver")["column"].null_count() == 0


def test_no_landing_line_is_lost(lake):
    settings, _, _, manifests = lake
    bronze = table(settings, "bronze", "transactions")
    bronze_q = table(settings, "quarantine", "bronze_transactions")
    for manifest in manifests:
        day = datetime.date.fromisoformat(str(manifest.date))
        lines = manifest.transaction_lines
        assert (
            bronze.filter(pl.col("landing_date") == day).height
            + bronze_q.filter(pl.col("landing_date") == day).height
            == lines
        )


def test_silver_holds_each_transaction_once_including_duplicates_across_days(lake):
    settings, _, _, manifests = lake
    silver = table(settings, "silver", "transactions")
    assert silver["transaction_id"].is_duplicated().sum() == 0
    assert sum(m.duplicate_next_day for m in manifests) > 0
    # Exactly the simulator's valid events, each once.
    assert silver.height == sum(m.valid_transactions for m in manifests)


def test_late_events_and_the_added_column_reach_silver(lake):
    settings, _, _, manifests = lake
    silver = table(settings, "silver", "transactions")
    late = silver.filter(pl.col("event_date") < pl.col("landing_date")).height
    assert late >= sum(m.late_events for m in manifests) > 0
    added_from = min(datetime.date.fromisoformat(str(m.date)) for m in manifests if m.added_column)
    with_terminal = silver.filter(pl.col("terminal_id").is_not_null())
    assert with_terminal.height > 0
    assert with_terminal["landing_date"].min() == added_from


def test_gold_reconciles_with_silver(lake):
    settings, *_ = lake
    silver = table(settings, "silver", "transactions")
    gold = table(settings, "gold", "merchant_category_daily")
    per_day = silver.filter(pl.col("event_date").is_in(DAYS)).group_by("event_date").len()
    gold_per_day = gold.group_by("event_date").agg(pl.col("transactions").sum())
    joined = per_day.join(gold_per_day, on="event_date")
    assert joined.height == len(DAYS)
    assert (joined["len"] == joined["transactions"]).all()
    assert gold["fraud_rate"].is_between(0, 1).all()
    assert gold["fraud_transactions"].sum() > 0


def test_materializations_report_table_metadata_and_checks_pass(lake):
    _, _, instance, _ = lake
    event = instance.get_latest_materialization_event(dg.AssetKey(["silver", "transactions"]))
    metadata = event.asset_materialization.metadata
    for key in ("dagster/row_count", "dagster/uri", "dagster/column_schema", "delta_version"):
        assert key in metadata, key
    assert metadata["dagster/row_count"].value > 0
    check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey(["silver", "transactions"]), "transaction_id_unique")]
    )
    key = dg.AssetCheckKey(dg.AssetKey(["silver", "transactions"]), "transaction_id_unique")
    assert check[key].status.value == "SUCCEEDED"


def test_rematerializing_any_partition_changes_no_row_counts(lake):
    settings, defs, instance, _ = lake
    before = counts(settings)
    runs = run_days(defs, [DAYS[1], DAYS[0], DAYS[3]], instance)
    assert all(r.success for r in runs)
    assert counts(settings) == before


def test_nothing_is_written_outside_the_environment_root(lake):
    settings, *_ = lake
    written = {p.name for p in settings.data_root.iterdir()}
    assert written == {"dev"}
