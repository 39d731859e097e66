"""The staging stage of a release: the daily loop on staging against prod's champion.

`mlops release staging` tests the code of a release, not a model. It runs with
`MLOPS_ENV=staging` only, and in four steps, each printed with its outcome:

1. **prod's champions, copied**: for every declared model with a champion in prod, the
   version's artifacts are read from prod's registry (read-only, after the access policy's
   read check) and registered as `staging.<model>` with tags naming the source (`prod.<model>`
   version, run id), alias champion. Its monitoring reference is built with the code under
   test from prod's training set at the version the model trained on (a read of prod's table),
   into staging's reference table. A model without a champion in prod is trained in staging
   and promoted there once it clears the absolute gates.
2. **a small seeded feed** lands in staging: a few days of dirty data with late events and
   chargebacks arriving days later.
3. **the daily loop** runs in-process on staging's Dagster instance: the medallion run of each
   landing day, the refresh of every event day, a challenger trained by the release's code and
   validated against the copied champion, and for the last days the serve run (online store,
   batch scoring with the champion, drift, profiles) and the performance of the matured day.
4. **the verdict**: the release fails (exit 1) when a run fails, an asset check of severity
   ERROR fails, or a release gate fails; the report names each failure and is also written as
   JSON to `data/staging/release/<time>.json`.

Release gates (the code must pass them; models move on their own lifecycle):

- the copied champion loads with the code under test, its feature spec is one the code's
  serving satisfies, its inputs and logged signature match its spec, and it scores (its
  monitoring reference is built, the day's batch scoring runs);
- the challenger trained by the code under test clears the absolute gates of its declaration
  (spec, inputs, signature, minimum PR-AUC and recall at 1 % FPR, latency), and loads and
  scores.

The challenger-vs-champion regression (`no_regression_vs_champion`) is reported, not a gate:
the copied champion was trained on prod's data and the challenger on a few simulated days, so
the comparison says nothing about the code; whether a model replaces prod's champion is
decided by prod's own validation when it is trained there.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlops_assets.access import Resource, check_read
from mlops_assets.settings import Settings, load_settings, use_mlflow_store

# The environment a release is tested in, and the one whose champions it tests against.
STAGING = "staging"
PROD = "prod"
WHO = "mlops release staging"
# Validation checks that are release gates; any other check a validation reports is shown.
REPORTED_ONLY = ("no_regression_vs_champion",)
# Tags on a copied version naming its source in prod.
SOURCE_MODEL_TAG = "mlops.source_model"
SOURCE_VERSION_TAG = "mlops.source_version"
SOURCE_RUN_TAG = "mlops.source_run_id"
# What a reset of staging removes under its root (its release reports stay).
STAGING_STATE = ("landing", "lake", "online", "cd", "mlartifacts", "mlflow.db")


class ReleaseError(RuntimeError):
    """The staging stage cannot run (wrong environment, bad options)."""


@dataclass
class Outcome:
    """One step's outcome.

    Attributes:
        step: `copy`, `feed`, `run`, `check`, `champion`, `challenger`, `verdict`.
        name: What was checked (a run, a check, a gate).
        passed: Whether it passed.
        detail: The numbers or the error.
        gate: Whether a failure fails the release (else it is reported only).
    """

    step: str
    name: str
    passed: bool
    detail: str
    gate: bool = True


@dataclass
class Report:
    """Everything the stage did, and the verdict."""

    started: str
    code_version: str
    options: dict[str, Any]
    outcomes: list[Outcome] = field(default_factory=list)
    champions: dict[str, dict[str, str]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failures(self) -> list[Outcome]:
        """The outcomes that fail the release."""
        return [o for o in self.outcomes if o.gate and not o.passed]

    @property
    def passed(self) -> bool:
        """Whether the release passes the staging stage."""
        return not self.failures

    def add(self, outcome: Outcome) -> Outcome:
        """Record and print an outcome."""
        self.outcomes.append(outcome)
        mark = "ok" if outcome.passed else ("FAIL" if outcome.gate else "reported")
        say(f"{outcome.step}: {outcome.name}: {mark}: {outcome.detail}")
        return outcome

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the JSON verdict."""
        return {
            "stage": "staging",
            "passed": self.passed,
            "started": self.started,
            "seconds": round(self.seconds, 1),
            "code_version": self.code_version,
            "options": self.options,
            "champions": self.champions,
            "failures": [asdict(o) for o in self.failures],
            "outcomes": [asdict(o) for o in self.outcomes],
        }


def say(text: str) -> None:
    """One line of the stage's output."""
    print(f"[release staging] {text}", flush=True)


# --- 1. prod's champions, copied ----------------------------------------------------------


def prod_registry(settings: Settings) -> Any | None:
    """A client of prod's registry for reading, after the access policy allowed the read.

    Returns None when prod has no tracking store yet (an embedded SQLite file that does not
    exist: opening it would create it inside prod).

    Raises:
        AccessDeniedError: The active environment may not read prod's registry.
    """
    from mlops_assets.models.guard import registry_reader

    uri = settings.mlflow_uri_of(PROD)
    check_read(settings.env, PROD, Resource.REGISTRY, f"tracking store {uri}")
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None
    return registry_reader(settings, PROD)


def _champion_version(client: Any, name: str) -> Any | None:
    """The champion of `name` in prod's registry; None when the model or alias does not exist.

    Any other failure (prod's registry unreachable, a read the policy refuses) is raised:
    taken for "no champion", it would let staging train its own model and pass the release
    without ever testing prod's.
    """
    from mlflow.exceptions import MlflowException

    from mlops_assets.models.lifecycle import CHAMPION

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def copy_champion(settings: Settings, reader: Any, model: str, source: Any) -> str:
    """Register prod's champion of a model as `staging.<model>` and make it staging's champion.

    The version's artifacts are downloaded from prod's artifact store and logged unchanged in
    a staging run carrying the source's parameters, metrics and tags (under `mlops.source_*`).

    Args:
        settings: Staging's settings.
        reader: A client of prod's registry (read-only use).
        model: The declared model's name.
        source: prod's champion model version.

    Returns:
        The staging version.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from mlops_assets.models.deploy import lifecycle
    from mlops_assets.models.guard import check_registry_write, registry_client
    from mlops_assets.models.lifecycle import VALIDATION_TAG, model_name

    prod_uri = settings.mlflow_uri_of(PROD)
    name = model_name(settings.env, model)
    run = reader.get_run(source.run_id) if source.run_id else None
    tags = dict(run.data.tags) if run else {}
    with tempfile.TemporaryDirectory(prefix="champion-") as folder:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=reader.get_model_version_download_uri(source.name, source.version),
            dst_path=folder,
            tracking_uri=prod_uri,
        )
        check_registry_write(settings, name)
        use_mlflow_store(settings.mlflow_uri)
        experiment = mlflow.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else mlflow.create_experiment(
                name, artifact_location=(settings.env_root / "mlartifacts").as_uri()
            )
        )
        source_tags = {
            SOURCE_MODEL_TAG: source.name,
            SOURCE_VERSION_TAG: str(source.version),
            SOURCE_RUN_TAG: source.run_id or "",
        }
        with mlflow.start_run(
            experiment_id=experiment_id, run_name=f"copy-of-{source.name}-{source.version}"
        ) as copy:
            if run:
                mlflow.log_params(run.data.params)
                mlflow.log_metrics(run.data.metrics)
            mlflow.set_tags(
                {
                    **{f"mlops.source.{k}": v for k, v in tags.items() if k.startswith("mlops.")},
                    **source_tags,
                    "mlops.env": settings.env,
                    "mlops.model": model,
                    # The hold-out start is a fact of the model, wherever it is registered.
                    **(
                        {"mlops.split_time": tags["mlops.split_time"]}
                        if "mlops.split_time" in tags
                        else {}
                    ),
                }
            )
        client = registry_client(settings)
        # The model is a logged model of staging's store: the same files, under an id of
        # staging's, which its MLmodel file names (MLflow resolves the model by it).
        logged = client.create_logged_model(
            experiment_id, name="model", source_run_id=copy.info.run_id, tags=source_tags
        )
        described = Model.load(str(Path(local) / "MLmodel"))
        described.model_id = logged.model_id
        described.save(str(Path(local) / "MLmodel"))
        client.log_model_artifacts(logged.model_id, local)
        client.finalize_logged_model(logged.model_id, "READY")
        try:
            client.get_registered_model(name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            client.create_registered_model(name)
        version = client.create_model_version(
            name,
            f"models:/{logged.model_id}",
            run_id=copy.info.run_id,
            tags={**source_tags, "mlops.stage": "None"},
            model_id=logged.model_id,
        )
    cycle = lifecycle(settings, model)
    prod_verdict = json.loads(source.tags.get(VALIDATION_TAG) or "{}")
    cycle.record_validation(
        str(version.version),
        True,
        {
            "mode": "copied",
            "copied_from": f"{source.name} version {source.version}",
            "prod_validation": prod_verdict,
        },
    )
    cycle.promote(
        str(version.version),
        WHO,
        f"copy of {source.name} version {source.version} (prod's champion), read-only",
    )
    return str(version.version)


def champion_gates(settings: Settings, model: str, version: str) -> list[Outcome]:
    """Whether the code under test can serve a copied champion: load, spec, inputs, signature.

    Returns:
        One outcome per gate (a load failure is one failed outcome).
    """
    from mlops_assets.models.deploy import lifecycle, load_candidate, serving_fields
    from mlops_assets.models.validation import input_check, signature_check, spec_check
    from mlops_assets.serving.model import load_serving_model

    cycle = lifecycle(settings, model)
    try:
        candidate = load_candidate(cycle, version, settings.mlflow_uri)
        use_mlflow_store(settings.mlflow_uri)
        load_serving_model(cycle.name, version)
    except Exception as error:  # noqa: BLE001 - any failure to load is the gate's failure
        return [
            Outcome("champion", f"{cycle.name} v{version} loads", False, _error(error)),
        ]
    checks = [
        spec_check(candidate.spec, serving_fields(model)),
        input_check(candidate.model, candidate.spec),
        signature_check(candidate.signature, candidate.spec),
    ]
    return [
        Outcome("champion", f"{cycle.name} v{version} loads", True, "loaded for serving"),
        *(
            Outcome("champion", f"{cycle.name} v{version} {c.name}", c.passed, c.detail)
            for c in checks
        ),
    ]


def copy_reference(settings: Settings, model: str, version: str, source: Any, reader: Any) -> str:
    """Build a copied champion's monitoring reference from prod's training set, into staging.

    The reference is the hold-out of the training set the version trained on: prod's
    training set table at the Delta version the source run names (a read of prod, checked
    by the catalog), scored by the version loaded with the code under test.

    Returns:
        What was written, in words.

    Raises:
        ValueError: The source run names no training set version.
        AccessDeniedError: Staging may not read prod's table.
    """
    from mlops_assets.defs.ml import keys
    from mlops_assets.defs.model_monitoring import tables
    from mlops_assets.defs.resources import LakehouseResource
    from mlops_assets.lakehouse.catalog import Catalog
    from mlops_assets.lakehouse.delta_io import scan_table
    from mlops_assets.models.declaration import declared, primary
    from mlops_assets.models.lifecycle import model_name
    from mlops_assets.monitoring.reference import (
        INPUTS_TAG,
        REFERENCE,
        SPLIT_TAG,
        ReferenceSource,
        build_reference,
        whole_day_start,
    )
    from mlops_assets.serving.model import load_serving_model

    declaration = declared(model)
    table = keys(declaration).table
    tags = reader.get_run(source.run_id).data.tags if source.run_id else {}
    inputs = json.loads(tags.get(INPUTS_TAG, "{}"))
    if str(table) not in inputs:
        raise ValueError(
            f"{source.name} version {source.version} records no version of {table} "
            f"(tag {INPUTS_TAG}): its reference cannot be built"
        )
    training_version = int(inputs[str(table)])
    catalog = Catalog(settings)
    uri = catalog.uri_for_read(table, PROD)
    training = scan_table(
        uri, version=training_version, storage_options=catalog.storage_options
    ).collect()
    use_mlflow_store(settings.mlflow_uri)
    loaded = load_serving_model(model_name(settings.env, model), version, alias="monitoring")
    reference = ReferenceSource(
        model_name=loaded.name,
        model_version=version,
        training_set_version=training_version,
        window_start=whole_day_start(tags.get(SPLIT_TAG)),
    )
    rows = build_reference(training, reference, loaded)
    target = REFERENCE if model == primary().name else tables(declaration)["reference"]
    store = LakehouseResource.from_settings(settings).store("monitoring")
    store.replace_partition(target, store.from_polars(rows), {"model_version": version})
    return f"{rows.height:,} rows of prod's {table} version {training_version} into {target}"


def copy_champions(settings: Settings, report: Report) -> dict[str, str | None]:
    """Step 1 for every declared model; staging's champion version per model (None: none)."""
    from mlops_assets.models.declaration import MODELS

    champions: dict[str, str | None] = {}
    reader = prod_registry(settings)
    if reader is None:
        report.add(
            Outcome(
                "copy",
                "prod registry",
                True,
                f"prod has no registry yet ({settings.mlflow_uri_of(PROD)}): staging trains "
                "its own first models",
                gate=False,
            )
        )
    for model in MODELS:
        prod_name = f"{PROD}.{model}"
        try:
            source = _champion_version(reader, prod_name) if reader is not None else None
        except Exception as error:  # noqa: BLE001 - the release fails, naming why
            champions[model] = None
            report.add(Outcome("copy", f"{prod_name} champion", False, _error(error)))
            continue
        if source is None:
            champions[model] = None
            if reader is not None:
                report.add(
                    Outcome(
                        "copy",
                        prod_name,
                        True,
                        "prod has no champion: staging trains its own first model "
                        "(the validation's absolute gates)",
                        gate=False,
                    )
                )
            continue
        try:
            version = copy_champion(settings, reader, model, source)
        except Exception as error:  # noqa: BLE001 - reported as the copy's failure
            champions[model] = None
            report.add(Outcome("copy", prod_name, False, _error(error)))
            continue
        champions[model] = version
        report.champions[model] = {
            "source": f"{source.name} version {source.version}",
            "source_run_id": source.run_id or "",
            "staging": f"{STAGING}.{model} version {version}",
        }
        report.add(
            Outcome(
                "copy",
                prod_name,
                True,
                f"version {source.version} (run {(source.run_id or '')[:8]}) registered as "
                f"{STAGING}.{model} version {version}, alias champion",
            )
        )
        gates = [report.add(o) for o in champion_gates(settings, model, version)]
        if not all(o.passed for o in gates):
            continue
        try:
            detail = copy_reference(settings, model, version, source, reader)
            report.add(Outcome("champion", f"{STAGING}.{model} v{version} reference", True, detail))
        except Exception as error:  # noqa: BLE001 - the reference cannot be built by this code
            report.add(
                Outcome("champion", f"{STAGING}.{model} v{version} reference", False, _error(error))
            )
    return champions


# --- 3. the daily loop --------------------------------------------------------------------


class Loop:
    """Runs jobs in-process on staging's Dagster instance and reports each run and check."""

    def __init__(self, settings: Settings, defs: Any, instance: Any, report: Report) -> None:
        self.settings = settings
        self.defs = defs
        self.instance = instance
        self.report = report

    def run(
        self,
        job: str,
        *,
        day: datetime.date | None = None,
        selection: Sequence[Any] | None = None,
        config: dict | None = None,
        label: str | None = None,
    ) -> Any:
        """Execute a job (or a selection of its assets); report the run and its checks."""
        import dagster as dg

        if selection is not None and job not in {j.name for j in self.defs.resolve_all_job_defs()}:
            ad_hoc = dg.define_asset_job(job, selection=list(selection))
            definition = dg.Definitions.merge(self.defs, dg.Definitions(jobs=[ad_hoc]))
            target = definition.resolve_job_def(job)
            selection = None
        else:
            target = self.defs.resolve_job_def(job)
        started = time.perf_counter()
        result = target.execute_in_process(
            instance=self.instance,
            partition_key=day.isoformat() if day else None,
            asset_selection=list(selection) if selection else None,
            raise_on_error=False,
            run_config={
                **(config or {}),
                "loggers": {"console": {"config": {"log_level": "ERROR"}}},
            },
            tags={"mlops/launched_by": WHO},
        )
        seconds = time.perf_counter() - started
        name = label or (f"{job} {day}" if day else job)
        failures = _step_failures(result)
        self.report.add(
            Outcome(
                "run",
                name,
                result.success,
                f"run {result.run_id[:8]} in {seconds:.1f} s"
                + (": " + "; ".join(failures) if failures else ""),
            )
        )
        for evaluation in result.get_asset_check_evaluations():
            if evaluation.passed:
                continue
            error = evaluation.severity.value == "ERROR"
            where = "/".join(evaluation.asset_key.path)
            self.report.add(
                Outcome(
                    "check",
                    f"{where} {evaluation.check_name}" + (f" {day}" if day else ""),
                    False,
                    f"severity {evaluation.severity.value}: "
                    f"{evaluation.description or _metadata_text(evaluation.metadata)}",
                    gate=error,
                )
            )
        return result


def _step_failures(result: Any) -> list[str]:
    found = []
    for event in result.all_events:
        if not event.is_step_failure:
            continue
        error = event.step_failure_data.error
        message = error.message.strip() if error else "failed"
        while error is not None and error.cause is not None and "Failure" not in error.cls_name:
            error = error.cause
            message = error.message.strip()
        found.append(f"{event.step_key}: {message.splitlines()[0][:400]}")
    return found


def _metadata_text(metadata: Any) -> str:
    return ", ".join(f"{k}={getattr(v, 'value', v)}" for k, v in list(metadata.items())[:6])


def _error(error: BaseException) -> str:
    return (
        f"{type(error).__name__}: {str(error).strip().splitlines()[0][:400] if str(error) else ''}"
    )


def train_challengers(
    loop: Loop,
    days: list[datetime.date],
    label_days: int,
    champions: dict[str, str | None],
    gates: dict[str, float] | None = None,
) -> None:
    """Train a challenger of every declared model with the code under test; validate it.

    Validation runs in `dry_run` mode (the verdict is recorded, nothing blocks) so that every
    check's outcome is known; the release gates are judged here. A model without a champion
    promotes its challenger in staging once the gates passed, so the day's scoring has one.
    """
    from mlops_assets.defs.ml import keys
    from mlops_assets.models.declaration import MODELS

    cutoff = datetime.datetime.combine(
        days[-1] + datetime.timedelta(days=1), datetime.time(), datetime.UTC
    )
    report = loop.report
    gates = gates or {}
    for model, declaration in MODELS.items():
        k = keys(declaration)
        config = {
            "ops": {
                k.node(k.training_set): {
                    "config": {
                        "label_cutoff": cutoff.isoformat(),
                        "days": len(days),
                        "label_maturity_days": label_days,
                    }
                },
                k.node(k.validation): {"config": {"mode": "dry_run", **gates}},
            }
        }
        result = loop.run(
            f"release_challenger_{model}",
            selection=[k.training_set, k.trained, k.validation],
            config=config,
            label=f"challenger of {model} (train, validate)",
        )
        version = None
        evaluations = [
            e for e in result.get_asset_check_evaluations() if e.check_name == "passes_validation"
        ]
        if not evaluations:
            report.add(
                Outcome("challenger", model, False, "no validation verdict (see the run above)")
            )
            continue
        metadata = evaluations[0].metadata
        version = str(metadata["version"].value)
        gates_passed = True
        for name, value in metadata.items():
            check = getattr(value, "value", None)
            if not isinstance(check, dict) or "passed" not in check:
                continue
            gate = name not in REPORTED_ONLY
            gates_passed &= bool(check["passed"]) or not gate
            numbers = (
                f" (threshold {check['threshold']:.4g})"
                if isinstance(check.get("threshold"), int | float)
                else ""
            )
            report.add(
                Outcome(
                    "challenger",
                    f"{STAGING}.{model} v{version} {name}",
                    bool(check["passed"]),
                    f"{check['detail']}{numbers}",
                    gate=gate,
                )
            )
        if champions.get(model) is None and gates_passed and result.success:
            promoted = loop.run(
                f"release_first_champion_{model}",
                selection=[k.champion],
                config={"ops": {k.node(k.champion): {"config": {"version": version}}}},
                label=f"first champion of {model} in staging (version {version})",
            )
            if promoted.success:
                champions[model] = version


def serve_days(
    loop: Loop, days: list[datetime.date], label_days: int, champions: dict[str, str | None]
) -> None:
    """The serve runs of the last days, then the performance of the first of them.

    A serve run publishes the online store, scores the day with every champion, and measures
    drift and profiles; the first served day's labels have matured by the last one.
    """
    from mlops_assets.defs.automation import OTHER_SERVE, PERFORMANCE, SERVE_DAY
    from mlops_assets.models.declaration import primary

    if champions.get(primary().name) is None:
        loop.report.add(
            Outcome("run", "serve_and_monitor", False, f"no champion of {primary().name} to serve")
        )
        return
    selection = [
        *SERVE_DAY,
        *(key for name, keys in OTHER_SERVE.items() if champions.get(name) for key in keys),
    ]
    served = days[-(label_days + 1) :]
    for day in served:
        loop.run("serve_and_monitor", day=day, selection=selection)
    matured = served[-1] - datetime.timedelta(days=label_days)
    if matured in served:
        loop.run(
            "serve_and_monitor",
            day=matured,
            selection=[PERFORMANCE],
            label=f"performance {matured}",
        )


# --- the stage ------------------------------------------------------------------------------


def reset_staging(settings: Settings) -> list[str]:
    """Remove staging's lake, landing files, online store, registry and instance state.

    Only what is embedded under staging's root (a tracking server or PostgreSQL instance is
    left alone); the release reports stay.

    Returns:
        The removed paths.
    """
    root = settings.env_root
    if settings.env != STAGING or root.name != STAGING:
        raise ReleaseError(f"refusing to reset {root}: not staging's root")
    names = list(STAGING_STATE)
    if not settings.dagster_postgres_url:
        names.append("dagster")
    embedded_mlflow = settings.mlflow_uri == f"sqlite:///{root / 'mlflow.db'}"
    removed = []
    for name in names:
        if name in ("mlflow.db", "mlartifacts") and not embedded_mlflow:
            continue
        if name == "lake" and settings.lake_on_object_store:
            continue
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def run_stage(settings: Settings, args: argparse.Namespace) -> Report:
    """The staging stage (see the module docstring); the report with its verdict.

    Raises:
        ReleaseError: The active environment is not staging, or an option is out of range.
    """
    import dagster as dg

    from mlops_assets.definitions import build_definitions
    from mlops_assets.defs.monitoring import MonitoringResource
    from mlops_assets.defs.partitions import event_days_touched
    from mlops_assets.defs.runner import prepare_dagster_home
    from mlops_assets.models.registry import git_commit
    from mlops_assets.simulate import Scenario, simulate

    if settings.env != STAGING:
        raise ReleaseError(
            f"the staging stage runs in the staging environment only; MLOPS_ENV is "
            f"{settings.env!r}: run it with MLOPS_ENV=staging"
        )
    if args.days < args.label_days + 2:
        raise ReleaseError(
            f"--days {args.days} is too few: training needs days with mature labels, at least "
            f"--label-days + 2 = {args.label_days + 2}"
        )
    if args.per_day < 200:
        raise ReleaseError(f"--per-day {args.per_day} is too few transactions (at least 200)")
    started = time.perf_counter()
    options = {
        "days": args.days,
        "per_day": args.per_day,
        "seed": args.seed,
        "label_days": args.label_days,
        "reset": not args.keep,
        "min_pr_auc": args.min_pr_auc,
        "min_recall_at_1pct_fpr": args.min_recall_at_1pct_fpr,
    }
    report = Report(
        started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        code_version=git_commit(),
        options=options,
    )
    say(f"environment {settings.env}: {settings.env_root}; code {report.code_version[:12]}")
    if not args.keep:
        removed = reset_staging(settings)
        say(f"staging reset: removed {', '.join(removed) or 'nothing (it was empty)'}")
    prepare_dagster_home(settings)
    import logging

    logging.getLogger("mlflow").setLevel(logging.ERROR)

    # 1. prod's champions
    champions = copy_champions(settings, report)

    # 2. the feed
    scenario = Scenario.demo(
        days=args.days,
        seed=args.seed,
        start_date=settings.start_date,
        label_delay_days=(1, args.label_days),
        transactions_per_day=args.per_day,
    )
    manifests = simulate(scenario, settings.landing_root)
    report.add(
        Outcome(
            "feed",
            "simulated landing days",
            True,
            f"{len(manifests)} days of ~{args.per_day:,} transactions (dirty data, late events, "
            f"chargebacks 1 to {args.label_days} days later), seed {args.seed}",
        )
    )

    # 3. the daily loop
    days = scenario.dates
    defs = build_definitions(
        settings, monitoring=MonitoringResource(label_maturity_days=args.label_days)
    )
    with dg.DagsterInstance.get() as instance:
        loop = Loop(settings, defs, instance, report)
        for day in days:
            loop.run("medallion_daily", day=day)
        # Every event day once, oldest first, after all landing days: what the refreshes of
        # each landing day leave behind.
        touched = sorted({d for day in days for d in event_days_touched(day, days[0])})
        for day in touched:
            loop.run("refresh_event_days", day=day)
        gates = {
            name: value
            for name, value in (
                ("min_pr_auc", args.min_pr_auc),
                ("min_recall_at_1pct_fpr", args.min_recall_at_1pct_fpr),
            )
            if value is not None
        }
        train_challengers(loop, days, args.label_days, champions, gates)
        serve_days(loop, days, args.label_days, champions)

    # 4. the verdict
    report.seconds = time.perf_counter() - started
    return report


def seed_prod(settings: Settings, *, days: int, per_day: int, seed: int, label_days: int) -> int:
    """A small prod with a champion of every declared model, for a release check on a clone.

    Simulated clean days go through the daily loop, then each model is trained, validated and
    promoted.

    Refuses anything but an empty prod: it never writes into a prod that exists.

    Returns:
        The exit code: 0 when the fraud detector got a champion. Another declared model that
        fails its gates on so small a feed is reported and left without one: the staging stage
        then trains that model in staging, as it does for any model prod has no champion of.

    Raises:
        ReleaseError: The active environment is not prod, or prod already holds data.
    """
    import dagster as dg

    from mlops_assets.definitions import build_definitions
    from mlops_assets.defs.monitoring import MonitoringResource
    from mlops_assets.defs.runner import prepare_dagster_home
    from mlops_assets.demo import Demo, DemoFailed
    from mlops_assets.models.declaration import MODELS
    from mlops_assets.models.deploy import DEFAULT_MODEL
    from mlops_assets.simulate import Scenario, simulate

    if settings.env != PROD:
        raise ReleaseError(
            f"seed-prod writes a small prod and runs with MLOPS_ENV=prod only; MLOPS_ENV is "
            f"{settings.env!r}"
        )
    held = sorted(p.name for p in settings.env_root.iterdir()) if settings.env_root.exists() else []
    if held or settings.mlflow_uri != f"sqlite:///{settings.env_root / 'mlflow.db'}":
        raise ReleaseError(
            f"seed-prod writes only an empty, embedded prod; {settings.env_root} holds "
            f"{', '.join(held) or 'nothing'} and the tracking store is {settings.mlflow_uri}"
        )
    prepare_dagster_home(settings)
    scenario = Scenario.clean(
        days=days,
        seed=seed,
        start_date=settings.start_date,
        label_delay_days=(1, label_days),
        transactions_per_day=per_day,
    )
    simulate(scenario, settings.landing_root)
    defs = build_definitions(
        settings, monitoring=MonitoringResource(label_maturity_days=label_days)
    )
    with dg.DagsterInstance.get() as instance:
        demo = Demo(settings, defs, instance, label_days=label_days)
        try:
            for day in scenario.dates:
                demo.ingest(day)
        except DemoFailed as failure:
            print(f"mlops release seed-prod: {failure}", file=sys.stderr)
            return 1
        for model in MODELS:
            # Only the primary model must have a champion: on so small a feed another
            # declared model may fail its gates, and prod then has no champion of it.
            try:
                demo.train(scenario.dates[-1], days, model=model)
            except DemoFailed as failure:
                print(f"mlops release seed-prod: {failure}", file=sys.stderr)
                if model == DEFAULT_MODEL:
                    return 1
    return 0


def cmd_seed_prod(args: argparse.Namespace) -> int:
    """`mlops release seed-prod`: a small prod with champions in an empty data root."""
    try:
        return seed_prod(
            load_settings(),
            days=args.days,
            per_day=args.per_day,
            seed=args.seed,
            label_days=args.label_days,
        )
    except ReleaseError as error:
        print(f"mlops release seed-prod: {error}", file=sys.stderr)
        return 2


def write_verdict(settings: Settings, report: Report) -> Path:
    """The report as JSON under `data/staging/release/<time>.json`; its path."""
    folder = settings.env_root / "release"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = folder / f"{stamp}.json"
    path.write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def cmd_staging(args: argparse.Namespace) -> int:
    """`mlops release staging`: 0 when the release passes, 1 when it fails, 2 when refused."""
    settings = load_settings()
    try:
        report = run_stage(settings, args)
    except ReleaseError as error:
        print(f"mlops release staging: {error}", file=sys.stderr)
        return 2
    path = write_verdict(settings, report)
    if report.passed:
        say(f"PASSED in {report.seconds:.1f} s; verdict {path}")
        return 0
    say(f"FAILED in {report.seconds:.1f} s: {len(report.failures)} failures; verdict {path}")
    for failure in report.failures:
        say(f"  failure: {failure.step}: {failure.name}: {failure.detail}")
    return 1


def _feed_arguments(parser: argparse.ArgumentParser, *, days: int, per_day: int, seed: int) -> None:
    """The simulated feed's options, with a command's defaults."""
    parser.add_argument("--days", type=int, default=days, help="landing days to simulate")
    parser.add_argument("--per-day", type=int, default=per_day, help="transactions per day")
    parser.add_argument("--seed", type=int, default=seed, help="simulator seed")
    parser.add_argument(
        "--label-days",
        type=int,
        default=2,
        help="chargebacks arrive 1 to this many days after the transaction",
    )


def add_commands(stages: argparse._SubParsersAction) -> None:
    """Add `mlops release staging` to the `mlops release` parser."""
    staging = stages.add_parser(
        "staging",
        help="the integration stage: the daily loop on staging against prod's champion",
        description=(
            "Copy prod's champions into staging (read-only on prod's side), land a small "
            "seeded feed, run the daily loop in-process on staging's Dagster instance, and "
            "fail (exit 1) when a run, an ERROR check or a release gate fails. Runs with "
            "MLOPS_ENV=staging only; the verdict is written to data/staging/release/."
        ),
    )
    _feed_arguments(staging, days=5, per_day=1500, seed=7)
    staging.add_argument(
        "--min-pr-auc",
        type=float,
        default=None,
        help="the challengers' PR-AUC gate (default: each model's declared gate)",
    )
    staging.add_argument(
        "--min-recall-at-1pct-fpr",
        type=float,
        default=None,
        help="the challengers' recall gate at 1%% FPR (default: each model's declared gate)",
    )
    staging.add_argument(
        "--keep",
        action="store_true",
        help="keep staging's earlier lake, registry and instance (default: start from empty)",
    )
    staging.set_defaults(func=cmd_staging)
    seed = stages.add_parser(
        "seed-prod",
        help="a small prod with a champion per model, in an empty data root (release checks)",
        description=(
            "Simulate a few clean days in an empty prod (MLOPS_ENV=prod, a fresh "
            "MLOPS_DATA_ROOT), build its lake and train, validate and promote a champion of "
            "every declared model, so that `mlops release staging` has champions to copy. "
            "Refuses a prod that holds anything."
        ),
    )
    _feed_arguments(seed, days=8, per_day=2000, seed=11)
    seed.set_defaults(func=cmd_seed_prod)
