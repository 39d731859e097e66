"""The daily loop as the daemon runs it: catch-up schedules, sensor settings, a run watchdog.

Each schedule catches up: a tick requests every landing day that is due and not yet done,
oldest first, whatever the tick's own date, so a stopped daemon, a backfilled landing zone or a
test with an every-minute cron all end in the same state. Run keys make each request once:

  landing day complete ──► medallion_daily(day)          (medallion schedule)
  medallion done       ──► refresh_event_days(day-3..day) (refresh schedule, one lane)
  refreshes done       ──► serve_and_monitor(day): online store, batch scoring and drift
                           (of every declared model with a champion), profiles; and
                           performance of the day whose labels just matured
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import dagster as dg

from mlops_assets.defs.jobs import (
    LANE_TAG,
    RETRY_IF_THE_RUN_DIED,
    medallion_job,
    refresh_job,
)
from mlops_assets.defs.ml import keys
from mlops_assets.defs.partitions import event_days_touched
from mlops_assets.lakehouse.landing import complete_landing_days
from mlops_assets.models.declaration import MODELS, primary
from mlops_assets.settings import Settings
from mlops_assets.stack.process import process_alive

# Which landing day a run of the loop belongs to.
AFTER_TAG = "mlops/landing_day"
REFRESH_TAG = "mlops/refresh_after"
SERVED_TAG = "mlops/served_landing_day"
PERFORMANCE_TAG = "mlops/performance_after"
# Days requested per tick and schedule: a long catch-up is spread over ticks, oldest first.
DAYS_PER_TICK = 7
BRONZE = dg.AssetKey(["bronze", "transactions"])
SILVER = dg.AssetKey(["silver", "transactions"])
SERVE_DAY = [
    dg.AssetKey(["online", "card_behaviour"]),
    dg.AssetKey(["online", "merchant_risk"]),
    dg.AssetKey(["serving", "batch_predictions"]),
    dg.AssetKey(["monitoring", "drift_metrics"]),
    dg.AssetKey(["monitoring", "profiles"]),
    # The day just scored, summarized (refresh runs rebuild it as chargebacks land).
    dg.AssetKey(["gold", "prediction_summary"]),
]
PERFORMANCE = dg.AssetKey(["monitoring", "performance"])
# The other declared models' batch scoring and drift: a day is scored and measured by each of
# them with a champion.
OTHER_SERVE = {
    model.name: [
        keys(model).batch_predictions,
        dg.AssetKey(["monitoring", model.name, "drift_metrics"]),
    ]
    for model in MODELS.values()
    if model.name != primary().name
}

serve_and_monitor_job = dg.define_asset_job(
    name="serve_and_monitor",
    selection=dg.AssetSelection.assets(
        *SERVE_DAY, *(key for served in OTHER_SERVE.values() for key in served), PERFORMANCE
    ),
    description=(
        "After a landing day's refreshes: publish the online store, score the day with the "
        "champion, measure its drift and profile; measure performance of matured days."
    ),
    tags=RETRY_IF_THE_RUN_DIED,
)


def schedule_status(settings: Settings) -> dg.DefaultScheduleStatus:
    """Schedules run by default where the settings turn automation on (prod)."""
    return (
        dg.DefaultScheduleStatus.RUNNING
        if settings.automation_on
        else dg.DefaultScheduleStatus.STOPPED
    )


def sensor_status(settings: Settings) -> dg.DefaultSensorStatus:
    """Sensors run by default where the settings turn automation on (prod)."""
    return (
        dg.DefaultSensorStatus.RUNNING if settings.automation_on else dg.DefaultSensorStatus.STOPPED
    )


def _tick_time(context: dg.ScheduleEvaluationContext) -> datetime.datetime:
    return context.scheduled_execution_time or datetime.datetime.now(datetime.UTC)


def _tag_values(instance: dg.DagsterInstance, key: str) -> set[str]:
    return {value for _, values in instance.get_run_tags(tag_keys=[key]) for value in values}


def _days(keys: set[str]) -> set[datetime.date]:
    return {datetime.date.fromisoformat(k) for k in keys}


def medallion_schedule(settings: Settings) -> dg.ScheduleDefinition:
    """Ingest each complete landing day that bronze does not hold yet."""

    @dg.schedule(
        name="medallion_daily_schedule",
        job=medallion_job,
        cron_schedule=settings.cron("medallion"),
        execution_timezone="UTC",
        default_status=schedule_status(settings),
        description=(
            "Requests medallion_daily for every complete landing day (manifest written, or "
            "ended and quiet) not yet in bronze, oldest first."
        ),
    )
    def _medallion(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest]:
        now = _tick_time(context)
        instance = context.instance
        # Schedules dedupe run keys within a tick only: days with a run (in flight, done or
        # failed, which the run's retries and alerts handle) are left out by their tag.
        first_day = settings.start_date  # the partitions' own first day
        done = _days(instance.get_materialized_partitions(BRONZE))
        done |= _days(_tag_values(instance, AFTER_TAG))
        due = [
            day
            for day in complete_landing_days(settings.landing_root, now)
            if first_day <= day < now.date() and day not in done
        ]
        for day in due[:DAYS_PER_TICK]:
            yield dg.RunRequest(
                run_key=f"medallion:{day.isoformat()}",
                partition_key=day.isoformat(),
                tags={AFTER_TAG: day.isoformat()},
            )

    return _medallion


def refresh_schedule(settings: Settings) -> dg.ScheduleDefinition:
    """Refresh the event days each newly ingested landing day touched."""

    @dg.schedule(
        name="refresh_event_days_schedule",
        job=refresh_job,
        cron_schedule=settings.cron("refresh"),
        execution_timezone="UTC",
        default_status=schedule_status(settings),
        description=(
            "For every landing day silver holds and no refresh was requested for: refresh "
            "the event days it touched (that day and the LATE_DAYS before it), oldest first, "
            "one at a time (the event_days lane)."
        ),
    )
    def _refresh(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest]:
        instance = context.instance
        ingested = _days(instance.get_materialized_partitions(SILVER))
        requested = _days(_tag_values(instance, REFRESH_TAG))
        # Landing days never requested, and the newest requested ones, whose refreshes may
        # have been requested only in part (a tick that stopped half way).
        candidates = sorted(ingested - requested)[:DAYS_PER_TICK]
        candidates += sorted(requested & ingested)[-DAYS_PER_TICK:]
        for landed in sorted(set(candidates)):
            done = _refresh_runs(instance, landed)
            for day in event_days_touched(landed, settings.start_date):
                if day.isoformat() in done:
                    continue
                yield dg.RunRequest(
                    run_key=f"refresh:{day.isoformat()} after {landed.isoformat()}",
                    partition_key=day.isoformat(),
                    tags={
                        REFRESH_TAG: landed.isoformat(),
                        LANE_TAG: "event_days",
                    },
                )

    return _refresh


def _refresh_runs(instance: dg.DagsterInstance, landed: datetime.date) -> dict[str, str]:
    """The refresh runs requested after a landing day: event day to the best status seen."""
    records = instance.get_run_records(
        dg.RunsFilter(job_name=refresh_job.name, tags={REFRESH_TAG: landed.isoformat()})
    )
    runs: dict[str, str] = {}
    for record in records:
        day = record.dagster_run.tags.get("dagster/partition", "")
        status = record.dagster_run.status.value
        if runs.get(day) != dg.DagsterRunStatus.SUCCESS.value:
            runs[day] = status
    return runs


def _refresh_progress(
    instance: dg.DagsterInstance, landed: datetime.date, first_day: datetime.date
) -> tuple[int, int]:
    """Refreshes after a landing day that succeeded, and how many it needs."""
    runs = _refresh_runs(instance, landed)
    succeeded = sum(status == dg.DagsterRunStatus.SUCCESS.value for status in runs.values())
    return succeeded, len(event_days_touched(landed, first_day))


def _served_ok(instance: dg.DagsterInstance, day: datetime.date) -> bool:
    """Whether the serve run of a landing day succeeded (its predictions are logged)."""
    records = instance.get_run_records(
        dg.RunsFilter(
            job_name=serve_and_monitor_job.name,
            tags={SERVED_TAG: day.isoformat()},
            statuses=[dg.DagsterRunStatus.SUCCESS],
        ),
        limit=1,
    )
    return bool(records)


def servable(refreshed: set[datetime.date], served: set[datetime.date]) -> set[datetime.date]:
    """Landing days the serve schedule owes: each day after the last one served.

    Before anything was served (a first champion), the loop starts with the two newest
    refreshed days: older days are history the champion was trained on, scored by a backfill
    if wanted, not by the daily loop.
    """
    if not refreshed:
        return set()
    if served:
        return {d for d in refreshed if d > max(served)}
    newest = max(refreshed)
    return {d for d in refreshed if d >= newest - datetime.timedelta(days=1)}


def serve_schedule(settings: Settings, label_maturity_days: int) -> dg.ScheduleDefinition:
    """Score and monitor each landing day once its refreshes are done and a champion serves."""

    @dg.schedule(
        name="serve_and_monitor_schedule",
        job=serve_and_monitor_job,
        cron_schedule=settings.cron("serve_and_monitor"),
        execution_timezone="UTC",
        default_status=schedule_status(settings),
        description=(
            "For every landing day whose refreshes succeeded: publish the online store, score "
            "the day, measure its drift and profile, and the performance of the day whose "
            "labels just matured. Waits for a champion."
        ),
    )
    def _serve(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest | dg.SkipReason]:
        from mlops_assets.models.deploy import lifecycle
        from mlops_assets.models.lifecycle import CHAMPION

        instance = context.instance
        refreshed = _days(_tag_values(instance, REFRESH_TAG))
        served = _days(_tag_values(instance, SERVED_TAG))
        measured = _days(_tag_values(instance, PERFORMANCE_TAG))
        pending = sorted(servable(refreshed, served))[:DAYS_PER_TICK]
        if pending and lifecycle(settings).version_of(CHAMPION) is None:
            yield dg.SkipReason(
                f"no champion yet: {len(pending)} landing days wait for one to be promoted"
            )
            return
        # The other declared models score the day too, once they have a champion.
        serving = [
            *SERVE_DAY,
            *(
                key
                for name, served in OTHER_SERVE.items()
                if pending and lifecycle(settings, name).version_of(CHAMPION) is not None
                for key in served
            ),
        ]
        requests: list[dg.RunRequest] = []
        waiting = None
        for landed in pending:
            succeeded, wanted = _refresh_progress(instance, landed, settings.start_date)
            if succeeded < wanted:
                # In order: a later day waits for an earlier one's refreshes.
                waiting = (
                    f"serving waits for the refreshes after landing day {landed}: "
                    f"{succeeded} of {wanted} succeeded"
                )
                break
            day = landed.isoformat()
            requests.append(
                dg.RunRequest(
                    run_key=f"serve:{day}",
                    partition_key=day,
                    asset_selection=serving,
                    tags={SERVED_TAG: day},
                )
            )
        # Performance of the day whose labels matured with a landing day, once both days'
        # serve runs succeeded (the matured day's predictions are in the log, and the
        # landing day's chargebacks in silver).
        for landed in sorted(served - measured)[-2 * DAYS_PER_TICK :]:
            matured = landed - datetime.timedelta(days=label_maturity_days)
            if matured not in served or not (
                _served_ok(instance, landed) and _served_ok(instance, matured)
            ):
                continue
            requests.append(
                dg.RunRequest(
                    run_key=f"performance:{matured.isoformat()} after {landed.isoformat()}",
                    partition_key=matured.isoformat(),
                    asset_selection=[PERFORMANCE],
                    tags={PERFORMANCE_TAG: landed.isoformat()},
                )
            )
        if requests:
            yield from requests
        elif waiting:
            yield dg.SkipReason(waiting)

    return _serve


# Engine events of the default run launcher name the run worker's process id.
_PID_PREFIX = "Started process for run (pid: "


def _worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=20
    ).records
    for record in records:
        message = record.event_log_entry.message or ""
        if message.startswith(_PID_PREFIX):
            return int(message[len(_PID_PREFIX) :].split(")")[0])
    return None


def run_watchdog(settings: Settings) -> dg.SensorDefinition:
    """Fail runs whose worker process died, so that their pool slots are freed."""

    @dg.sensor(
        name="run_worker_watchdog",
        minimum_interval_seconds=settings.sensor_interval_seconds or 30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Marks a started run failed when its run worker process (on this machine, the "
            "default run launcher) is gone, e.g. killed, and frees the pool slots of runs that "
            "ended holding them."
        ),
    )
    def _watchdog(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        instance = context.instance
        started = instance.get_run_records(
            dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]), limit=200
        )
        failed = []
        for record in started:
            run = record.dagster_run
            pid = _worker_pid(instance, run.run_id)
            if pid is None or process_alive(pid):
                continue
            # The worker may have finished the run and exited since the list was read.
            current = instance.get_run_by_id(run.run_id)
            if current is None or current.status != dg.DagsterRunStatus.STARTED:
                continue
            instance.report_run_failed(
                run,
                f"run worker process {pid} is gone (killed or crashed) while the run was "
                "STARTED; marked failed by run_worker_watchdog",
            )
            context.log.warning(f"run {run.run_id}: worker {pid} gone; marked failed")
            failed.append(run.run_id)
        # A finished run still holding pool slots died in a step (however its failure was
        # noticed, here or by the code server that launched it): free them.
        storage = instance.event_log_storage
        for run_id in storage.get_concurrency_run_ids():
            record = instance.get_run_record_by_id(run_id)
            if record is not None and record.dagster_run.is_finished:
                storage.free_concurrency_slots_for_run(run_id)
                context.log.warning(f"run {run_id} ended holding pool slots: freed")
                failed.append(run_id)
        return dg.SkipReason(
            f"failed or freed: {', '.join(failed)}"
            if failed
            else "every started run's worker lives"
        )

    return _watchdog
