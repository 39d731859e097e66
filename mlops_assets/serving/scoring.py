"""Batch and streaming scoring: predictions in the inference log's shape.

Batch scoring takes a day's transactions with their point-in-time features (the offline path,
the same join as training) and scores them in one vectorised call. Streaming scoring takes a
newly landed file, validates its lines against the silver contract, looks each valid
transaction's features up in the online store (the online path, as the REST server does) and
scores it; lines that cannot be read or break the contract become `error` rows naming the
reason, so every line of the file is accounted for.
"""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import narwhals as nw
import polars as pl

from mlops_assets.lakehouse.landing import read_landing_file
from mlops_assets.models.training import model_inputs
from mlops_assets.transforms.bronze import LINE_NUMBER, REASON, split_lines
from mlops_assets.transforms.silver import TRANSACTIONS, validate

# Commit metadata of a streamed file's append: the inference log's history is the checkpoint.
STREAM_FILE_KEY = "mlops.stream_file"
KEYS = ("transaction_id", "card_id", "merchant_id")


def batch_predictions(
    model: Any, features: pl.DataFrame, *, mode: str, run_id: str
) -> pl.DataFrame:
    """Score events carrying every feature column; rows in the inference log's shape.

    Args:
        model: A loaded `ServingModel` (name, version, alias, spec, threshold, pyfunc).
        features: Events with the spec's request fields and feature columns.
        mode: `batch` or `stream`.
        run_id: The run scoring them (part of each request id).

    Returns:
        One `ok` row per event; `latency_ms` is the vectorised call's time per row.
    """
    spec = model.spec
    started = time.perf_counter()
    scores = (
        model.pyfunc.predict(model_inputs(features, spec))[:, 1]
        if features.height
        else pl.Series([], dtype=pl.Float64)
    )
    per_row = (time.perf_counter() - started) * 1000 / max(features.height, 1)
    score = pl.Series("score", scores, dtype=pl.Float64)
    return features.select(
        (pl.lit(f"{mode}-{run_id[:8]}-") + pl.col("transaction_id")).alias("request_id"),
        pl.lit(mode).alias("mode"),
        pl.col("event_time"),
        *[pl.col(k).cast(pl.String) for k in KEYS],
        pl.lit(model.name).alias("model_name"),
        pl.lit(model.version).alias("model_version"),
        pl.lit(model.alias).alias("model_alias"),
        pl.lit(score),
        (pl.lit(score) >= model.threshold).alias("decision"),
        pl.lit(model.threshold, dtype=pl.Float64).alias("threshold"),
        pl.lit(per_row, dtype=pl.Float64).alias("latency_ms"),
        pl.lit("ok").alias("status"),
        pl.struct(list(spec.request_fields)).struct.json_encode().alias("request"),
        *spec.feature_columns,
    )


@dataclass(frozen=True)
class StreamBatch:
    """A landed file scored: its rows for the inference log and what happened to its lines."""

    source: str
    rows: pl.DataFrame
    lines: int
    scored: int
    errors: int
    seconds: float


def score_file(
    path: Path,
    landing_root: Path,
    model: Any,
    store: Any,
    *,
    run_id: str,
    now: datetime.datetime | None = None,
) -> StreamBatch:
    """Score every valid transaction of a landed file through the online path.

    Args:
        path: The landed transactions file.
        landing_root: Root its recorded name is relative to.
        model: A loaded `ServingModel`.
        store: The online store (`lookup(table, key)`).
        run_id: The run scoring it.
        now: Arrival time (default: now); error rows without a readable event time carry it.

    Returns:
        One row per line after the header: `ok` with score and features, or `error` with the
        line's problem. Request ids are `stream:<file>:<line>`, so a file's rows are unique.
    """
    started = time.perf_counter()
    now = now or datetime.datetime.now(datetime.UTC)
    landing = read_landing_file(path, landing_root, now)
    source = path.relative_to(landing_root).as_posix()
    lines = landing.lines.height
    errors: list[pl.DataFrame] = []
    valid = pl.DataFrame()
    if landing.header_problem:
        errors.append(
            landing.lines.select(LINE_NUMBER, pl.lit(landing.header_problem).alias(REASON))
        )
    else:
        good, bad = split_lines(nw.from_native(landing.lines), landing.header)
        errors.append(bad.to_native().select(LINE_NUMBER, REASON))
        day = _landing_day(path)
        bronze = good.to_native().with_columns(pl.lit(day).alias("landing_date"))
        checked, rejected = validate(nw.from_native(bronze), TRANSACTIONS, "landing_date")
        valid = checked.to_native()
        rejected = rejected.to_native()
        if rejected.height:
            errors.append(rejected.select(LINE_NUMBER, REASON))
    ok_rows = _score_online(valid, model, store, source, run_id)
    error_rows = _error_rows(pl.concat(errors, how="vertical_relaxed"), model, source, now)
    rows = pl.concat([ok_rows, error_rows], how="diagonal_relaxed")
    return StreamBatch(
        source=source,
        rows=rows,
        lines=lines,
        scored=ok_rows.height,
        errors=error_rows.height,
        seconds=time.perf_counter() - started,
    )


def _landing_day(path: Path) -> datetime.date:
    try:
        return datetime.date.fromisoformat(path.parent.name)
    except ValueError as error:
        raise ValueError(
            f"landing file {path} is not in a day folder (landing/<source>/<YYYY-MM-DD>/)"
        ) from error


def _score_online(
    valid: pl.DataFrame, model: Any, store: Any, source: str, run_id: str
) -> pl.DataFrame:
    spec = model.spec
    rows: list[dict[str, Any]] = []
    records = list(valid.iter_rows(named=True))
    # One batched lookup per feature table for the whole file (one round trip on Redis),
    # its time shared out over the file's rows.
    started = time.perf_counter()
    vectors = {
        lookup.table: store.lookup_many(
            lookup.table, [str(record.get(lookup.keys[0])) for record in records]
        )
        for lookup in (spec.lookups if records else ())
    }
    lookup_ms = (time.perf_counter() - started) * 1000 / max(len(records), 1)
    for index, record in enumerate(records):
        started = time.perf_counter() - lookup_ms / 1000
        request = {name: record.get(name) for name in spec.request_fields}
        looked_up = {table: found[index] for table, found in vectors.items()}
        features = model.features(request, looked_up)
        score = model.score(features)
        rows.append(
            {
                "request_id": f"stream:{source}:{record[LINE_NUMBER]}",
                "mode": "stream",
                "event_time": request["event_time"],
                **{k: request.get(k) for k in KEYS},
                "model_name": model.name,
                "model_version": model.version,
                "model_alias": model.alias,
                "score": score,
                "decision": score >= model.threshold,
                "threshold": model.threshold,
                "latency_ms": (time.perf_counter() - started) * 1000,
                "status": "ok",
                "request": json.dumps(request, default=_json_value, sort_keys=True),
                **features,
            }
        )
    if not rows:
        return pl.DataFrame()
    return pl.DataFrame(rows, infer_schema_length=None)


def _error_rows(
    errors: pl.DataFrame, model: Any, source: str, now: datetime.datetime
) -> pl.DataFrame:
    if not errors.height:
        return pl.DataFrame()
    return errors.select(
        (pl.lit(f"stream:{source}:") + pl.col(LINE_NUMBER).cast(pl.String)).alias("request_id"),
        pl.lit("stream").alias("mode"),
        pl.lit(now).cast(pl.Datetime("us", "UTC")).alias("event_time"),
        pl.lit(model.name).alias("model_name"),
        pl.lit(model.version).alias("model_version"),
        pl.lit(model.alias).alias("model_alias"),
        pl.lit("error").alias("status"),
        (
            pl.lit(f"{source} line ") + pl.col(LINE_NUMBER).cast(pl.String) + ": " + pl.col(REASON)
        ).alias("error"),
    )


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    return str(value)


def streamed_version(uri: str | Path, source: str) -> int | None:
    """The inference log version whose commit carries a streamed file's rows, or None.

    Every commit file of the log is searched for the file's name in the commit metadata: a
    run that appended and stopped before its checkpoint leaves such a commit at any version,
    also below versions other files' runs checkpointed since. (delta-rs' `history()` numbers
    versions from the handle's snapshot and mislabels them when commits land meanwhile, so
    the log's files are read directly.)
    """
    log = Path(uri) / "_delta_log"
    if not log.is_dir():
        return None
    found = []
    for commit in log.glob("[0-9]*.json"):
        data = commit.read_bytes()
        if STREAM_FILE_KEY.encode() not in data:
            continue
        for line in data.splitlines():
            info = json.loads(line).get("commitInfo")
            if info is not None and _commit_value(info, STREAM_FILE_KEY) == source:
                found.append(int(commit.stem))
    return max(found) if found else None


def _commit_value(info: dict, key: str) -> object:
    # delta-rs writes custom commit metadata at the top of commitInfo; other writers nest it
    # as a JSON string under userMetadata.
    if key in info:
        return info[key]
    nested = info.get("userMetadata")
    if isinstance(nested, str):
        try:
            return json.loads(nested).get(key)
        except (ValueError, AttributeError):
            return None
    return None
