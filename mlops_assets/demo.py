"""The demo's story: a lake, a champion, predictions, drift, and the loop closing by itself.

Days arrive one at a time on a simulated clock. The first ones are normal: they build the lake,
the features and the online store, and train, validate and promote a champion. The champion
then scores each day (batch), a landed file as it arrives (stream) and a burst of REST
requests (online), all into the inference log. From then on each day is monitored (drift
against the champion's training reference, profiles, performance as chargebacks mature) and
the drift sensor is evaluated; with drift switched on, the sensor asks for retraining once the
drift episode has enough labelled days, and the run trains, validates and promotes a new
champion. Without drift, nothing retrains.

The runs are the schedules' and sensors' own jobs, executed in-process on the environment's
Dagster instance (each one is in the UI afterwards), sized to what the story needs: the normal
days land first and each event day is then refreshed once (what the per-day refreshes leave
behind), and from then on a day's gold, features, scoring by every champion and monitoring are
one run. Any step that fails ends the demo with exit code 1 (`DemoFailed`).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import polars as pl

from mlops_assets.defs.partitions import event_days_touched
from mlops_assets.settings import Settings

# Console logs of the demo's runs: warnings and errors only (the story prints its own lines).
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# A landing day's own tables: what `medallion_daily` builds, before the event days' refresh.
LANDING_GROUPS = ("bronze", "silver", "quarantine")
# An event day's refresh (`refresh_event_days`): its gold and feature rows.
REFRESH_GROUPS = ("gold", "features")


class DemoFailed(Exception):
    """A step of the story failed; the message says which and where to look."""


@dataclass
class Story:
    """What the demo did, for its closing summary and for tests."""

    champion_versions: list[str] = field(default_factory=list)
    retrain_requests: list[dict[str, Any]] = field(default_factory=list)
    windows: list[dict[str, Any]] = field(default_factory=list)
    online_answers: int = 0
    online_requests: int = 0
    stream_predictions: int = 0
    report: str | None = None
    other_champions: dict[str, str] = field(default_factory=dict)
    other_online_answers: dict[str, int] = field(default_factory=dict)
    runs: int = 0


_CLOCK = {"started": time.perf_counter()}


def say(text: str) -> None:
    """One line of the story, with the time since the demo started."""
    print(f"[demo {time.perf_counter() - _CLOCK['started']:6.1f} s] {text}", flush=True)


def exit_code(story: Callable[[], None]) -> int:
    """Run a story (or one of its steps): 0 when it ran through, 1 when a step failed."""
    try:
        story()
    except DemoFailed as failure:
        say(f"FAILED: {failure}")
        return 1
    return 0


class Demo:
    """Runs the story on the environment's lake, Dagster instance and registry."""

    def __init__(
        self,
        settings: Settings,
        defs: dg.Definitions,
        instance: dg.DagsterInstance,
        *,
        label_days: int,
    ) -> None:
        self.settings = settings
        self.defs = defs
        self.instance = instance
        self.label_days = label_days
        self.story = Story()
        self._sensor_cursor: str | None = None
        self._scored: set[datetime.date] = set()
        self._jobs: dict[str, dg.JobDefinition] = {}

    # --- running things -------------------------------------------------------------------

    def _job(self, name: str, selection: dg.AssetSelection) -> dg.JobDefinition:
        """An asset job over `selection`, resolved once per demo (resolving merges the defs)."""
        if name not in self._jobs:
            job = dg.define_asset_job(name, selection=selection)
            merged = dg.Definitions.merge(self.defs, dg.Definitions(jobs=[job]))
            self._jobs[name] = merged.resolve_job_def(name)
        return self._jobs[name]

    def materialize(
        self,
        selection: Sequence[Sequence[str]] | dg.AssetSelection,
        day: datetime.date | None = None,
        run_config: dict | None = None,
        tags: dict | None = None,
        name: str | None = None,
    ) -> dg.ExecuteInProcessResult:
        """Materialize assets in-process in one run, failures in the result.

        Args:
            selection: Asset keys (as paths), or an asset selection.
            day: The partition (every selected asset partitioned by day), None for none.
            run_config: Ops' config.
            tags: The run's tags (beside `mlops/launched_by`).
            name: The job's name in the UI (default: from the keys).
        """
        if not isinstance(selection, dg.AssetSelection):
            name = name or "demo_" + "_".join("_".join(k) for k in selection)[:60]
            selection = dg.AssetSelection.assets(*(dg.AssetKey(list(k)) for k in selection))
        if name is None:
            raise ValueError("materialize: an asset selection needs a job name")
        self.story.runs += 1
        return self._job(name, selection).execute_in_process(
            instance=self.instance,
            partition_key=day.isoformat() if day else None,
            raise_on_error=False,
            run_config={**(run_config or {}), **QUIET},
            tags={"mlops/launched_by": "mlops demo", **(tags or {})},
        )

    def run_job(self, name: str, day: datetime.date | None = None, **kwargs):
        """Execute one of the project's jobs in-process, failures in the result."""
        self.story.runs += 1
        kwargs.setdefault("run_config", QUIET)
        return self.defs.resolve_job_def(name).execute_in_process(
            instance=self.instance,
            partition_key=day.isoformat() if day else None,
            raise_on_error=False,
            **kwargs,
        )

    @staticmethod
    def require(result: dg.ExecuteInProcessResult, what: str) -> dg.ExecuteInProcessResult:
        """The result of a successful run.

        Raises:
            DemoFailed: The run failed; the message names its failed steps and errors.
        """
        if result.success:
            return result
        failures = [
            f"{event.step_key}: {event.event_specific_data.error.message.strip()[:400]}"
            for event in result.all_events
            if event.is_step_failure and event.event_specific_data is not None
        ]
        raise DemoFailed(
            f"{what} failed (run {result.run_id[:8]}; `make ui` shows its logs)"
            + ("".join(f"\n  {line}" for line in failures) if failures else "")
        )

    # --- ingestion ------------------------------------------------------------------------

    def land(self, day: datetime.date) -> None:
        """A landing day into bronze, silver and quarantine (`medallion_daily` without gold).

        Gold is refreshed per event day after it (`refresh`), as the refresh schedule does.
        """
        selection = dg.AssetSelection.groups(*LANDING_GROUPS)
        self.require(self.materialize(selection, day, name="demo_landing_day"), f"landing {day}")

    def refresh(self, day: datetime.date) -> None:
        """An event day's gold and feature rows (`refresh_event_days`)."""
        self.require(self.run_job("refresh_event_days", day), f"the refresh of event day {day}")

    def publish_online(self) -> None:
        """The latest feature rows per key into the online store (`online_publish`)."""
        self.require(self.run_job("online_publish"), "the online store's publication")

    def ingest(self, day: datetime.date) -> bool:
        """What the schedules run for a landing day: the day, its event days, the online store.

        Returns:
            True (a failure raises).

        Raises:
            DemoFailed: A run failed.
        """
        self.land(day)
        for touched in event_days_touched(day, self.settings.start_date):
            self.refresh(touched)
        self.publish_online()
        return True

    def ingest_days(self, days: Sequence[datetime.date], total: int) -> None:
        """Land days, then refresh every event day they touched once, oldest first.

        The same tables as a refresh of the touched days after each landing day (the last
        refresh of an event day reads every landing day), in fewer runs; then the online store.
        """
        for index, day in enumerate(days, start=1):
            step = time.perf_counter()
            self.land(day)
            say(
                f"day {index}/{total} {day}: bronze, silver, quarantine "
                f"({time.perf_counter() - step:.1f} s)"
            )
        step = time.perf_counter()
        first = self.settings.start_date
        touched = sorted({d for day in days for d in event_days_touched(day, first)})
        for day in touched:
            self.refresh(day)
        say(
            f"gold and features of {len(touched)} event days (late events included) "
            f"({time.perf_counter() - step:.1f} s)"
        )
        step = time.perf_counter()
        self.publish_online()
        say(f"online store published ({time.perf_counter() - step:.1f} s)")

    # --- the story's steps ----------------------------------------------------------------

    def train(self, last_day: datetime.date, days: int, model: str = "fraud_detector") -> bool:
        """Train, validate and promote a declared model on the labels known at `last_day`'s end.

        Returns:
            True (a failure raises).

        Raises:
            DemoFailed: The run failed or promoted no champion.
        """
        from mlops_assets.defs.ml import keys
        from mlops_assets.models.declaration import declared

        k = keys(declared(model))
        cutoff = datetime.datetime.combine(
            last_day + datetime.timedelta(days=1), datetime.time(), datetime.UTC
        )
        config = {
            "ops": {
                k.node(k.training_set): {
                    "config": {
                        "label_cutoff": cutoff.isoformat(),
                        "days": days,
                        "label_maturity_days": self.label_days,
                    }
                }
            },
            **QUIET,
        }
        result = self.run_job(k.job("retrain_and_deploy"), run_config=config)
        if not self.report_training(result, model):
            raise DemoFailed(
                f"training {model} promoted no champion: see the run in the UI and "
                f"`mlops model status --model {model}`"
            )
        return True

    def report_training(
        self, result: dg.ExecuteInProcessResult, model: str = "fraud_detector"
    ) -> bool:
        """Print what a `retrain_and_deploy` run did; whether it promoted a champion."""
        from mlops_assets.defs.ml import keys
        from mlops_assets.models.declaration import declared

        k = keys(declared(model))
        nodes = {
            "training_set": k.node(k.training_set),
            "trained": k.node(k.trained),
            "champion": k.node(k.champion),
        }
        built = {role: _own(result, n) for role, n in nodes.items()}
        if built["training_set"]:
            meta = built["training_set"][0].metadata
            say(
                f"{model} training set: {meta['events'].value:,} events of "
                f"{meta['window'].value} with mature labels, {meta['fraud_events'].value:,} fraud"
            )
        if built["trained"]:
            meta = built["trained"][0].metadata
            say(
                f"trained {meta['model'].value} version {meta['version'].value}: hold-out PR-AUC "
                f"{meta['pr_auc'].value:.3f}, recall at 1% FPR "
                f"{meta['recall_at_1pct_fpr'].value:.3f} (MLflow run "
                f"{meta['mlflow_run_id'].value[:8]})"
            )
        for evaluation in result.get_asset_check_evaluations():
            extra = ""
            if "champion_pr_auc" in evaluation.metadata:
                extra = (
                    f"; on the same hold-out: challenger PR-AUC "
                    f"{evaluation.metadata['challenger_pr_auc'].value:.3f}, champion "
                    f"{evaluation.metadata['champion_pr_auc'].value:.3f}"
                )
            say(f"validation: {evaluation.description}{extra}")
        if not result.success or not built["champion"]:
            say("no promotion: see the run in the UI and `mlops model status`")
            return False
        meta = built["champion"][0].metadata
        if model == "fraud_detector":
            self.story.champion_versions.append(str(meta["champion"].value))
        else:
            self.story.other_champions[model] = str(meta["champion"].value)
        previous = meta["previous"].value
        say(
            f"promoted {meta['model'].value} version {meta['champion'].value} to champion"
            + (f" (version {previous} kept as previous)" if previous != "none" else "")
        )
        return True

    def start_load_by_alias(self) -> Callable[[], None]:
        """A clean Python process loads the champion by alias and scores, in the background.

        Returns:
            A function that waits for the process and prints what it did.

        Raises:
            DemoFailed: (from the returned function) the process could not load or score.
        """
        script = (
            "import sys, mlflow, polars as pl\n"
            "from mlops_assets.features.spec import FRAUD_SPEC\n"
            "from mlops_assets.models.training import model_inputs\n"
            "mlflow.set_tracking_uri(sys.argv[1])\n"
            "model = mlflow.pyfunc.load_model(sys.argv[2])\n"
            "rows = pl.read_delta(sys.argv[3]).tail(1000)\n"
            "scores = model.predict(model_inputs(rows, FRAUD_SPEC))[:, 1]\n"
            "print(f'{len(scores)} {scores.max():.3f}')\n"
        )
        uri = "models:/" + f"{self.settings.env}.fraud_detector@champion"
        started = time.perf_counter()
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                script,
                self.settings.mlflow_uri,
                uri,
                str(self.settings.lake_root / "ml" / "training_set"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # OpenMP's threads as in the demo's own process (see `run`).
            env={"OMP_NUM_THREADS": "1", **os.environ},
        )

        def finish() -> None:
            out, err = process.communicate(timeout=600)
            if process.returncode != 0:
                raise DemoFailed(f"a clean process could not load the champion:\n{err[-2000:]}")
            count, top = out.split()[-2:]
            say(
                f"a clean Python process loaded {uri} and scored {count} events (highest score "
                f"{top}) in {time.perf_counter() - started:.1f} s"
            )

        return finish

    def day_selection(
        self, refresh: bool = False, report: bool = False
    ) -> tuple[str, dg.AssetSelection]:
        """A day's serve run: every champion's batch scoring, its monitoring, the summary.

        Args:
            refresh: Also the day's gold and feature rows, before scoring (a new landing day).
            report: Also the day's Evidently drift report.
        """
        from mlops_assets.defs.ml import keys
        from mlops_assets.models.declaration import declared

        names = ["fraud_detector", *self.story.other_champions]
        selected = [
            ["serving", "batch_predictions"],
            ["monitoring", "drift_metrics"],
            ["monitoring", "profiles"],
            ["monitoring", "performance"],
            ["gold", "prediction_summary"],
        ]
        for model in names[1:]:
            selected += [
                list(keys(declared(model)).batch_predictions.path),
                ["monitoring", model, "drift_metrics"],
                ["monitoring", model, "performance"],
            ]
        if report:
            selected.append(["monitoring", "drift_report"])
        selection = dg.AssetSelection.assets(*(dg.AssetKey(k) for k in selected))
        if refresh:
            selection = selection | dg.AssetSelection.groups(*REFRESH_GROUPS)
        name = "demo_serve_day" + ("_refresh" if refresh else "") + ("_report" if report else "")
        return name, selection

    def score_and_monitor(
        self, day: datetime.date, refresh: bool = False, report: bool = False
    ) -> bool:
        """A day scored by every champion and monitored, in one run; performance as labels mature.

        Args:
            day: The day.
            refresh: Also rebuild the day's gold and feature rows first (a new landing day).
            report: Also the day's Evidently drift report.

        Returns:
            True (a failure raises).

        Raises:
            DemoFailed: A run failed.
        """
        step = time.perf_counter()
        name, selection = self.day_selection(refresh, report)
        served = self.require(
            self.materialize(selection, day, name=name), f"scoring and monitoring {day}"
        )
        self._scored.add(day)
        batch = _own(served, "serving__batch_predictions")[0].metadata
        drift = _own(served, "monitoring__drift_metrics")[0].metadata
        # The day whose labels just matured: its performance with every label known.
        pr_auc = None
        mature = day - datetime.timedelta(days=self.label_days)
        if mature in self._scored:
            result = self.require(
                self.materialize([["monitoring", "performance"]], mature),
                f"the performance of {mature}",
            )
            meta = _own(result, "monitoring__performance")[0].metadata
            pr_auc = meta["pr_auc"].value if "pr_auc" in meta else None
        window = {
            "day": day.isoformat(),
            "model_version": drift["model_version"].value,
            "rows": batch["dagster/partition_row_count"].value,
            "flagged": batch["flagged"].value,
            "drifted_share": drift["drifted_share"].value,
            "prediction_drift": drift["prediction_drift"].value,
            "drifted": drift["drifted_features"].value,
        }
        self.story.windows.append(window)
        perf = (
            f", PR-AUC of {mature} (labels now mature) {pr_auc:.3f}" if pr_auc is not None else ""
        )
        say(
            f"{day}: version {window['model_version']} scored {window['rows']:,} transactions "
            f"({window['flagged']:,} flagged); drifted features {window['drifted_share']:.0%}, "
            f"prediction drift {window['prediction_drift']:.3f}{perf} "
            f"({time.perf_counter() - step:.1f} s)"
        )
        self._report_other_models(served, day)
        if report:
            found = _own(served, "monitoring__drift_report")
            if not found:
                raise DemoFailed(f"the drift report of {day} wrote no report")
            self.story.report = found[0].metadata["path"].value
            say(f"Evidently drift report of {day}: {self.story.report}")
        return True

    def _report_other_models(self, served: dg.ExecuteInProcessResult, day: datetime.date) -> None:
        """The lines of every other champion's scoring and monitoring of a day."""
        from mlops_assets.defs.ml import keys
        from mlops_assets.models.declaration import declared

        for model in self.story.other_champions:
            k = keys(declared(model))
            meta = _own(served, k.node(k.batch_predictions))[0].metadata
            found = _own(served, f"monitoring__{model}__drift_metrics")
            drift = f"; drifted features {found[0].metadata['drifted_share'].value:.0%}"
            say(
                f"{day}: {meta['model'].value} version {meta['model_version'].value} scored "
                f"{meta['dagster/partition_row_count'].value:,} transactions "
                f"({meta['flagged'].value:,} flagged) into serving/inference_log"
                + (drift if found else "")
            )

    def drift_report(self, day: datetime.date) -> None:
        """The Evidently drift report of a scored day, on its own run.

        Raises:
            DemoFailed: The run failed.
        """
        result = self.require(
            self.materialize([["monitoring", "drift_report"]], day), f"the drift report of {day}"
        )
        self.story.report = _own(result, "monitoring__drift_report")[0].metadata["path"].value
        say(f"Evidently drift report of {day}: {self.story.report}")

    def tick(self) -> bool:
        """Evaluate the drift sensor; run the retraining it asks for. Whether it asked.

        Raises:
            DemoFailed: The requested retraining failed or promoted no champion.
        """
        from mlops_assets.defs.monitoring import MonitoringResource

        sensor = self.defs.resolve_sensor_def("drift_monitor")
        resources = {
            "lakehouse": _resource(self.defs, "lakehouse"),
            "monitoring": _resource(self.defs, "monitoring") or MonitoringResource(),
        }
        # Opened as a context manager: resources may hold what they opened until it closes.
        with dg.build_sensor_context(
            instance=self.instance, cursor=self._sensor_cursor, resources=resources
        ) as context:
            result = sensor(context)
        self._sensor_cursor = getattr(result, "cursor", None) or self._sensor_cursor
        requests = list(getattr(result, "run_requests", None) or [])
        if not requests:
            reason = getattr(getattr(result, "skip_reason", None), "skip_message", None)
            if reason is None and isinstance(result, dg.SkipReason):
                reason = result.skip_message
            say(f"drift sensor: no retraining ({reason})")
            return False
        request = requests[0]
        say(f"drift sensor: retraining requested ({request.tags['mlops/reason']})")
        self.story.retrain_requests.append(
            {"run_key": request.run_key, "reason": request.tags["mlops/reason"]}
        )
        run_config = {**request.run_config, **QUIET}
        started = time.perf_counter()
        promoted = self.report_training(
            self.run_job("retrain_and_deploy", run_config=run_config, tags=request.tags)
        )
        seconds = time.perf_counter() - started
        self.story.retrain_requests[-1].update(seconds=seconds, promoted=promoted)
        if not promoted:
            raise DemoFailed(
                f"the retraining the drift sensor requested ({request.run_key}) promoted no "
                "champion: see the run in the UI and `mlops model status`"
            )
        say(
            f"the new champion is in the registry {seconds:.1f} s after the sensor's request; "
            "a running `mlops serve` swaps to it at its next alias poll (2 s)"
        )
        return True

    def stream_one_file(self, day: datetime.date) -> None:
        """Score the day's landed transactions files through the streaming path.

        In a deployment the `landed_transactions` sensor requests these runs as files land;
        the demo's landing files were all simulated up front, so it requests them itself.

        Raises:
            DemoFailed: The day has no landed file, or a file's run failed.
        """
        root = self.settings.landing_root
        files = sorted((root / "transactions" / day.isoformat()).glob("*.csv"))
        if not files:
            raise DemoFailed(f"stream: no landed transactions file for {day} under {root}")
        for path in files:
            name = path.relative_to(root).as_posix()
            config = {"ops": {"serving__stream_predictions": {"config": {"file": name}}}}
            started = time.perf_counter()
            done = self.require(
                self.materialize([["serving", "stream_predictions"]], run_config=config),
                f"stream: scoring {name}",
            )
            meta = _own(done, "serving__stream_predictions")[0].metadata
            if "skipped" in meta and meta["skipped"].value:
                say(f"stream: {name} was scored when it first landed (checkpoint)")
                continue
            self.story.stream_predictions += meta["scored"].value
            say(
                f"stream: {name} scored as it landed: {meta['scored'].value:,} predictions, "
                f"{meta['errors'].value} unreadable lines logged as errors, "
                f"{time.perf_counter() - started:.1f} s"
            )

    def online_burst(self, day: datetime.date, count: int = 200, wait: float = 60) -> None:
        """Send REST requests for the day's transactions to an in-process server.

        Args:
            day: The landing day whose silver transactions are sent.
            count: Requests to the fraud detector (and as many to every other champion).
            wait: Seconds the server waits for the champions to load.

        Raises:
            DemoFailed: The day has no transactions, or a request was not answered.
        """
        from mlops_assets.serving.app import ScoringServer, build_service

        silver = pl.scan_delta(str(self.settings.lake_root / "silver" / "transactions"))
        rows = silver.filter(pl.col("landing_date") == day).head(count).collect()
        if not rows.height:
            raise DemoFailed(f"online: silver/transactions holds no transaction landed on {day}")
        service = build_service(self.settings, wait_for_model=wait, flush_interval_ms=200)
        server = ScoringServer(("127.0.0.1", 0), service).start()
        started = time.perf_counter()
        try:
            answered, refused = _send(server.url + "/v1/score", rows, _FRAUD_FIELDS)
            seconds = time.perf_counter() - started
            others = self._other_models_online(server, rows)
            ready = service.ready().body
        finally:
            server.stop()
        self.story.online_answers = answered
        self.story.online_requests += rows.height
        say(
            f"online: {answered} of {rows.height} REST requests answered in {seconds:.1f} s; "
            "every one is a row of serving/inference_log"
        )
        if answered != rows.height:
            raise DemoFailed(f"online: {rows.height - answered} REST requests refused: {refused}")
        for status in ready["models"].values():
            path = (
                f"fallback: {status['fallback_reason']}"
                if status["scorer"] == "reference"
                else "compiled fast path"
            )
            say(
                f"readiness: {status['model']} version {status['serving_version']} served by "
                f"the {status['scorer']} scorer ({path})"
            )
        for name, (count_answered, why) in others.items():
            say(
                f"online: {count_answered} of {rows.height} REST requests answered by {name} at "
                f"/v1/models/{name}/score, beside the fraud detector"
            )
            if count_answered != rows.height:
                raise DemoFailed(
                    f"online: {rows.height - count_answered} REST requests to {name} refused: {why}"
                )

    def _other_models_online(
        self, server: Any, rows: pl.DataFrame
    ) -> dict[str, tuple[int, str | None]]:
        """Send the rows to each other declared model's scoring path; answers per model."""
        from mlops_assets.models.declaration import declared
        from mlops_assets.serving.app import model_score_path

        answers = {}
        for name in self.story.other_champions:
            fields = tuple(declared(name).spec.request_fields)
            answered, refused = _send(server.url + model_score_path(name), rows, fields)
            answers[name] = (answered, refused)
            self.story.other_online_answers[name] = answered
        return answers

    # --- the whole story ------------------------------------------------------------------

    def tell(self, days: Sequence[datetime.date], normal: int, drifted: bool) -> None:
        """The story over simulated days, the first `normal` of them before any drift.

        Raises:
            DemoFailed: A step failed, or (with drift) the loop did not close.
        """
        from mlops_assets.models.declaration import MODELS

        if normal < 1 or normal > len(days):
            raise DemoFailed(f"--days {normal}: between 1 and the {len(days)} simulated days")
        phase = time.perf_counter()
        self.ingest_days(days[:normal], len(days))
        say(
            f"{normal} days through bronze, silver, gold, features and the online store in "
            f"{time.perf_counter() - phase:.1f} s"
        )
        self.train(days[normal - 1], normal)
        # A clean process loads the champion by alias while the other models train.
        loaded = self.start_load_by_alias()
        # Every other declared model goes through the same lifecycle from its declaration.
        for model in list(MODELS)[1:]:
            self.train(days[normal - 1], normal, model=model)
        for day in days[max(0, normal - 2) : normal]:
            self.score_and_monitor(day)
        loaded()
        self.online_burst(days[normal - 1])
        self.tick()
        for index, day in enumerate(days[normal:], start=normal + 1):
            if day == days[normal]:
                # As it lands: before the day's own features are published.
                self.stream_one_file(day)
            step = time.perf_counter()
            self.land(day)
            first = self.settings.start_date
            for older in event_days_touched(day, first)[:-1]:
                self.refresh(older)
            say(
                f"day {index}/{len(days)} {day}: bronze, silver, quarantine; late events into "
                f"the gold and features of the days before ({time.perf_counter() - step:.1f} s)"
            )
            self.score_and_monitor(day, refresh=True, report=drifted and day == days[normal])
            self.tick()
        if len(days) > normal:
            step = time.perf_counter()
            self.publish_online()
            say(f"online store published with the last days ({time.perf_counter() - step:.1f} s)")
        page = self.require(
            self.materialize([["monitoring", "dashboard"]]), "the monitoring dashboard"
        )
        say(
            f"gold/prediction_summary holds {len(self._scored)} scored days; monitoring "
            f"dashboard: {_own(page, 'monitoring__dashboard')[0].metadata['path'].value}"
        )
        # The sensor asks once the episode's first days carry mature labels: a drift episode
        # that long must have closed the loop.
        monitoring = _resource(self.defs, "monitoring")
        needed = self.label_days + (monitoring.min_labelled_days if monitoring else 3)
        if drifted and len(days) - normal >= needed and not self.story.retrain_requests:
            raise DemoFailed(
                f"the drift sensor asked for no retraining in {len(days) - normal} drifted days "
                f"(at least {needed} let it): the loop did not close; see "
                "monitoring/drift_metrics and monitoring/alerts"
            )


_FRAUD_FIELDS = (
    "transaction_id",
    "card_id",
    "merchant_id",
    "event_time",
    "amount",
    "merchant_category",
    "channel",
    "entry_mode",
    "device_type",
    "country",
    "card_country",
)


def _send(url: str, rows: pl.DataFrame, fields: Sequence[str]) -> tuple[int, str | None]:
    """POST each row's `fields` to `url`: the requests answered 200, the first refusal."""
    answered, refused = 0, None
    for row in rows.iter_rows(named=True):
        body = {
            k: (row[k].isoformat() if k == "event_time" else row[k]) for k in fields if k in row
        }
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answered += response.status == 200
        except urllib.error.HTTPError as error:
            refused = refused or f"HTTP {error.code}: {error.read().decode()[:300]}"
    return answered, refused


def _own(result: dg.ExecuteInProcessResult, node: str) -> list[dg.AssetMaterialization]:
    """A node's materializations of its own asset.

    Not those it reports for others, such as `monitoring/reference` or `ml/model_audit`.
    """
    return [
        m
        for m in result.asset_materializations_for_node(node)
        if "__".join(m.asset_key.path) == node
    ]


def _resource(defs: dg.Definitions, name: str) -> Any:
    return (defs.resources or {}).get(name)


def run(settings: Settings, args: Any) -> int:
    """The whole story (see the module docstring); the exit code (1: a step failed)."""
    # One OpenMP thread (scikit-learn's tree training and prediction) unless the user chose:
    # on a machine as small as 2 cores, shared with other work, OpenMP's spinning threads cost
    # many times the single thread's time (a model's fit: 350 s against about 15 s). Read
    # when OpenMP loads, so set before scikit-learn is first imported.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from mlops_assets.definitions import build_definitions
    from mlops_assets.defs.monitoring import MonitoringResource
    from mlops_assets.defs.runner import prepare_dagster_home
    from mlops_assets.simulate import Drift, Scenario, simulate

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    prepare_dagster_home(settings)
    normal, drifted = args.days, args.drift_days
    drift = (
        Drift(covariate_from_day=normal, concept_from_day=normal)
        if drifted and not args.no_drift
        else None
    )
    factory = {"clean": Scenario.clean, "demo": Scenario.demo, "drifted": Scenario.demo}
    options: dict[str, Any] = {
        "days": normal + drifted,
        "seed": args.seed,
        "start_date": settings.start_date,
        "label_delay_days": (1, args.label_days),
    }
    if args.per_day:
        options["transactions_per_day"] = args.per_day
    if drift is not None:
        options["drift"] = drift
    scenario = factory[args.scenario](**options)
    _CLOCK["started"] = started = time.perf_counter()
    say(f"environment {settings.env}: {settings.env_root}")
    manifests = simulate(scenario, settings.landing_root)
    days = scenario.dates
    say(
        f"simulated {len(days)} landing days of ~{scenario.transactions_per_day:,} transactions "
        f"({normal} normal, {drifted} "
        + ("with covariate and concept drift" if drift else "more without drift")
        + f") in {time.perf_counter() - started:.1f} s"
    )
    monitoring = MonitoringResource(label_maturity_days=args.label_days)
    defs = build_definitions(settings, monitoring=monitoring)
    with dg.DagsterInstance.get() as instance:
        demo = Demo(settings, defs, instance, label_days=args.label_days)
        if exit_code(lambda: demo.tell(days, normal, drift is not None)):
            return 1
    _summary(settings, demo.story, manifests, drift is not None)
    say(
        f"done in {time.perf_counter() - started:.1f} s ({demo.story.runs} Dagster runs); "
        "`make ui` shows the asset graph"
    )
    return 0


def _summary(settings: Settings, story: Story, manifests, drifted: bool) -> None:
    from mlops_assets.lakehouse.summary import lake_summary, print_summary

    print_summary(lake_summary(settings), manifests)
    retrains = len(story.retrain_requests)
    requested = f" ({story.retrain_requests[0]['run_key']})" if retrains else ""
    say(
        (f"the loop: {retrains} retraining requested after drift" if drifted else "no drift: ")
        + (f"{retrains} retraining requested" if not drifted else requested)
        + f"; champions in turn: {' -> '.join(story.champion_versions)}"
    )
    say(
        f"predictions: {story.stream_predictions:,} streamed, {story.online_answers} of "
        f"{story.online_requests} REST requests answered by the fraud detector"
    )
    for name, version in story.other_champions.items():
        say(
            f"{name}: champion version {version}, batch scored and monitored each day, "
            f"{story.other_online_answers.get(name, 0)} REST answers beside the fraud detector"
        )
    say(
        "look at: `mlops model status` (lifecycle and audit), serving/inference_log, "
        "monitoring/drift_metrics, monitoring/performance, monitoring/alerts (Delta tables "
        f"under {settings.lake_uri}), MLflow runs in {settings.mlflow_uri}"
    )
    say(
        f"folders: landing files and manifests {settings.landing_root}, Dagster runs "
        f'{settings.dagster_home}; query the tables with `mlops sql "select * from '
        'gold.merchant_category_daily"` or notebooks/explore_lake.ipynb; `make ui` (Dagster, '
        f"http://127.0.0.1:3000), `mlops model status` and `mlflow ui --backend-store-uri "
        f"{settings.mlflow_uri}`"
    )
