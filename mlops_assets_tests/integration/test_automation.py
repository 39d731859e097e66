"""The daily loop's catch-up schedules and the run watchdog, on a real (temporary) instance."""

import datetime
import os
import subprocess

import dagster as dg
import pytest

from mlops_assets.definitions import build_definitions
from mlops_assets.defs.automation import REFRESH_TAG, SERVED_TAG, servable
from mlops_assets.defs.jobs import LANE_TAG
from mlops_assets.defs.partitions import event_days_touched
from mlops_assets.settings import load_settings
from mlops_assets.simulate import Scenario, simulate

START = datetime.date(2026, 1, 1)
DAYS = [START + datetime.timedelta(days=i) for i in range(3)]
TICK = datetime.datetime(2026, 2, 1, 0, 30, tzinfo=datetime.UTC)
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


@pytest.fixture
def loop(tmp_path):
    settings = load_settings({"MLOPS_DATA_ROOT": str(tmp_path / "data"), "MLOPS_ENV": "dev"})
    simulate(
        Scenario.demo(days=3, transactions_per_day=400, n_cards=100, seed=5, start_date=START),
        settings.landing_root,
    )
    defs = build_definitions(settings)
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield settings, defs, instance


def tick(defs, instance, name, when=TICK):
    schedule = defs.resolve_schedule_def(name)
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=when, repository_def=defs.get_repository_def()
    )
    return schedule.evaluate_tick(context)


def execute(defs, instance, request, job_name):
    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=instance,
        partition_key=request.partition_key,
        tags=request.tags,
        run_config=QUIET,
        raise_on_error=False,
    )
    assert result.success, (job_name, request.partition_key)


def test_the_medallion_schedule_catches_up_complete_days_not_yet_ingested(loop):
    settings, defs, instance = loop
    # The last day's manifest is not written yet and the day has not ended: not complete.
    manifest = settings.landing_root / "_manifests" / f"{DAYS[-1].isoformat()}.json"
    manifest.unlink()
    on_the_day = datetime.datetime.combine(DAYS[-1], datetime.time(20), datetime.UTC)
    written = (on_the_day - datetime.timedelta(hours=1)).timestamp()
    for path in settings.landing_root.glob(f"*/{DAYS[-1].isoformat()}/*"):
        os.utime(path, (written, written))
    first = tick(defs, instance, "medallion_daily_schedule", on_the_day).run_requests
    assert [r.partition_key for r in first] == [d.isoformat() for d in DAYS[:-1]]
    assert [r.run_key for r in first] == [f"medallion:{d.isoformat()}" for d in DAYS[:-1]]

    execute(defs, instance, first[0], "medallion_daily")
    later = tick(defs, instance, "medallion_daily_schedule").run_requests
    # Ingested days are not requested again; the last day has ended and is quiet by now.
    assert [r.partition_key for r in later] == [d.isoformat() for d in DAYS[1:]]


def test_the_refresh_schedule_follows_each_ingested_day_once_in_order(loop):
    settings, defs, instance = loop
    assert not tick(defs, instance, "refresh_event_days_schedule").run_requests
    for request in tick(defs, instance, "medallion_daily_schedule").run_requests[:2]:
        execute(defs, instance, request, "medallion_daily")
    requests = tick(defs, instance, "refresh_event_days_schedule").run_requests
    expected = [
        (day.isoformat(), landed.isoformat())
        for landed in DAYS[:2]
        for day in event_days_touched(landed, settings.start_date)
    ]
    assert [(r.partition_key, r.tags[REFRESH_TAG]) for r in requests] == expected
    assert {r.tags[LANE_TAG] for r in requests} == {"event_days"}
    for request in requests[: len(event_days_touched(DAYS[0], settings.start_date))]:
        execute(defs, instance, request, "refresh_event_days")
    again = tick(defs, instance, "refresh_event_days_schedule").run_requests
    # Day 1's refreshes ran: only day 2's are requested again (their run keys dedupe them in
    # the daemon; the tags show what is still owed).
    assert {r.tags[REFRESH_TAG] for r in again} == {DAYS[1].isoformat()}
    # A tick that created only part of a day's refreshes: the rest are requested, not again
    # those that ran.
    execute(defs, instance, again[0], "refresh_event_days")
    rest = tick(defs, instance, "refresh_event_days_schedule").run_requests
    assert [r.partition_key for r in rest] == [r.partition_key for r in again[1:]]


def test_the_serve_schedule_waits_for_a_champion(loop):
    _, defs, instance = loop
    for request in tick(defs, instance, "medallion_daily_schedule").run_requests[:1]:
        execute(defs, instance, request, "medallion_daily")
    for request in tick(defs, instance, "refresh_event_days_schedule").run_requests:
        execute(defs, instance, request, "refresh_event_days")
    result = tick(defs, instance, "serve_and_monitor_schedule")
    assert not result.run_requests
    assert "no champion yet" in result.skip_message
    assert SERVED_TAG not in str(result)


def test_automation_runs_by_default_in_prod_and_when_asked(tmp_path):
    def statuses(variables):
        repo = build_definitions(
            load_settings({"MLOPS_DATA_ROOT": str(tmp_path), **variables})
        ).get_repository_def()
        return {s.name: s.default_status.value for s in repo.schedule_defs} | {
            s.name: s.default_status.value
            for s in repo.sensor_defs
            if s.name in ("landed_transactions", "new_model_versions", "drift_monitor")
        }

    assert set(statuses({"MLOPS_ENV": "prod"}).values()) == {"RUNNING"}
    assert set(statuses({"MLOPS_ENV": "dev"}).values()) == {"STOPPED"}
    assert set(statuses({"MLOPS_ENV": "dev", "MLOPS_AUTOMATION": "on"}).values()) == {"RUNNING"}
    crons = build_definitions(
        load_settings({"MLOPS_DATA_ROOT": str(tmp_path), "MLOPS_CRON_MEDALLION": "* * * * *"})
    ).resolve_schedule_def("medallion_daily_schedule")
    assert crons.cron_schedule == "* * * * *"


def start(instance, run):
    instance.handle_new_event(
        dg.EventLogEntry(
            error_info=None,
            level="DEBUG",
            user_message="",
            run_id=run.run_id,
            timestamp=datetime.datetime.now().timestamp(),
            dagster_event=dg.DagsterEvent(
                event_type_value=dg.DagsterEventType.RUN_START.value, job_name=run.job_name
            ),
        )
    )


def test_the_watchdog_fails_a_run_whose_worker_died_and_frees_its_pool_slots(tmp_path):
    defs = build_definitions(load_settings({"MLOPS_DATA_ROOT": str(tmp_path / "data")}))
    job = defs.resolve_job_def("online_publish")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        run = instance.create_run_for_job(job_def=job)
        start(instance, run)
        instance.report_engine_event(f"Started process for run (pid: {dead.pid}).", run)
        storage = instance.event_log_storage
        storage.set_concurrency_slots("silver_transactions", 1)
        claim = storage.claim_concurrency_slot("silver_transactions", run.run_id, "step")
        assert claim.is_claimed
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED

        sensor = defs.resolve_sensor_def("run_worker_watchdog")
        result = sensor(dg.build_sensor_context(instance=instance))
        assert run.run_id in result.skip_message
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        info = storage.get_concurrency_info("silver_transactions")
        assert info.active_slot_count == 0

        # A started run whose worker lives is left alone.
        alive = instance.create_run_for_job(job_def=job)
        start(instance, alive)
        instance.report_engine_event(f"Started process for run (pid: {os.getpid()}).", alive)
        quiet = sensor(dg.build_sensor_context(instance=instance))
        assert alive.run_id not in quiet.skip_message
        assert instance.get_run_by_id(alive.run_id).status == dg.DagsterRunStatus.STARTED


def test_the_loop_serves_each_day_after_the_last_served_and_starts_with_the_newest_two():
    days = {START + datetime.timedelta(days=i) for i in range(6)}
    newest = max(days)
    assert servable(days, set()) == {newest - datetime.timedelta(days=1), newest}
    assert servable(days, {START + datetime.timedelta(days=3)}) == {
        START + datetime.timedelta(days=4),
        newest,
    }
    assert servable(set(), set()) == set()
