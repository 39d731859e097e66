"""The prediction summary and the monitoring dashboard on a small simulated lake with a champion.

Nine days are simulated; eight are ingested, a champion is trained on them and the last two
are scored (the last one twice: the log then holds two predictions per transaction). The
summary is checked against a computation of its own from the inference log, silver
transactions and label reports; landing day nine brings chargebacks of the scored days, and
the refresh run after it changes the summary. The dashboard page is built from the monitoring
tables and opened in the system Chromium with the network cut off.
"""

import datetime
import re
import shutil
from collections import defaultdict

import dagster as dg
import polars as pl
import pytest

from mlops_assets.definitions import build_definitions
from mlops_assets.defs.runner import run_days
from mlops_assets.lakehouse.delta_io import scan_table
from mlops_assets.monitoring.dashboard import TITLES
from mlops_assets.settings import load_settings
from mlops_assets.simulate import Scenario, simulate
from mlops_assets_tests.integration.conftest import QUIET, THRESHOLDS, build_lake

pytestmark = pytest.mark.slow

START = datetime.date(2026, 2, 1)
DAYS = [START + datetime.timedelta(days=i) for i in range(9)]
INGESTED, SCORED = DAYS[:8], DAYS[6:8]
SUMMARY = dg.AssetKey(["gold", "prediction_summary"])
DASHBOARD = dg.AssetKey(["monitoring", "dashboard"])


def materialize(defs, instance, keys, day=None):
    """Materialize assets in one in-process run of the definitions; failures raised."""
    name = "test_" + "_".join("_".join(k.path) for k in keys)
    job = dg.define_asset_job(name, selection=keys)
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    return merged.resolve_job_def(name).execute_in_process(
        instance=instance,
        partition_key=day.isoformat() if day else None,
        run_config=QUIET,
    )


@pytest.fixture(scope="module")
def scored_lake(tmp_path_factory):
    """Eight days ingested, a champion, the last two days scored (the last one twice)."""
    root = tmp_path_factory.mktemp("summary")
    settings = load_settings({"MLOPS_DATA_ROOT": str(root), "MLOPS_ENV": "dev"})
    scenario = Scenario.clean(
        days=len(DAYS),
        transactions_per_day=3_000,
        seed=23,
        start_date=START,
        label_delay_days=(1, 3),
    )
    simulate(scenario, settings.landing_root)
    defs = build_definitions(settings)
    with dg.DagsterInstance.ephemeral() as instance:
        build_lake(defs, instance, INGESTED)
        cutoff = datetime.datetime.combine(DAYS[8], datetime.time(), datetime.UTC)
        trained = defs.resolve_job_def("retrain_and_deploy").execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config={
                "ops": {
                    "ml__training_set": {
                        "config": {"label_cutoff": cutoff.isoformat(), "days": len(INGESTED)}
                    },
                    "ml__fraud_model": {"config": {"seed": 7}},
                    "ml__model_validation": {"config": {"mode": "enabled", **THRESHOLDS}},
                },
                **QUIET,
            },
        )
        assert trained.success
        for day in SCORED:
            runs = run_days(
                defs,
                [day],
                instance,
                selection=[dg.AssetKey(["serving", "batch_predictions"])],
                job_name="serve_and_monitor",
                log_level="ERROR",
            )
            assert all(r.success for r in runs)
        # The last day scored again: two predictions per transaction in the log.
        again = run_days(
            defs,
            [SCORED[-1]],
            instance,
            selection=[dg.AssetKey(["serving", "batch_predictions"])],
            job_name="serve_and_monitor",
            log_level="ERROR",
        )
        assert all(r.success for r in again)
        yield settings, defs, instance


def expected_summary(settings, day: datetime.date, at: datetime.datetime) -> dict:
    """The summary of a day computed here, row by row, from the tables it reads."""
    lake = settings.lake_root
    log = (
        scan_table(lake / "serving" / "inference_log")
        .filter(pl.col("day") == day, pl.col("status") == "ok")
        .collect()
    )
    # The latest batch prediction of each (model, version, transaction).
    latest: dict[tuple, dict] = {}
    for row in log.sort("logged_at").iter_rows(named=True):
        assert row["mode"] == "batch"
        latest[(row["model_name"], row["model_version"], row["transaction_id"])] = row
    transactions = {
        row["transaction_id"]: row
        for row in scan_table(lake / "silver" / "transactions")
        .filter(pl.col("event_date") == day)
        .collect()
        .iter_rows(named=True)
    }
    reports: dict[str, tuple[datetime.datetime, bool]] = {}
    for row in scan_table(lake / "silver" / "labels").collect().iter_rows(named=True):
        if row["reported_at"] > at:
            continue
        seen = reports.get(row["transaction_id"])
        if seen is None or row["reported_at"] > seen[0]:
            reports[row["transaction_id"]] = (row["reported_at"], row["is_fraud"])
    groups: dict[tuple, dict] = defaultdict(lambda: defaultdict(float))
    for (model, version, transaction_id), row in latest.items():
        event = transactions[transaction_id]
        group = groups[(model, version, event["merchant_category"], event["channel"])]
        label = reports.get(transaction_id)
        fraud = bool(label and label[1])
        flagged = bool(row["decision"])
        group["scored"] += 1
        group["flagged"] += flagged
        group["labelled"] += label is not None
        group["fraud_caught"] += fraud and flagged
        group["fraud_missed"] += fraud and not flagged
        group["amount_scored"] += event["amount"]
        group["amount_flagged"] += event["amount"] if flagged else 0.0
        group["fraud_amount_caught"] += event["amount"] if fraud and flagged else 0.0
        group["fraud_amount_missed"] += event["amount"] if fraud and not flagged else 0.0
    return {key: dict(values) for key, values in groups.items()}


def stored_summary(settings, day: datetime.date) -> pl.DataFrame:
    return (
        scan_table(settings.lake_root / "gold" / "prediction_summary")
        .filter(pl.col("day") == day)
        .collect()
    )


def assert_matches(stored: pl.DataFrame, expected: dict) -> None:
    got = {
        (r["model_name"], r["model_version"], r["merchant_category"], r["channel"]): r
        for r in stored.iter_rows(named=True)
    }
    assert set(got) == set(expected)
    for key, values in expected.items():
        row = got[key]
        for name, value in values.items():
            if name.startswith(("amount", "fraud_amount")):
                assert row[name] == pytest.approx(value, rel=1e-9, abs=1e-6), (key, name)
            else:
                assert row[name] == int(value), (key, name)
        assert row["without_transaction"] == 0


def summarize(defs, instance, day):
    result = materialize(defs, instance, [SUMMARY], day)
    [materialization] = result.asset_materializations_for_node("gold__prediction_summary")
    [check] = result.get_asset_check_evaluations()
    return materialization.metadata, check


def test_the_summary_is_the_logs_predictions_with_their_labels_and_late_labels_refresh_it(
    scored_lake,
):
    settings, defs, instance = scored_lake
    day = SCORED[-1]
    meta, check = summarize(defs, instance, day)
    assert check.passed, check.metadata
    at = datetime.datetime.fromisoformat(meta["labels_as_of"].value)
    before = stored_summary(settings, day)
    expected = expected_summary(settings, day, at)
    assert_matches(before, expected)
    # Scored twice, counted once: as many as the day's transactions in silver.
    events = scan_table(settings.lake_root / "silver" / "transactions").filter(
        pl.col("event_date") == day
    )
    assert before.get_column("scored").sum() == events.select(pl.len()).collect().item()
    assert meta["scored"].value == before.get_column("scored").sum()
    # Caught and missed are the confirmed frauds among the scored transactions.
    frauds = sum(v["fraud_caught"] + v["fraud_missed"] for v in expected.values())
    # (The day's chargebacks land from the next day on: none may be known yet.)
    assert meta["fraud_caught"].value + meta["fraud_missed"].value == frauds
    assert {"channel", "merchant_category"} <= set(before.columns)
    assert before.select("merchant_category", "channel").unique().height > 5

    # Landing day nine brings chargebacks of the scored days; the refresh after it (the
    # loop's refresh_event_days of each event day it touched) rebuilds the summaries.
    assert all(r.success for r in run_days(defs, [DAYS[8]], instance, log_level="ERROR"))
    refreshed = run_days(defs, [day], instance, job_name="refresh_event_days", log_level="ERROR")
    assert all(r.success for r in refreshed)
    after = stored_summary(settings, day)
    at_after = after.get_column("labels_as_of")[0]
    assert at_after > at
    assert_matches(after, expected_summary(settings, day, at_after))
    assert after.get_column("labelled").sum() > before.get_column("labelled").sum()
    confirmed = after.select(pl.col("fraud_caught") + pl.col("fraud_missed")).sum().item()
    assert confirmed > frauds
    reported = expected_summary(settings, day, at_after)
    assert confirmed == sum(v["fraud_caught"] + v["fraud_missed"] for v in reported.values())
    assert after.get_column("scored").sum() == before.get_column("scored").sum()


def test_the_serve_job_summarizes_the_day_it_scores_and_ingestion_does_not(scored_lake):
    settings, defs, instance = scored_lake
    serve = defs.resolve_job_def("serve_and_monitor")
    assert SUMMARY in serve.asset_layer.selected_asset_keys
    assert SUMMARY in defs.resolve_job_def("refresh_event_days").asset_layer.selected_asset_keys
    assert SUMMARY not in defs.resolve_job_def("medallion_daily").asset_layer.selected_asset_keys
    # A day nothing scored yet is an empty partition, not a failure.
    meta, check = summarize(defs, instance, DAYS[2])
    assert meta["scored"].value == 0 and check.passed
    assert stored_summary(settings, DAYS[2]).height == 0


def test_the_dashboard_is_one_page_that_opens_from_disk(scored_lake):
    settings, defs, instance = scored_lake
    for day in SCORED:
        summarize(defs, instance, day)
        materialize(
            defs,
            instance,
            [
                dg.AssetKey(["monitoring", "drift_metrics"]),
                dg.AssetKey(["monitoring", "performance"]),
            ],
            day,
        )
    result = materialize(defs, instance, [DASHBOARD])
    [meta] = result.asset_materializations_for_node("monitoring__dashboard")
    path = settings.env_root / "monitoring" / "dashboard.html"
    assert meta.metadata["path"].value == str(path)
    assert meta.metadata["dashboard"].value == path.as_uri()
    assert meta.metadata["plots_without_data"].value == [TITLES[4]]  # no alert was raised
    assert meta.metadata["first_day"].value == SCORED[0].isoformat()
    page = path.read_text(encoding="utf-8")
    for title in TITLES:
        assert title in page, title
    # plotly.js once, inlined; no resource fetched from anywhere.
    assert page.count("plotly.js v") == 1
    assert not re.search(r"<script[^>]*\ssrc\s*=", page, re.IGNORECASE)
    assert not re.search(
        r"<(link|img|iframe|source)[^>]*\s(href|src)\s*=\s*[\"']?(https?:)?//", page, re.I
    )
    assert not re.search(r"@import\s+url\(\s*[\"']?https?:", page, re.IGNORECASE)
    # The monitored model's figures are in it.
    assert "dev.fraud_detector" in page
    assert_opens_offline(path)


def assert_opens_offline(path) -> None:
    """The page renders its six plots in Chromium with every network request refused."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("the system chromium is not installed")
    from playwright.sync_api import sync_playwright

    requested = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()

            def refuse(route):
                if not route.request.url.startswith(("file:", "data:", "blob:")):
                    requested.append(route.request.url)
                    route.abort()
                else:
                    route.continue_()

            page.route("**/*", refuse)
            page.goto(path.as_uri())
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
            plots = page.locator(".js-plotly-plot").count()
            titles = page.locator(".gtitle").all_text_contents()
        finally:
            browser.close()
    assert requested == []
    assert plots == len(TITLES)
    assert set(TITLES) <= set(titles)
