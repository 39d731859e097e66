"""Streaming takes only complete files: a file written slowly, without a rename, is scored once.

A writer thread appends a transactions file line by line over several seconds under its final
name while the `landed_transactions` sensor ticks (its runs launched in-process) or the stream
worker polls: the file is requested once it has been unchanged for the settle time, and every
line is in the inference log exactly once. A file that grows after it was scored raises an
alert naming it and both sizes, and its new lines are scored as a continuation, once.
"""

import threading
import time

import dagster as dg
import polars as pl

from mlops_assets.defs.resources import LakehouseResource
from mlops_assets.defs.serving import landed_transactions
from mlops_assets.lakehouse.delta_io import scan_table, table_exists
from mlops_assets.serving.streaming import StreamLedger
from mlops_assets_tests.integration.conftest import DAYS, QUIET

LINE_PAUSE = 0.15  # well under the settle time (2 s by default)


def log_rows(settings, name: str) -> pl.DataFrame:
    uri = settings.lake_root / "serving" / "inference_log"
    if not table_exists(uri):
        return pl.DataFrame({"request_id": []}, schema={"request_id": pl.String})
    return scan_table(uri).filter(pl.col("request_id").str.starts_with(f"stream:{name}:")).collect()


def alerts_about(settings, name: str) -> pl.DataFrame:
    uri = settings.lake_root / "monitoring" / "alerts"
    if not table_exists(uri):
        return pl.DataFrame({"message": []}, schema={"message": pl.String})
    return scan_table(uri).filter(pl.col("message").str.contains(name, literal=True)).collect()


def source_lines(settings) -> tuple[str, list[str]]:
    [source] = sorted((settings.landing_root / "transactions" / DAYS[-1].isoformat()).iterdir())
    header, *lines = source.read_text().splitlines()
    return header, lines


def slow_writer(path, header: str, lines: list[str]) -> threading.Thread:
    """Writes the header, then one line at a time, appending to the file in place."""

    def write() -> None:
        with open(path, "w") as out:
            out.write(header + "\n")
            out.flush()
            for line in lines:
                time.sleep(LINE_PAUSE)
                out.write(line + "\n")
                out.flush()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def stream_run(defs, instance, name: str):
    job = dg.define_asset_job(
        "only_stream", selection=[dg.AssetKey(["serving", "stream_predictions"])]
    )
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    return merged.resolve_job_def(job.name).execute_in_process(
        instance=instance,
        raise_on_error=False,
        run_config={"ops": {"serving__stream_predictions": {"config": {"file": name}}}, **QUIET},
    )


def tick(defs, instance, resources, cursor, done, *, timeout: float = 90, quiet: float = 2.5):
    """Evaluate the sensor every 0.5 s, launching each run it requests, until `done(requested)`
    holds, then `quiet` seconds more (nothing more may be requested then)."""
    requested = []
    deadline, calm = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        result = landed_transactions(dg.build_sensor_context(cursor=cursor, resources=resources))
        if isinstance(result, dg.SensorResult):
            cursor = result.cursor or cursor
            for request in result.run_requests or []:
                name = request.run_config["ops"]["serving__stream_predictions"]["config"]["file"]
                requested.append((name, request.run_key))
                assert stream_run(defs, instance, name).success
        if calm is None and done(requested):
            calm = time.monotonic() + quiet
        if calm is not None and time.monotonic() >= calm:
            break
        time.sleep(0.5)
    return requested, cursor


def test_a_slowly_written_file_is_requested_once_settled_and_scored_once(cd_lake, champion):
    settings, defs, instance = cd_lake
    assert settings.landing_settle_seconds == 2.0
    header, lines = source_lines(settings)
    first, more = lines[:25], lines[25:35]
    name = "transactions/2026-01-16/slow.csv"
    path = settings.landing_root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    resources = {"lakehouse": LakehouseResource.from_settings(settings)}
    # The files landed before are in the sensor's cursor (requested earlier).
    cursor = landed_transactions(dg.build_sensor_context(resources=resources)).cursor
    writer = slow_writer(path, header, first)
    # While the writer appends (about 4 s), then until the file has settled and been scored.
    requested, cursor = tick(
        defs, instance, resources, cursor, lambda asked: not writer.is_alive() and asked
    )
    writer.join()
    assert [n for n, _ in requested] == [name]
    rows = log_rows(settings, name)
    assert rows.height == len(first)
    assert rows.get_column("request_id").is_unique().all()
    assert alerts_about(settings, name).height == 0
    size_scored = path.stat().st_size
    # The writer comes back after the file was scored: the lines it gains are scored once,
    # and an alert names the file and both sizes.
    with open(path, "a") as out:
        out.write("\n".join(more) + "\n")
    size_now = path.stat().st_size
    again, cursor = tick(defs, instance, resources, cursor, bool)
    assert again == [(name, f"stream:{name}:{size_now}")]
    rows = log_rows(settings, name)
    assert rows.height == len(first) + len(more)
    assert rows.get_column("request_id").is_unique().all()
    lines_logged = rows.get_column("request_id").str.extract(r":(\d+)$").cast(pl.Int64)
    assert sorted(lines_logged.to_list()) == list(range(2, 2 + len(first) + len(more)))
    [alert] = alerts_about(settings, name).to_dicts()
    assert f"{size_scored} bytes when scored, {size_now} bytes now" in alert["message"]
    assert alert["severity"] == "warning"
    ledger = StreamLedger(
        str(settings.lake_root / "serving" / "inference_log"),
        str(settings.lake_root / "serving" / "stream_checkpoint"),
    )
    row = ledger.checkpointed(name)
    assert (row["lines"], row["size"], row["last_line"]) == (
        len(first) + len(more),
        size_now,
        1 + len(first) + len(more),
    )
    # Quiet again: nothing more is requested, nothing scored twice.
    assert tick(defs, instance, resources, cursor, lambda asked: True)[0] == []
    assert log_rows(settings, name).height == len(first) + len(more)


def poll(worker, name: str, done, *, timeout: float = 90, quiet: float = 2.5) -> list:
    """The worker's outcomes for a file, polling every 0.3 s until `done(outcomes)` holds,
    then `quiet` seconds more."""
    outcomes = []
    deadline, calm = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        outcomes += [o for o in worker.run_once() if o.file == name]
        if calm is None and done(outcomes):
            calm = time.monotonic() + quiet
        if calm is not None and time.monotonic() >= calm:
            break
        time.sleep(0.3)
    return outcomes


def test_the_stream_worker_waits_for_a_slow_writer_and_continues_a_grown_file(
    cd_lake, champion, tmp_path
):
    from mlops_assets.serving.stream_worker import StreamWorker

    settings, _, _ = cd_lake
    header, lines = source_lines(settings)
    first, more = lines[40:60], lines[60:65]
    name = "transactions/2026-01-17/worker-slow.csv"
    path = settings.landing_root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    worker = StreamWorker(settings)
    assert worker.settle_seconds == 2.0
    try:
        deadline = time.monotonic() + 60
        while worker.holder.current is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert worker.holder.current is not None
        worker.run_once()  # files landed before are scored or checkpointed already
        writer = slow_writer(path, header, first)
        outcomes = poll(worker, name, lambda found: not writer.is_alive() and found)
        writer.join()
        [outcome] = outcomes
        assert not outcome.skipped and not outcome.continued
        assert outcome.scored + outcome.errors == len(first)
        assert log_rows(settings, name).height == len(first)
        with open(path, "a") as out:
            out.write("\n".join(more) + "\n")
        outcomes = poll(worker, name, bool)
        [continued] = outcomes
        assert continued.continued and continued.lines == len(more)
        assert continued.previous_size == outcome.size < continued.size == path.stat().st_size
        rows = log_rows(settings, name)
        assert rows.height == len(first) + len(more)
        assert rows.get_column("request_id").is_unique().all()
        [alert] = alerts_about(settings, name).to_dicts()
        assert f"{outcome.size} bytes when scored, {continued.size} bytes now" in alert["message"]
    finally:
        worker.close()
