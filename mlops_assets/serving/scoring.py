"""Batch and streaming scoring: predictions in the inference log's shape.

Batch scoring takes a day's transactions with their point-in-time features (the offline path,
the same join as training) and scores them in one vectorised call. Streaming scoring takes a
newly landed file, validates its lines against the silver contract, looks the valid
transactions' features up in the online store (the online path, as the REST server does, one
batch per table) and scores them all at once: the request-time features by the spec's rules
for many requests (`FeatureSpec.requests_frame`) and one vectorised model call, giving the
rows the REST server's per-request path gives. Lines that cannot be read or break the contract
become `error` rows naming the reason, so every line of the file is accounted for.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import narwhals as nw
import numpy as np
import polars as pl

from mlops_assets.lakehouse.landing import read_landing_file
from mlops_assets.models.training import model_inputs
from mlops_assets.serving.inference_log import NEW_CARD_TABLE, UTC_US, feature_schema
from mlops_assets.transforms.bronze import LINE_NUMBER, REASON, split_lines
from mlops_assets.transforms.silver import TRANSACTIONS, validate

# Commit metadata of a streamed file's append: the inference log's history is the checkpoint.
STREAM_FILE_KEY = "mlops.stream_file"
KEYS = ("transaction_id", "card_id", "merchant_id")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)


log = logging.getLogger(__name__)


def model_scores(model: Any, features: pl.DataFrame, threads: int | None = None) -> np.ndarray:
    """The positive class probability of each row of a frame holding the feature columns.

    The compiled trees score when the model has them and they equal the model's own predict
    on probe rows (checked once per loaded model); otherwise the pyfunc does.

    Args:
        model: A loaded `ServingModel`.
        features: Rows with every column of the model's `spec.feature_columns`.
        threads: Threads of the compiled trees' walk (default: as many as scikit-learn
            would use).
    """
    if not features.height:
        return np.empty(0, dtype=np.float64)
    compiled = getattr(model, "compiled", None)
    if compiled is not None:
        problem = compiled.check_many(lambda frame: _pyfunc_scores(model, frame))
        if problem is None:
            return compiled.score_frame(features, threads=threads)
        log.warning("%s version %s scored by the pyfunc: %s", model.name, model.version, problem)
    return _pyfunc_scores(model, features)


def _pyfunc_scores(model: Any, features: pl.DataFrame) -> np.ndarray:
    return np.asarray(model.pyfunc.predict(model_inputs(features, model.spec))[:, 1])


def _model_columns(model: Any, score: pl.Series) -> list[pl.Expr]:
    """The log's model, score and decision columns, the same for batch and stream rows."""
    return [
        pl.lit(model.name).alias("model_name"),
        pl.lit(model.version).alias("model_version"),
        pl.lit(model.alias).alias("model_alias"),
        pl.lit(score),
        (pl.lit(score) >= model.threshold).alias("decision"),
        pl.lit(model.threshold, dtype=pl.Float64).alias("threshold"),
    ]


def batch_predictions(
    model: Any, features: pl.DataFrame, *, mode: str, run_id: str, threads: int | None = None
) -> pl.DataFrame:
    """Score events carrying every feature column; rows in the inference log's shape.

    Args:
        model: A loaded `ServingModel` (name, version, alias, spec, threshold, pyfunc).
        features: Events with the spec's request fields and feature columns.
        mode: `batch` or `stream`.
        run_id: The run scoring them (part of each request id).
        threads: Threads of the compiled trees' walk (see `model_scores`).

    Returns:
        One `ok` row per event; `latency_ms` is the vectorised call's time per row.
    """
    spec = model.spec
    started = time.perf_counter()
    scores = model_scores(model, features, threads=threads)
    per_row = (time.perf_counter() - started) * 1000 / max(features.height, 1)
    score = pl.Series("score", scores, dtype=pl.Float64)
    return features.select(
        (pl.lit(f"{mode}-{run_id[:8]}-") + pl.col("transaction_id")).alias("request_id"),
        pl.lit(mode).alias("mode"),
        pl.col("event_time"),
        *[pl.col(k).cast(pl.String) for k in KEYS],
        *_model_columns(model, score),
        pl.lit(per_row, dtype=pl.Float64).alias("latency_ms"),
        pl.lit("ok").alias("status"),
        pl.struct(list(spec.request_fields)).struct.json_encode().alias("request"),
        *spec.feature_columns,
    )


# Rows scored and written at a time by `score_into_log`: a chunk's rows in the log's shape
# take about 70 MiB, however large the day.
BATCH_CHUNK_ROWS = 131_072


@dataclass(frozen=True)
class BatchOutcome:
    """A batch scored into the inference log (`score_into_log`).

    Attributes:
        written: The append's result (its Delta version, rows written).
        rows: Rows scored and logged.
        flagged: Rows decided fraud.
        mean_score: The mean score (0.0 without rows).
        ms_per_row: The vectorised scoring time per row, over all chunks.
        scoring_seconds: Time spent making the rows, summed over the threads that make them
            (they overlap each other and the writes).
    """

    written: Any
    rows: int
    flagged: int
    mean_score: float
    ms_per_row: float
    scoring_seconds: float


def score_into_log(
    model: Any,
    features: pl.DataFrame,
    log: Any,
    *,
    mode: str,
    run_id: str,
    chunk_rows: int = BATCH_CHUNK_ROWS,
) -> BatchOutcome:
    """Score events chunk by chunk into the inference log, all in one commit.

    Each chunk of `chunk_rows` events (the first a quarter of that) becomes its rows
    (`batch_predictions`) and its files in the log (`InferenceLog.append_chunks`). Chunks
    are scored by a thread per core, each walking its chunk's trees alone (no barrier between
    a chunk's halves), ahead of the writes (`made_ahead`): memory holds a few chunks' rows,
    however many events. The rows are the ones `batch_predictions` gives for
    all events at once, except `latency_ms`, each chunk's own time per row.

    Args:
        model: A loaded `ServingModel`.
        features: Events with the spec's request fields and feature columns.
        log: The `InferenceLog` to append to.
        mode: `batch` or `stream`.
        run_id: The run scoring them.
        chunk_rows: Events per chunk.

    Raises:
        ValueError: `chunk_rows` is not positive.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    totals = {"rows": 0, "flagged": 0, "score": 0.0, "ms": 0.0, "seconds": 0.0}
    # The first chunk is a quarter of the others: the writer starts sooner.
    first = max(1, chunk_rows // 4)
    starts = [0, *range(first, features.height, chunk_rows)]
    bounds = list(zip(starts, [*starts[1:], features.height], strict=True))

    def score(start: int, end: int) -> tuple[pl.DataFrame, float]:
        started = time.perf_counter()
        rows = batch_predictions(
            model, features.slice(start, end - start), mode=mode, run_id=run_id, threads=1
        )
        return rows, time.perf_counter() - started

    def chunks() -> Iterator[pl.DataFrame]:
        jobs = (functools.partial(score, start, end) for start, end in bounds)
        # A thread per core when the compiled trees score (each walks alone); one when the
        # pyfunc does, as its predict already uses every core.
        workers = scoring_threads() if _compiled_scores(model) else 1
        for rows, seconds in made_ahead(jobs, workers=workers):
            totals["seconds"] += seconds
            totals["rows"] += rows.height
            totals["flagged"] += int(rows.get_column("decision").sum())
            totals["score"] += float(rows.get_column("score").sum())
            totals["ms"] += float(rows.get_column("latency_ms")[0]) * rows.height
            yield rows

    if features.height:
        written = log.append_chunks(chunks())
    else:
        # No events: an append of no rows, as for a day without transactions.
        written = log.append(batch_predictions(model, features, mode=mode, run_id=run_id))
    count = int(totals["rows"])
    return BatchOutcome(
        written=written,
        rows=count,
        flagged=int(totals["flagged"]),
        mean_score=totals["score"] / count if count else 0.0,
        ms_per_row=totals["ms"] / count if count else 0.0,
        scoring_seconds=totals["seconds"],
    )


def _compiled_scores(model: Any) -> bool:
    """Whether the model's compiled trees score its rows (checked once per loaded model)."""
    compiled = getattr(model, "compiled", None)
    if compiled is None:
        return False
    return compiled.check_many(lambda frame: _pyfunc_scores(model, frame)) is None


def scoring_threads() -> int:
    """Threads that score chunks at once: as many as scikit-learn would use (the cores)."""
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

    return max(1, _openmp_effective_n_threads())


def made_ahead(
    jobs: Iterable[Callable[[], Any]], *, workers: int, ahead: int | None = None
) -> Iterator[Any]:
    """The results of `jobs`, in their order, made by `workers` threads ahead of the consumer.

    At most `ahead` jobs (default `workers + 1`) are running or done and not yet taken, so
    memory holds that many results besides the one the consumer holds. A job's error is
    raised when the consumer reaches its place. Stopping early (closing this iterator)
    cancels the jobs not started and waits for the running ones.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    if workers < 1:
        raise ValueError(f"workers must be positive, got {workers}")
    ahead = workers + 1 if ahead is None else ahead
    if ahead < 1:
        raise ValueError(f"ahead must be positive, got {ahead}")
    pool = ThreadPoolExecutor(workers, thread_name_prefix="made-ahead")
    pending: deque = deque()
    try:
        for job in jobs:
            if len(pending) >= ahead:
                yield pending.popleft().result()
            pending.append(pool.submit(job))
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class StreamBatch:
    """A landed file scored: its rows for the inference log and what happened to its lines.

    `state` is the file's size and modification time (nanoseconds) when it was read, when it
    was scored elsewhere (on Spark's executors); None when the caller read it itself.
    """

    source: str
    rows: pl.DataFrame
    lines: int
    scored: int
    errors: int
    seconds: float
    state: tuple[int, int] | None = None


def score_file(
    path: Path,
    landing_root: Path,
    model: Any,
    store: Any,
    *,
    run_id: str,
    now: datetime.datetime | None = None,
    timezone: str | None = None,
) -> StreamBatch:
    """Score every valid transaction of a landed file through the online path.

    Args:
        path: The landed transactions file.
        landing_root: Root its recorded name is relative to.
        model: A loaded `ServingModel`.
        store: The online store (`lookup(table, key)`).
        run_id: The run scoring it.
        now: Arrival time (default: now); error rows without a readable event time carry it.
        timezone: The zone the source declares for times without an offset; None: such
            times are refused, as silver refuses them.

    Returns:
        One row per line after the header: `ok` with score and features, or `error` with the
        line's problem. Request ids are `stream:<file>:<line>`, so a file's rows are unique.
    """
    started = time.perf_counter()
    now = now or datetime.datetime.now(datetime.UTC)
    source = path.relative_to(landing_root).as_posix()
    lines, valid, errors = read_valid_lines(path, landing_root, now, timezone=timezone)
    ok_rows = _score_online(valid, model, store, source, run_id)
    error_rows = _error_rows(errors, model, source, now)
    rows = pl.concat([ok_rows, error_rows], how="diagonal_relaxed")
    return StreamBatch(
        source=source,
        rows=rows,
        lines=lines,
        scored=ok_rows.height,
        errors=error_rows.height,
        seconds=time.perf_counter() - started,
    )


def read_valid_lines(
    path: Path, landing_root: Path, now: datetime.datetime, *, timezone: str | None = None
) -> tuple[int, pl.DataFrame, pl.DataFrame]:
    """A landed file's lines after the header, checked against the silver contract.

    Returns:
        The number of lines, the valid transactions (with their line numbers) and the other
        lines' numbers with their problem (`LINE_NUMBER`, `REASON`).
    """
    landing = read_landing_file(path, landing_root, now, required=TRANSACTIONS.required)
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
        checked, rejected = validate(
            nw.from_native(bronze), TRANSACTIONS, "landing_date", timezone=timezone
        )
        valid = checked.to_native()
        rejected = rejected.to_native()
        if rejected.height:
            errors.append(rejected.select(LINE_NUMBER, REASON))
    return landing.lines.height, valid, pl.concat(errors, how="vertical_relaxed")


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
    """Score a file's valid transactions in one go, rows as the per-request path makes them.

    One batched lookup per feature table (one round trip on Redis), the request-time features
    of every row at once (`FeatureSpec.requests_frame`) and one vectorised model call (as
    `batch_predictions`); `latency_ms` is the whole file's time shared out over its rows.
    """
    if not valid.height:
        return pl.DataFrame()
    spec = model.spec
    started = time.perf_counter()
    types = feature_schema(spec)
    vectors = {
        lookup.table: store.lookup_many(
            lookup.table, [str(k) for k in _column(valid, lookup.keys[0])]
        )
        for lookup in spec.lookups
    }
    looked_up = {
        lookup.table: _vector_frame(lookup.features, vectors[lookup.table], types)
        for lookup in spec.lookups
    }
    # As the REST server marks it: the online store holds no row of the card.
    cards = vectors.get(NEW_CARD_TABLE)
    new_card = pl.Series(
        "new_card",
        [None] * valid.height if cards is None else [not v.found for v in cards],
        dtype=pl.Boolean,
    )
    features = spec.requests_frame(valid, looked_up)
    score = pl.Series("score", model_scores(model, features), dtype=pl.Float64)
    requests = _request_json(valid, spec.request_fields)
    known = [k for k in KEYS if k in spec.request_fields and k in valid.columns]
    base = valid.select(
        (pl.lit(f"stream:{source}:") + pl.col(LINE_NUMBER).cast(pl.String)).alias("request_id"),
        pl.lit("stream").alias("mode"),
        pl.col("event_time"),
        *[pl.col(k) if k in known else pl.lit(None).alias(k) for k in KEYS],
        *_model_columns(model, score),
    )
    per_row = (time.perf_counter() - started) * 1000 / valid.height
    rows = base.with_columns(
        pl.lit(per_row, dtype=pl.Float64).alias("latency_ms"),
        pl.lit("ok").alias("status"),
        requests,
        new_card,
    )
    return rows.hstack(
        features.select(c for c in spec.feature_columns if c not in rows.columns).get_columns()
    )


def _column(frame: pl.DataFrame, name: str) -> list[Any]:
    """A column's Python values (None throughout when the frame lacks it)."""
    if name not in frame.columns:
        return [None] * frame.height
    return frame.get_column(name).to_list()


def _vector_frame(
    features: tuple[str, ...], vectors: list[Any], types: dict[str, pl.DataType]
) -> pl.DataFrame:
    """`FeatureVector`s as a frame: the features in their registry types and `feature_time`."""
    # Aware datetimes reach polars faster as microseconds since the epoch (the same instants).
    micros = [
        None if v.feature_time is None else (v.feature_time - _EPOCH) // _MICROSECOND
        for v in vectors
    ]
    return pl.DataFrame(
        [
            *[
                pl.Series(name, [v.values[name] for v in vectors], dtype=types[name])
                for name in features
            ],
            pl.Series("feature_time", micros, dtype=pl.Int64).cast(UTC_US),
        ]
    )


def _request_json(valid: pl.DataFrame, fields: tuple[str, ...]) -> pl.Series:
    """Each row's request as the per-request path logs it.

    That is `json.dumps(request, default=_json_value, sort_keys=True)` of the row's request
    fields, built column by column: `"name": value` pieces joined in the key order, each
    value encoded by the same encoder (or, for plain ASCII strings and UTC timestamps, as it
    would encode them).
    """
    names = sorted(set(fields))
    if not names:
        return pl.Series("request", ["{}"] * valid.height, dtype=pl.String)
    encode = json.JSONEncoder(default=_json_value, sort_keys=True).encode
    parts: list[pl.Expr] = []
    for i, name in enumerate(names):
        parts.append(pl.lit(("{" if i == 0 else ", ") + encode(name) + ": "))
        parts.append(pl.lit(_json_values(valid, name, encode)))
    parts.append(pl.lit("}"))
    return valid.select(pl.concat_str(parts).alias("request")).to_series()


def _json_values(valid: pl.DataFrame, name: str, encode: Any) -> pl.Series:
    """A column's values as `encode` writes each of them (`null` where the column lacks)."""
    if name not in valid.columns:
        return pl.Series(name, ["null"] * valid.height, dtype=pl.String)
    column = valid.get_column(name)
    if column.dtype == UTC_US:
        # `datetime.isoformat()` of a UTC value: the fraction only when it is not zero.
        value = pl.col(name)
        column = valid.select(
            pl.when(value.dt.microsecond() == 0)
            .then(value.dt.strftime("%Y-%m-%dT%H:%M:%S+00:00"))
            .otherwise(value.dt.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00"))
        ).to_series()
    if column.dtype == pl.String:
        # Printable ASCII without quotes or backslashes is written as it is, between quotes;
        # any other string is encoded once per distinct value.
        plain = column.str.contains(r"^[ !#-\[\]-~]*$")
        others = column.filter(~plain).unique()
        encoded = pl.Series([encode(v) for v in others.to_list()], dtype=pl.String)
        return pl.select(
            pl.when(pl.lit(plain))
            .then(pl.lit('"') + pl.lit(column) + pl.lit('"'))
            .otherwise(pl.lit(column).replace_strict(others, encoded, default=None))
            .fill_null("null")
        ).to_series()
    if column.dtype.is_numeric() or column.dtype == pl.Boolean:
        # Numbers, booleans and nulls never hold ", ": one encoded list splits into its items.
        items = encode(column.to_list())[1:-1]
        return pl.Series(name, items.split(", ") if items else [], dtype=pl.String)
    return pl.Series(name, [encode(v) for v in column.to_list()], dtype=pl.String)


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
    also below versions other files' runs checkpointed since. On a local disk the log's files
    are read directly (delta-rs' `history()` numbers versions from the handle's snapshot and
    mislabels them when commits land meanwhile); on object storage `delta_io.commit_versions`
    reads the log through delta-rs with the lake's storage options.
    """
    from mlops_assets.lakehouse.delta_io import commit_versions, is_object_store_uri

    if is_object_store_uri(uri):
        found = commit_versions(str(uri), STREAM_FILE_KEY, source)
        return found[0] if found else None
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
