"""Late events: each landing day refreshes the event days it touched, oldest first."""

import datetime

import dagster as dg
import polars as pl

from mlops_assets.definitions import build_definitions
from mlops_assets.defs.partitions import LATE_DAYS, event_days_touched
from mlops_assets.lakehouse.delta_io import scan_table
from mlops_assets.settings import load_settings
from mlops_assets.simulate import Scenario, simulate

START = datetime.date(2026, 1, 1)
DAYS = [START + datetime.timedelta(days=i) for i in range(6)]
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def test_late_events_reach_the_features_and_gold_of_their_event_day(tmp_path):
    settings = load_settings({"MLOPS_DATA_ROOT": str(tmp_path), "MLOPS_ENV": "dev"})
    scenario = Scenario.demo(
        days=len(DAYS), transactions_per_day=800, n_cards=200, seed=3, start_date=START
    )
    simulate(scenario, settings.landing_root)
    defs = build_definitions(settings)
    medallion = defs.resolve_job_def("medallion_daily")
    refresh = defs.resolve_job_def("refresh_event_days")
    with dg.DagsterInstance.ephemeral() as instance:
        for landed in DAYS:
            runs = [(medallion, landed)] + [
                (refresh, d) for d in event_days_touched(landed, settings.start_date)
            ]
            for job, day in runs:
                result = job.execute_in_process(
                    partition_key=day.isoformat(), instance=instance, run_config=QUIET
                )
                assert result.success, (job.name, day)

    def lake(layer: str, name: str) -> pl.DataFrame:
        return scan_table(settings.lake_root / layer / name).collect()

    silver = lake("silver", "transactions").filter(pl.col("event_date").is_in(DAYS))
    late = silver.filter(pl.col("landing_date") > pl.col("event_date"))
    # The scenario lands events late (up to LATE_DAYS), so a day built once would miss them.
    assert late.height > 0
    assert (late["landing_date"] - late["event_date"]).max() <= datetime.timedelta(LATE_DAYS)

    def per_day(frame: pl.DataFrame, date: str, value: pl.Expr) -> dict:
        rows = frame.group_by(date).agg(value.alias("n")).sort(date).rows()
        return dict(rows)

    expected = per_day(silver, "event_date", pl.len())
    features = lake("features", "card_behaviour")
    assert per_day(features, "event_date", pl.len()) == expected
    assert features["transaction_id"].is_duplicated().sum() == 0
    assert set(late["transaction_id"]) <= set(features["transaction_id"])
    daily = lake("features", "merchant_daily")
    assert per_day(daily, "day", pl.col("transactions").sum()) == expected
    gold = lake("gold", "merchant_category_daily")
    date = "event_date" if "event_date" in gold.columns else "day"
    assert per_day(gold, date, pl.col("transactions").sum()) == expected
