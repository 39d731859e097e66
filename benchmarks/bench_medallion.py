"""One simulated day of transactions from landing files to gold, beside the I/O floor.

The floor reads the same landing files and writes their bytes, one line per row, as a Delta
table: no parsing, validation or aggregation. The medallion figure is the Dagster job for the
day (bronze, silver, gold and quarantine, transactions and labels) run in-process. The same
day gzip-compressed (`.csv.gz`, read decompressed by bronze) is measured beside it.

The same job also runs with the lake on a local S3-compatible store (SeaweedFS on 127.0.0.1,
`make weed`) beside the local disk, each with both Parquet writers of `delta_io` (polars files
plus a hand-made commit, and delta-rs' own writer), in the same run: the figures say which
writer each store should use (`delta_io.WRITERS`) and what the object store costs.
"""

from __future__ import annotations

import datetime
import os
import resource
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from benchmarks.harness import entry_point, measure, object_store, report, use_writer

DAY = datetime.date(2026, 1, 1)
ROWS = int(os.environ.get("BENCH_MEDALLION_ROWS", "1000000"))
REPEAT = int(os.environ.get("BENCH_MEDALLION_REPEAT", "3"))
# `BENCH_MEDALLION_STORES=local` leaves the object store out (a quicker run).
STORES = tuple(os.environ.get("BENCH_MEDALLION_STORES", "local,s3").split(","))
WRITERS = ("polars", "delta-rs")
# The lake on the local disk whatever the calling shell sets.
LOCAL_LAKE = {"MLOPS_LAKE_URI": ""}


def _cpu_seconds() -> float:
    """CPU time of this process so far (all its threads, user and system).

    On a machine other work loads, wall time swings with the load; CPU time much less, so
    the figures give both.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _settings(root: Path):
    from mlops_assets.settings import load_settings

    return load_settings(
        {
            **os.environ,
            "MLOPS_DATA_ROOT": str(root),
            "MLOPS_ENV": "dev",
            "MLOPS_START_DATE": DAY.isoformat(),
        }
    )


def task_simulate(root: str) -> dict:
    """Write the day's landing files."""
    from mlops_assets.simulate import Scenario, simulate

    settings = _settings(Path(root))
    started = time.perf_counter()
    scenario = Scenario.demo(
        days=1,
        start_date=DAY,
        transactions_per_day=ROWS,
        n_cards=max(5_000, ROWS // 5),
        n_merchants=max(800, ROWS // 50),
    )
    manifests = simulate(scenario, settings.landing_root)
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in settings.landing_root.rglob("*.csv"))
    return {
        "seconds": seconds,
        "lines": manifests[0].transaction_lines,
        "landing_bytes": size,
    }


def task_compress(root: str) -> dict:
    """Write the day's landing files again, gzip-compressed (`.csv.gz`), in their own landing."""
    import gzip
    import shutil

    source = Path(root) / "dev" / "landing"
    target = Path(root) / GZIP_LANDING
    started = time.perf_counter()
    size = 0
    for path in sorted(source.rglob("*.csv")):
        out = target / path.relative_to(source).with_suffix(".csv.gz")
        out.parent.mkdir(parents=True, exist_ok=True)
        with path.open("rb") as plain, gzip.open(out, "wb", compresslevel=6) as packed:
            shutil.copyfileobj(plain, packed)
        size += out.stat().st_size
    return {"seconds": time.perf_counter() - started, "landing_bytes": size}


# The compressed copy of the landing day; a run whose name starts with `gzip-` reads it.
GZIP_LANDING = "gzip/dev/landing"
GZIP_RUN = "gzip-"


def _fresh_root(root: str, run: str) -> Path:
    """A data root of its own for one measured run, sharing the simulated landing files."""
    fresh = Path(root) / f"run-{run}"
    (fresh / "dev").mkdir(parents=True, exist_ok=True)
    landing = fresh / "dev" / "landing"
    if not landing.exists():
        shared = GZIP_LANDING if run.startswith(GZIP_RUN) else "dev/landing"
        landing.symlink_to(Path(root) / shared)
    return fresh


def task_io_floor(root: str, run: str) -> dict:
    """Read the landing files and write their lines as a one-column Delta table.

    The floor writes with the project's own Delta writer (the fastest one here), so the ratio
    measures the pipeline's work, not a slower writer on the floor's side.
    """
    import polars as pl

    from mlops_assets.lakehouse.delta_io import write_partition

    settings = _settings(Path(root))
    started, cpu = time.perf_counter(), _cpu_seconds()
    rows = 0
    for source in ("transactions", "labels"):
        frames = []
        for path in sorted((settings.landing_root / source / DAY.isoformat()).iterdir()):
            text = path.read_bytes().decode("utf-8", errors="replace")
            frames.append(pl.DataFrame({"line": text.split("\n")}))
        lines = pl.concat(frames).with_columns(pl.lit(DAY).alias("landing_date"))
        rows += lines.height
        target = _fresh_root(root, run) / "floor" / source
        write_partition(str(target), lines, {"landing_date": DAY})
    return {"seconds": time.perf_counter() - started, "cpu_s": _cpu_seconds() - cpu, "rows": rows}


def task_medallion(root: str, run: str, writer: str = "") -> dict:
    """Run the medallion job for the day in-process on an ephemeral Dagster instance.

    The lake is where the environment's `MLOPS_LAKE_URI` says (the local disk without it);
    `writer` picks delta_io's Parquet writer (the store's default when empty).
    """
    import dagster as dg

    from mlops_assets.definitions import build_definitions
    from mlops_assets.lakehouse.catalog import Catalog, TableRef
    from mlops_assets.lakehouse.delta_io import scan_table

    if writer:
        use_writer(writer)
    settings = _settings(_fresh_root(root, run))
    defs = build_definitions(settings)
    job = defs.resolve_job_def("medallion_daily")
    with dg.DagsterInstance.ephemeral() as instance:
        started, cpu = time.perf_counter(), _cpu_seconds()
        result = job.execute_in_process(partition_key=DAY.isoformat(), instance=instance)
        seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
        if not result.success:
            raise RuntimeError("the medallion job failed")
        steps = {
            s.step_key: round((s.end_time or 0) - (s.start_time or 0), 3)
            for s in instance.get_run_step_stats(result.run_id)
        }
    silver_uri = Catalog(settings).uri_for_read(TableRef("silver", "transactions"))
    silver = scan_table(silver_uri, storage_options=settings.storage_options).collect().height
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "steps": steps,
        "silver_rows": silver,
        "uri": silver_uri,
    }


def _median(measurements: list) -> object:
    return sorted(measurements, key=lambda m: m.seconds)[len(measurements) // 2]


def _median_of(measurements: list, figure: str) -> float:
    values = sorted(m.extra[figure] for m in measurements)
    return values[len(values) // 2]


def main() -> None:
    """Measure simulate, the I/O floor and the medallion day on each store and writer."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-medallion-") as root,
        object_store(Path(root) / "seaweedfs") if "s3" in STORES else nullcontext() as s3,
    ):
        simulated = measure("benchmarks.bench_medallion", "simulate", root)
        compressed = measure("benchmarks.bench_medallion", "compress", root)
        floors: list = []
        gzipped: list = []
        variants: dict[tuple[str, str], list] = {(s, w): [] for s in STORES for w in WRITERS}
        # Alternate everything, each on a fresh lake, so that drift in the machine's speed
        # hits all alike; the medians are reported.
        for run in range(REPEAT):
            floors.append(measure("benchmarks.bench_medallion", "io_floor", root, str(run)))
            gzipped.append(
                measure(
                    "benchmarks.bench_medallion",
                    "medallion",
                    root,
                    f"{GZIP_RUN}{run}",
                    env=LOCAL_LAKE,
                )
            )
            for store, writer in variants:
                name = f"{run}-{store}-{writer}"
                env = s3.environ(prefix=f"bench/{name}") if store == "s3" else LOCAL_LAKE
                variants[store, writer].append(
                    measure("benchmarks.bench_medallion", "medallion", root, name, writer, env=env)
                )
    from mlops_assets.lakehouse.delta_io import WRITERS as IN_USE

    floor = _median(floors)
    medians = {key: _median(runs) for key, runs in variants.items()}
    medallion = medians["local", IN_USE["local"].value]
    local_runs = variants["local", IN_USE["local"].value]
    lines = simulated.extra["lines"]
    gzip_day = _median(gzipped)
    rows = {m.extra["silver_rows"] for runs in [*variants.values(), gzipped] for m in runs}
    if len(rows) != 1:
        raise RuntimeError(f"the stores and writers built different silver tables: {rows}")
    figures = {
        "transactions": lines,
        "landing_mib": round(simulated.extra["landing_bytes"] / 2**20, 1),
        "simulate_s": round(simulated.seconds, 2),
        "repeats": REPEAT,
        "io_floor_s": round(floor.seconds, 2),
        "io_floor_runs_s": [round(m.seconds, 2) for m in floors],
        "io_floor_peak_mib": round(floor.peak_mib),
        "medallion_s": round(medallion.seconds, 2),
        "medallion_runs_s": [round(m.seconds, 2) for m in variants["local", IN_USE["local"].value]],
        "medallion_rows_per_s": round(lines / medallion.seconds),
        "medallion_peak_mib": round(medallion.peak_mib),
        "medallion_steps_s": medallion.extra["steps"],
        "ratio_to_io_floor": round(medallion.seconds / floor.seconds, 2),
        "goal": "ratio_to_io_floor <= 2",
        "io_floor_cpu_s": round(_median_of(floors, "cpu_s"), 2),
        "medallion_cpu_s": round(_median_of(local_runs, "cpu_s"), 2),
        "cpu_ratio_to_io_floor": round(
            _median_of(local_runs, "cpu_s") / _median_of(floors, "cpu_s"), 2
        ),
        "gzip_day": {
            "landing_mib": round(compressed.extra["landing_bytes"] / 2**20, 1),
            "medallion_s": round(gzip_day.seconds, 2),
            "runs_s": [round(m.seconds, 2) for m in gzipped],
            "peak_mib": round(gzip_day.peak_mib),
            "steps_s": gzip_day.extra["steps"],
            "to_plain_day": round(gzip_day.seconds / medallion.seconds, 2),
        },
        "object_store": {
            "medallion_s": {f"{s}/{w}": round(m.seconds, 2) for (s, w), m in medians.items()},
            "runs_s": {
                f"{s}/{w}": [round(m.seconds, 2) for m in runs] for (s, w), runs in variants.items()
            },
            "steps_s": {f"{s}/{w}": m.extra["steps"] for (s, w), m in medians.items()},
            "writer_delta_rs_to_polars": {
                store: round(
                    medians[store, "delta-rs"].seconds / medians[store, "polars"].seconds, 2
                )
                for store in STORES
            },
            "store_s3_to_local": {
                writer: round(medians["s3", writer].seconds / medians["local", writer].seconds, 2)
                for writer in WRITERS
                if "s3" in STORES
            },
            "writers_in_use": {store: writer.value for store, writer in IN_USE.items()},
        },
    }
    report("medallion", figures)


if __name__ == "__main__":
    entry_point(
        main,
        {
            "simulate": task_simulate,
            "compress": task_compress,
            "io_floor": task_io_floor,
            "medallion": task_medallion,
        },
    )
