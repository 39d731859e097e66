"""The champion model as served: loading, scoring one request fast, and hot swaps.

`load_serving_model` loads one registered version with its feature spec and decision
threshold. A request is scored by building its features in plain Python (the same rules and
arithmetic as `FeatureSpec.request_frame`) and running `CompiledPipeline` (the same arithmetic
as the pipeline's `predict_proba`). Both fast paths are checked against the reference path
(the polars feature frame, `model_inputs`, the MLflow pyfunc's `predict`) when a version is
loaded, on rows probing every split threshold, missing values and unknown categories; if
either differs in any bit, that version is served by the reference path instead.

`ChampionHolder` keeps the version holding the `champion` alias: it polls the alias, loads a
new version in a background thread and swaps it in with one reference assignment, so a
request always scores with one whole model. If a version fails to load, the old one keeps
serving and the failure is reported by `status()`.

A version compiled and checked once is cached (`serving.fastload`): a new process resolves the
alias and the artifacts straight from the registry and loads the verified scorer without
importing MLflow (`load_path` `cache`); otherwise it loads through MLflow (`mlflow`) and writes
the cache.
"""

from __future__ import annotations

import datetime
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlops_assets.features.spec import ON_DEMAND_FEATURES, FeatureSpec
from mlops_assets.serving.compiled import CompiledPipeline, UnsupportedModelError
from mlops_assets.serving.fastload import CompiledCache, RegistryReader
from mlops_assets.serving.row_scorer import RowScorer

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
THRESHOLD_KEY = "decision_threshold"
_NO_CARD_TIME = 30 * 86_400.0


def _seconds_since_card_txn(row: Mapping[str, Any]) -> Any:
    feature_time = row.get("card_behaviour__feature_time")
    if feature_time is None:
        return _NO_CARD_TIME
    # polars' `dt.total_seconds()` truncates to whole seconds (the time is strictly earlier).
    return float((row["event_time"] - feature_time) // datetime.timedelta(seconds=1))


def _amount_to_card_mean_7d(row: Mapping[str, Any]) -> Any:
    mean = row.get("amount_mean_7d")
    if mean is not None and mean > 0:
        amount = row.get("amount")
        return None if amount is None else amount / mean
    return 1.0


def _amount_zscore_7d(row: Mapping[str, Any]) -> Any:
    std = row.get("amount_std_7d")
    if std is not None and std > 0:
        amount, mean = row.get("amount"), row.get("amount_mean_7d")
        return None if amount is None or mean is None else (amount - mean) / std
    return 0.0


def _is_foreign(row: Mapping[str, Any]) -> Any:
    country, card_country = row.get("country"), row.get("card_country")
    if country is None or card_country is None:
        return False
    return country != card_country


def _card_without_history(row: Mapping[str, Any]) -> Any:
    return row.get("card_behaviour__feature_time") is None


def _hour_of_day(row: Mapping[str, Any]) -> Any:
    return row["event_time"].astimezone(datetime.UTC).hour


# Plain-Python twins of `spec.ON_DEMAND_FEATURES`; a spec using a feature without one is
# served through the polars frame.
PYTHON_ON_DEMAND: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "seconds_since_card_txn": _seconds_since_card_txn,
    "amount_to_card_mean_7d": _amount_to_card_mean_7d,
    "amount_zscore_7d": _amount_zscore_7d,
    "is_foreign": _is_foreign,
    "hour_of_day": _hour_of_day,
    "card_without_history": _card_without_history,
}


def request_features(
    spec: FeatureSpec,
    request: Mapping[str, Any],
    looked_up: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One request's model input in plain Python: `feature_columns` to value.

    The rules of `FeatureSpec.request_frame`: a looked-up row is used only if its feature time
    is strictly before the event and within the table's staleness limit, otherwise the
    features' defaults; `overrides` (request values of looked-up features) replace them; the
    request-time features are derived last.

    Args:
        spec: The model's feature spec.
        request: Request fields; `event_time` an aware datetime.
        looked_up: Table name to its `FeatureVector` (anything with `values`, `feature_time`).
        overrides: Looked-up feature name to the value the request gives.

    Raises:
        KeyError: The spec has a request-time feature without a Python twin.
    """
    event_time = request["event_time"]
    row: dict[str, Any] = {name: request.get(name) for name in spec.request_fields}
    for lookup in spec.lookups:
        definition = lookup.definition
        vector = looked_up[lookup.table]
        feature_time = vector.feature_time
        limit = datetime.timedelta(days=definition.max_staleness_days)
        usable = feature_time is not None and (event_time - limit <= feature_time < event_time)
        if usable:
            for name in lookup.features:
                row[name] = vector.values[name]
        else:
            for name in lookup.features:
                row[name] = definition.feature(name).default
        row[lookup.time_column] = feature_time if usable else None
    if overrides:
        row.update(overrides)
    for name in spec.on_demand:
        row[name] = PYTHON_ON_DEMAND[name](row)
    return {name: row[name] for name in spec.feature_columns}


def reference_frame(
    spec: FeatureSpec,
    request: Mapping[str, Any],
    looked_up: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """The same input as `request_features`, built by `FeatureSpec.request_frame` (polars)."""
    import polars as pl

    frame = spec.request_frame(
        request,
        {
            table: {"values": vector.values, "feature_time": vector.feature_time}
            for table, vector in looked_up.items()
        },
    )
    if overrides:
        frame = frame.with_columns(
            pl.lit(
                value, dtype=None if frame.schema[name] == pl.Null else frame.schema[name]
            ).alias(name)
            for name, value in overrides.items()
        )
        frame = frame.with_columns(
            ON_DEMAND_FEATURES[name].expression().alias(name) for name in spec.on_demand
        )
    return frame


@dataclass
class ServingModel:
    """One loaded model version and how it scores.

    Attributes:
        name: Registered model name.
        version: Registered version.
        alias: The alias it was loaded for (`champion`).
        spec: Its feature spec.
        threshold: Scores at or above it are decided fraud.
        pyfunc: The MLflow pyfunc model (the reference scorer).
        compiled: The fast scorer, None when the reference path serves.
        python_features: Whether features are built in plain Python (else polars).
        scorer: `compiled` or `reference`, for health reports.
        fallback_reason: Why the reference path serves, when it does.
        loaded_at: When loading finished.
        load_seconds: How long loading took.
        load_path: `cache` (the verified cached scorer, without MLflow) or `mlflow`.
        load_detail: Why the cache did not serve, or what verified it.
        row_scorer: The compiled trees walked in plain Python (`row_scorer.RowScorer`), used
            for one request when it equals the pyfunc on the probe rows.
    """

    name: str
    version: str
    alias: str
    spec: FeatureSpec
    threshold: float
    pyfunc: Any
    compiled: CompiledPipeline | None
    python_features: bool
    fallback_reason: str | None = None
    loaded_at: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC)
    )
    load_seconds: float = 0.0
    load_path: str = "mlflow"
    load_detail: str | None = None
    row_scorer: Any = None

    @property
    def scorer(self) -> str:
        """Which path scores requests."""
        return "compiled" if self.compiled is not None and self.python_features else "reference"

    def features(
        self,
        request: Mapping[str, Any],
        looked_up: Mapping[str, Any],
        overrides: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The request's model input (`feature_columns` to value)."""
        if self.python_features:
            return request_features(self.spec, request, looked_up, overrides)
        frame = reference_frame(self.spec, request, looked_up, overrides)
        return {name: frame.get_column(name)[0] for name in self.spec.feature_columns}

    def score(self, features: Mapping[str, Any]) -> float:
        """The fraud probability of one request's model input."""
        if self.row_scorer is not None:
            return self.row_scorer.score([features[c] for c in self.spec.feature_columns])
        if self.compiled is not None:
            return self.compiled.score([features[c] for c in self.spec.feature_columns])
        return self.reference_score([features])[0]

    def reference_score(self, rows: list[Mapping[str, Any]]) -> list[float]:
        """Scores through `model_inputs` and the pyfunc's `predict` (the reference path)."""
        import polars as pl

        from mlops_assets.models.training import model_inputs

        # The columns as `model_inputs` reads them: strings, and numbers as floats (it casts
        # integers and booleans to floats itself; probe rows hold floats in integer columns).
        strings = self._string_columns
        columns = {}
        for name in self.spec.feature_columns:
            values = [r[name] for r in rows]
            if name in strings:
                columns[name] = pl.Series(name, values, dtype=pl.String)
            else:
                columns[name] = pl.Series(
                    name, [None if v is None else float(v) for v in values], dtype=pl.Float64
                )
        frame = pl.DataFrame(columns)
        if self.pyfunc is None:
            # Loaded from the cache: the reference model is loaded when first asked for.
            import mlflow

            self.pyfunc = mlflow.pyfunc.load_model(f"models:/{self.name}/{self.version}")
        return [float(p) for p in self.pyfunc.predict(model_inputs(frame, self.spec))[:, 1]]

    @property
    def _string_columns(self) -> set[str]:
        import polars as pl

        from mlops_assets.serving.inference_log import feature_schema

        return {n for n, t in feature_schema(self.spec).items() if t == pl.String}


def _probe_rows(compiled: CompiledPipeline, count: int, seed: int = 13) -> list[list[Any]]:
    """Rows probing the compiled trees.

    Numbers at, just above and just below split thresholds, missing values; known, unknown
    and missing categories.
    """
    rng = random.Random(seed)
    thresholds: dict[int, list[float]] = {}
    for feature, threshold, left, index in zip(
        compiled._feature.tolist(),
        compiled._threshold.tolist(),
        compiled._left.tolist(),
        range(len(compiled._left)),
        strict=True,
    ):
        if left != index:  # a split, not a leaf
            thresholds.setdefault(feature, []).append(threshold)
    rows = []
    width = len(compiled.feature_columns)
    for _ in range(count):
        row: list[Any] = [None] * width
        for source, categories in compiled._categorical:
            pick = rng.random()
            if pick < 0.1:
                row[source] = None
            elif pick < 0.2:
                row[source] = "never-seen-category"
            else:
                row[source] = rng.choice(list(categories))
        for source, target in compiled._numeric:
            known = thresholds.get(target)
            pick = rng.random()
            if pick < 0.1 or not known:
                row[source] = None if pick < 0.05 else rng.uniform(-10, 1000)
            else:
                value = rng.choice(known)
                if pick < 0.4:
                    row[source] = value
                elif pick < 0.7:
                    row[source] = math.nextafter(value, math.inf)
                else:
                    row[source] = math.nextafter(value, -math.inf)
        rows.append(row)
    return rows


def _check_compiled(
    model: ServingModel, compiled: CompiledPipeline, count: int
) -> tuple[str | None, list[list[Any]], list[float]]:
    """Compare the compiled scorer with the pyfunc on probe rows.

    Returns:
        None when every score is equal to the last bit, else the first difference; the probe
        rows (in `feature_columns` order) and the pyfunc's scores of them.
    """
    columns = model.spec.feature_columns
    probes = _probe_rows(compiled, count)
    rows = [dict(zip(columns, r, strict=True)) for r in probes]
    expected = model.reference_score(rows)
    for row, want in zip(rows, expected, strict=True):
        got = compiled.score([row[c] for c in columns])
        if got != want:
            return f"compiled score {got!r} != pyfunc score {want!r} for {row}", probes, expected
    return None, probes, expected


def _check_python_features(spec: FeatureSpec) -> str | None:
    """None when plain-Python features equal the polars frame's on probe requests."""
    from mlops_assets.features.online_store import FeatureVector

    missing = [name for name in spec.on_demand if name not in PYTHON_ON_DEMAND]
    if missing:
        return f"no plain-Python version of request-time features {missing}"
    rng = random.Random(5)
    event_time = datetime.datetime(2026, 3, 1, 12, 30, 15, 250_000, tzinfo=datetime.UTC)
    for i in range(60):
        request: dict[str, Any] = {name: f"v{rng.randrange(3)}" for name in spec.request_fields}
        request["event_time"] = event_time + datetime.timedelta(seconds=rng.randrange(86_400))
        request["amount"] = rng.choice([0.0, 1.0, rng.uniform(0, 500)])
        if i % 5 == 0:
            request["country"] = None
        looked_up = {}
        for lookup in spec.lookups:
            definition = lookup.definition
            values: dict[str, Any] = {}
            for name in lookup.features:
                kind = definition.feature(name).dtype
                values[name] = {
                    "int": rng.randrange(5),
                    "float": rng.choice([0.0, -1.0, rng.uniform(0, 200), None]),
                    "bool": rng.random() < 0.5,
                    "str": f"s{rng.randrange(3)}",
                }[kind]
            age = datetime.timedelta(seconds=rng.choice([0, 1, 59.5, 3600, 86_400 * 40]))
            feature_time = None if i % 7 == 0 else request["event_time"] - age
            looked_up[lookup.table] = FeatureVector(
                lookup.table, "k", values, feature_time is not None, feature_time
            )
        fast = request_features(spec, request, looked_up)
        frame = reference_frame(spec, request, looked_up).row(0, named=True)
        for name in spec.feature_columns:
            a, b = fast[name], frame[name]
            same = (a is None and b is None) or (
                a is not None and b is not None and type(a)(b) == a and (a == a or b != b)
            )
            if not same:
                return f"feature {name}: python {a!r} != polars {b!r}"
    return None


def _row_scorer(
    compiled: CompiledPipeline, rows: list[list[Any]], expected: list[float]
) -> RowScorer | None:
    """The plain-Python walk of `compiled` when it gives `expected` on `rows`, else None."""
    try:
        scorer = RowScorer(compiled)
    except ValueError as error:
        log.warning("no plain-Python walk of the compiled trees: %s", error)
        return None
    for row, want in zip(rows, expected, strict=True):
        if scorer.score(row) != want:
            log.warning("the plain-Python walk differs from the pyfunc on %s", row)
            return None
    return scorer


def _from_cache(
    name: str, version: str, alias: str, registry: RegistryReader, cache: CompiledCache
) -> tuple[ServingModel | None, str]:
    """A version from the compiled cache without MLflow, or None and why not."""
    started = time.perf_counter()
    info = registry.version_info(name, version)
    if info.local_dir is None:
        return None, f"artifacts at {info.location} are not on a local disk"
    cached, why = cache.load(name, version, info.local_dir)
    if cached is None:
        return None, why
    model = ServingModel(
        name=name,
        version=str(version),
        alias=alias,
        spec=FeatureSpec.from_dict(cached.spec),
        threshold=cached.threshold,
        pyfunc=None,
        compiled=cached.compiled,
        python_features=cached.python_features,
        fallback_reason=cached.fallback_reason,
        load_path="cache",
        load_detail=f"cached scorer verified on {cached.verified_rows} probe rows",
        row_scorer=_row_scorer(cached.compiled, cached.probe_rows, cached.probe_scores),
    )
    model.load_seconds = time.perf_counter() - started
    model.loaded_at = datetime.datetime.now(datetime.UTC)
    return model, why


def load_serving_model(
    name: str,
    version: str,
    alias: str = "champion",
    *,
    check_rows: int = 512,
    registry: RegistryReader | None = None,
    cache: CompiledCache | None = None,
    before_mlflow: Callable[[], None] | None = None,
) -> ServingModel:
    """Load a registered version with its spec and threshold, and pick its scoring path.

    With `registry` and `cache`, a version whose checked compiled scorer is cached (and still
    verifies, see `fastload.CompiledCache.load`) is loaded from there without MLflow.
    Otherwise it is loaded through MLflow (whose tracking and registry URIs must be set, or
    set by `before_mlflow`), and its checked scorer is written to `cache`.

    Args:
        name: Registered model name.
        version: The version to load.
        alias: The alias it is loaded for (recorded with each prediction).
        check_rows: Probe rows on which the compiled scorer must equal the pyfunc exactly.
        registry: Reads the version's artifact location (for the cache).
        cache: The compiled cache.
        before_mlflow: Called before MLflow is first used (e.g. to point it at the store).

    Raises:
        Exception: The model, its spec or its threshold cannot be loaded.
    """
    started = time.perf_counter()
    miss = None
    if registry is not None and cache is not None:
        try:
            cached, miss = _from_cache(name, version, alias, registry, cache)
        except Exception as error:  # noqa: BLE001 - the full path still serves; say why
            cached, miss = None, f"cache unusable: {type(error).__name__}: {error}"
        if cached is not None:
            return cached
    if before_mlflow is not None:
        before_mlflow()
    import mlflow

    uri = f"models:/{name}/{version}"
    pyfunc = mlflow.pyfunc.load_model(uri)
    metadata = pyfunc.metadata.metadata or {}
    if "feature_spec" not in metadata:
        raise ValueError(f"{name} version {version} has no feature spec in its metadata")
    spec = FeatureSpec.from_dict(metadata["feature_spec"])
    threshold = metadata.get(THRESHOLD_KEY, DEFAULT_THRESHOLD)
    if isinstance(threshold, str):
        threshold = float(threshold)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise ValueError(f"{name} version {version}: {THRESHOLD_KEY} {threshold!r} is no number")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{name} version {version}: {THRESHOLD_KEY} {threshold} not in [0, 1]")
    model = ServingModel(
        name=name,
        version=str(version),
        alias=alias,
        spec=spec,
        threshold=float(threshold),
        pyfunc=pyfunc,
        compiled=None,
        python_features=False,
    )
    reasons = []
    feature_problem = _check_python_features(spec)
    if feature_problem is None:
        model.python_features = True
    else:
        reasons.append(feature_problem)
    probes: list[list[Any]] = []
    expected: list[float] = []
    try:
        compiled = CompiledPipeline(pyfunc.get_raw_model(), spec.feature_columns)
        problem, probes, expected = _check_compiled(model, compiled, check_rows)
        if problem is None:
            model.compiled = compiled
            model.row_scorer = _row_scorer(compiled, probes, expected)
        else:
            reasons.append(problem)
    except UnsupportedModelError as error:
        reasons.append(str(error))
    model.fallback_reason = "; ".join(reasons) or None
    model.load_detail = miss
    if model.compiled is not None and registry is not None and cache is not None:
        try:
            info = registry.version_info(name, version)
            if info.local_dir is not None:
                cache.save(
                    name,
                    str(version),
                    info.local_dir,
                    compiled=model.compiled,
                    spec=metadata["feature_spec"],
                    threshold=model.threshold,
                    python_features=model.python_features,
                    fallback_reason=model.fallback_reason,
                    probe_rows=probes,
                    probe_scores=expected,
                )
        except Exception as error:  # noqa: BLE001 - serving goes on; the next start is slower
            log.warning("caching the scorer of %s version %s failed: %s", name, version, error)
    model.load_seconds = time.perf_counter() - started
    model.loaded_at = datetime.datetime.now(datetime.UTC)
    if reasons:
        log.warning("%s version %s served by the reference path: %s", name, version, reasons)
    return model


@dataclass(frozen=True)
class LoadFailure:
    """A version that could not be loaded."""

    version: str
    error: str
    at: datetime.datetime


class ChampionHolder:
    """Serves the version holding an alias; follows the alias and swaps models atomically.

    Args:
        name: Registered model name.
        alias: The alias to follow.
        poll_seconds: How often the alias is read.
        retry_seconds: A version that failed to load is tried again after this long.
        loader: Loads a version (`load_serving_model` by default; tests pass others).
        resolver: Returns the version holding the alias, or None (an MLflow client lookup by
            default).
    """

    def __init__(
        self,
        name: str,
        alias: str = "champion",
        *,
        poll_seconds: float = 2.0,
        retry_seconds: float = 60.0,
        loader: Callable[[str, str, str], ServingModel] | None = None,
        resolver: Callable[[], str | None] | None = None,
    ) -> None:
        self.name = name
        self.alias = alias
        self.poll_seconds = poll_seconds
        self.retry_seconds = retry_seconds
        self._loader = loader or (lambda n, v, a: load_serving_model(n, v, a))
        self._resolver = resolver or self._resolve_alias
        self.current: ServingModel | None = None
        self.champion_version: str | None = None
        self.last_failure: LoadFailure | None = None
        self.last_poll_error: str | None = None
        self.last_poll_at: datetime.datetime | None = None
        self.swaps = 0
        self.load_failures = 0
        self._failed_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._refresh_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._client: Any = None

    def _resolve_alias(self) -> str | None:
        import mlflow
        from mlflow.exceptions import MlflowException

        if self._client is None:
            self._client = mlflow.MlflowClient()
        try:
            return str(self._client.get_model_version_by_alias(self.name, self.alias).version)
        except MlflowException as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def refresh(self) -> bool:
        """Read the alias once; load and swap in its version if it changed. Return swapped."""
        with self._refresh_lock:
            try:
                version = self._resolver()
                self.last_poll_error = None
            except Exception as error:  # noqa: BLE001 - the registry may be briefly unreachable
                self.last_poll_error = f"{type(error).__name__}: {error}"
                return False
            finally:
                self.last_poll_at = datetime.datetime.now(datetime.UTC)
            self.champion_version = version
            current = self.current
            if version is None or (current is not None and current.version == version):
                if current is not None and current.version == version:
                    self.last_failure = None
                return False
            failed = self._failed_at.get(version)
            if failed is not None and time.monotonic() - failed < self.retry_seconds:
                return False
            try:
                loaded = self._loader(self.name, version, self.alias)
            except Exception as error:  # noqa: BLE001 - keep serving the old model, say why
                self._failed_at[version] = time.monotonic()
                self.load_failures += 1
                self.last_failure = LoadFailure(
                    version=version,
                    error=f"{type(error).__name__}: {error}"[:2000],
                    at=datetime.datetime.now(datetime.UTC),
                )
                log.error("loading %s version %s failed: %s", self.name, version, error)
                return False
            self._failed_at.pop(version, None)
            # One assignment: a request reads `current` once and scores with that model.
            self.current = loaded
            self.last_failure = None
            self.swaps += 1
            log.info("now serving %s version %s (%s)", self.name, version, loaded.scorer)
            return True

    def start(self) -> None:
        """Poll the alias in a background thread (the first poll happens at once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="champion-poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.poll_seconds)

    def stop(self) -> None:
        """Stop polling (a load in progress finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
            self._thread = None

    def status(self) -> dict[str, Any]:
        """What is served and whether it is the alias' version: for health and readiness."""
        current = self.current
        failure = self.last_failure
        stale = current is not None and (
            self.champion_version is not None and current.version != self.champion_version
        )
        return {
            "model": self.name,
            "alias": self.alias,
            "serving_version": None if current is None else current.version,
            "alias_version": self.champion_version,
            "stale": stale,
            "scorer": None if current is None else current.scorer,
            "fallback_reason": None if current is None else current.fallback_reason,
            "load_path": None if current is None else current.load_path,
            "load_detail": None if current is None else current.load_detail,
            "load_seconds": None if current is None else round(current.load_seconds, 4),
            "threshold": None if current is None else current.threshold,
            "loaded_at": None if current is None else current.loaded_at.isoformat(),
            "swaps": self.swaps,
            "load_error": None
            if failure is None
            else {"version": failure.version, "error": failure.error, "at": failure.at.isoformat()},
            "registry_error": self.last_poll_error,
            "last_poll_at": None if self.last_poll_at is None else self.last_poll_at.isoformat(),
        }
