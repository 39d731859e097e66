"""The demo's story: a lake, a champion, predictions, drift, and the loop closing by itself.

Days arrive one at a time on a simulated clock. The first ones are normal: they build the lake,
the features and the online store, and train, validate and promote a champion. The champion
then scores each day (batch), a landed file as it arrives (stream) and a burst of REST
requests (online), all into the inference log. From then on each day is monitored (drift
against the champion's training reference, profiles, performance as chargebacks mature) and
the drift sensor is evaluated; with drift switched on, the sensor asks for retraining once the
drift episode has enough labelled days, and the run trains, validates and promotes a new
champion. Without drift, nothing retrains.
"""

from __future__ import annotations

import datetime
import json
import logging
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import polars as pl

from mlops_assets.defs.partitions import event_days_touched
from mlops_assets.settings import Settings


@dataclass
class Story:
    """What the demo did, for its closing summary and for tests."""

    champion_versions: list[str] = field(default_factory=list)
    retrain_requests: list[dict[str, Any]] = field(default_factory=list)
    windows: list[dict[str, Any]] = field(default_factory=list)
    online_answers: int = 0
    report: str | None = None
    other_champions: dict[str, str] = field(default_factory=dict)
    other_online_answers: dict[str, int] = field(default_factory=dict)


_CLOCK = {"started": time.perf_counter()}


def say(text: str) -> None:
    """One line of the story, with the time since the demo started."""
    print(f"[demo {time.perf_counter() - _CLOCK['started']:6.1f} s] {text}", flush=True)


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

    # --- running things -------------------------------------------------------------------

    def _job(self, name: str, selection: Sequence[Sequence[str]]) -> dg.JobDefinition:
        job = dg.define_asset_job(name, selection=[dg.AssetKey(list(k)) for k in selection])
        return dg.Definitions.merge(self.defs, dg.Definitions(jobs=[job])).resolve_job_def(name)

    def materialize(
        self,
        selection: Sequence[Sequence[str]],
        day: datetime.date | None = None,
        run_config: dict | None = None,
        tags: dict | None = None,
    ) -> dg.ExecuteInProcessResult:
        """Materialize assets in-process, failures in the result."""
        name = "demo_" + "_".join("_".join(k) for k in selection)[:60]
        return self._job(name, selection).execute_in_process(
            instance=self.instance,
            partition_key=day.isoformat() if day else None,
            raise_on_error=False,
            run_config={
                **(run_config or {}),
                "loggers": {"console": {"config": {"log_level": "WARNING"}}},
            },
            tags={"mlops/launched_by": "mlops demo", **(tags or {})},
        )

    def run_job(self, name: str, day: datetime.date | None = None, **kwargs):
        """Execute one of the project's jobs in-process."""
        return self.defs.resolve_job_def(name).execute_in_process(
            instance=self.instance,
            partition_key=day.isoformat() if day else None,
            raise_on_error=False,
            **kwargs,
        )

    def ingest(self, day: datetime.date) -> bool:
        """What the schedules run for a landing day, in-process.

        The medallion run, a refresh of every event day the landing day touched (its late
        events), then the online store.
        """
        quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        runs = [("medallion_daily", day)]
        runs += [
            ("refresh_event_days", d) for d in event_days_touched(day, self.settings.start_date)
        ]
        for job, partition in runs:
            if not self.run_job(job, partition, run_config=quiet).success:
                say(f"{job} failed for {partition}: open the UI (make ui) for the run's logs")
                return False
        return self.run_job("online_publish", run_config=quiet).success

    # --- the story's steps ----------------------------------------------------------------

    def train(self, last_day: datetime.date, days: int, model: str = "fraud_detector") -> bool:
        """Train, validate and promote a declared model on the labels known at `last_day`'s end."""
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
            "loggers": {"console": {"config": {"log_level": "WARNING"}}},
        }
        result = self.run_job(k.job("retrain_and_deploy"), run_config=config)
        return self.report_training(result, model)

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

    def score_other_models(self, day: datetime.date) -> None:
        """Batch-score a day with every other declared model's champion, then monitor it."""
        from mlops_assets.defs.ml import keys
        from mlops_assets.models.declaration import declared

        for model in self.story.other_champions:
            k = keys(declared(model))
            scored = self.materialize([k.batch_predictions.path], day)
            if not scored.success:
                say(f"batch scoring of {day} by {model} failed: see the run in the UI")
                continue
            meta = _own(scored, k.node(k.batch_predictions))[0].metadata
            watched = self.materialize(
                [["monitoring", model, "drift_metrics"], ["monitoring", model, "performance"]],
                day,
            )
            drift = ""
            if watched.success:
                found = _own(watched, f"monitoring__{model}__drift_metrics")
                drift = (
                    f"; drifted features {found[0].metadata['drifted_share'].value:.0%}"
                    if found
                    else ""
                )
            else:
                drift = "; its monitoring failed: see the run in the UI"
            say(
                f"{day}: {meta['model'].value} version {meta['model_version'].value} scored "
                f"{meta['dagster/partition_row_count'].value:,} transactions "
                f"({meta['flagged'].value:,} flagged) into serving/inference_log{drift}"
            )

    def load_by_alias(self) -> bool:
        """A clean Python process loads the champion by alias and scores."""
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
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                self.settings.mlflow_uri,
                uri,
                str(self.settings.lake_root / "ml" / "training_set"),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            say(f"a clean process could not load the champion:\n{done.stderr[-2000:]}")
            return False
        count, top = done.stdout.split()[-2:]
        say(
            f"a clean Python process loaded {uri} and scored {count} events (highest score "
            f"{top}) in {time.perf_counter() - started:.1f} s"
        )
        return True

    def score_and_monitor(self, day: datetime.date) -> bool:
        """Batch-score a day, then its drift, profile and (as labels mature) performance."""
        scored = self.materialize([["serving", "batch_predictions"]], day)
        if not scored.success:
            say(f"batch scoring of {day} failed: see the run in the UI")
            return False
        batch = _own(scored, "serving__batch_predictions")[0].metadata
        self._scored.add(day)
        watched = self.materialize(
            [["monitoring", "drift_metrics"], ["monitoring", "profiles"]], day
        )
        if not watched.success:
            say(f"monitoring of {day} failed: see the run in the UI")
            return False
        drift = _own(watched, "monitoring__drift_metrics")[0].metadata
        # Performance of the days whose labels just matured (and of this one, partly labelled).
        pr_auc = None
        for back in range(self.label_days, -1, -1):
            older = day - datetime.timedelta(days=back)
            if older not in self._scored:
                continue
            result = self.materialize([["monitoring", "performance"]], older)
            if result.success and back == self.label_days:
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
        mature = day - datetime.timedelta(days=self.label_days)
        perf = (
            f", PR-AUC of {mature} (labels now mature) {pr_auc:.3f}" if pr_auc is not None else ""
        )
        say(
            f"{day}: version {window['model_version']} scored {window['rows']:,} transactions "
            f"({window['flagged']:,} flagged); drifted features {window['drifted_share']:.0%}, "
            f"prediction drift {window['prediction_drift']:.3f}{perf}"
        )
        return True

    def tick(self) -> bool:
        """Evaluate the drift sensor; run the retraining it asks for. Whether it asked."""
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
        run_config = {
            **request.run_config,
            "loggers": {"console": {"config": {"log_level": "WARNING"}}},
        }
        started = time.perf_counter()
        promoted = self.report_training(
            self.run_job("retrain_and_deploy", run_config=run_config, tags=request.tags)
        )
        seconds = time.perf_counter() - started
        self.story.retrain_requests[-1].update(seconds=seconds, promoted=promoted)
        if promoted:
            say(
                f"the new champion is in the registry {seconds:.1f} s after the sensor's request; "
                "a running `mlops serve` swaps to it at its next alias poll (2 s)"
            )
        return True

    def stream_one_file(self, day: datetime.date) -> None:
        """Score the day's landed transactions files through the streaming path.

        In a deployment the `landed_transactions` sensor requests these runs as files land;
        the demo's landing files were all simulated up front, so it requests them itself.
        """
        root = self.settings.landing_root
        for path in sorted((root / "transactions" / day.isoformat()).glob("*.csv")):
            name = path.relative_to(root).as_posix()
            config = {"ops": {"serving__stream_predictions": {"config": {"file": name}}}}
            started = time.perf_counter()
            done = self.materialize([["serving", "stream_predictions"]], run_config=config)
            if not done.success:
                say(f"stream: scoring {name} failed: see the run in the UI")
                continue
            meta = _own(done, "serving__stream_predictions")[0].metadata
            if "skipped" in meta and meta["skipped"].value:
                say(f"stream: {name} was scored when it first landed (checkpoint)")
                continue
            say(
                f"stream: {name} scored as it landed: {meta['scored'].value:,} predictions, "
                f"{meta['errors'].value} unreadable lines logged as errors, "
                f"{time.perf_counter() - started:.1f} s"
            )

    def online_burst(self, day: datetime.date, count: int = 200) -> None:
        """Send REST requests for the day's transactions to an in-process server."""
        from mlops_assets.serving.app import ScoringServer, build_service

        silver = pl.read_delta(
            str(self.settings.lake_root / "silver" / "transactions"),
        ).filter(pl.col("landing_date") == day)
        rows = silver.head(count)
        service = build_service(self.settings, wait_for_model=60, flush_interval_ms=200)
        server = ScoringServer(("127.0.0.1", 0), service).start()
        answered = 0
        started = time.perf_counter()
        try:
            for row in rows.iter_rows(named=True):
                body = {
                    "transaction_id": row["transaction_id"],
                    "card_id": row["card_id"],
                    "merchant_id": row["merchant_id"],
                    "event_time": row["event_time"].isoformat(),
                    "amount": row["amount"],
                    **{
                        k: row[k]
                        for k in (
                            "merchant_category",
                            "channel",
                            "entry_mode",
                            "device_type",
                            "country",
                            "card_country",
                        )
                    },
                }
                request = urllib.request.Request(
                    f"{server.url}/v1/score",
                    data=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:
                        answered += response.status == 200
                except urllib.error.HTTPError:
                    pass
            seconds = time.perf_counter() - started
            others = self._other_models_online(server, rows)
            ready = service.ready().body
        finally:
            server.stop()
        self.story.online_answers = answered
        say(
            f"online: {answered} of {rows.height} REST requests answered in {seconds:.1f} s; "
            "every one is a row of serving/inference_log"
        )
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
        for name, count in others.items():
            say(
                f"online: {count} of {rows.height} REST requests answered by {name} at "
                f"/v1/models/{name}/score, beside the fraud detector"
            )

    def _other_models_online(self, server: Any, rows: pl.DataFrame) -> dict[str, int]:
        """Send the rows to each other declared model's scoring path; answers per model."""
        from mlops_assets.models.declaration import declared
        from mlops_assets.serving.app import model_score_path

        answers = {}
        for name in self.story.other_champions:
            fields = declared(name).spec.request_fields
            answered = 0
            for row in rows.iter_rows(named=True):
                body = {
                    k: (row[k].isoformat() if k == "event_time" else row[k])
                    for k in fields
                    if k in row
                }
                request = urllib.request.Request(
                    f"{server.url}{model_score_path(name)}",
                    data=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:
                        answered += response.status == 200
                except urllib.error.HTTPError:
                    pass
            answers[name] = answered
            self.story.other_online_answers[name] = answered
        return answers


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
    """The whole story (see the module docstring); the exit code."""
    from mlops_assets.definitions import build_definitions
    from mlops_assets.defs.monitoring import MonitoringResource
    from mlops_assets.defs.runner import prepare_dagster_home
    from mlops_assets.models.declaration import MODELS
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
        phase = time.perf_counter()
        for index, day in enumerate(days[:normal], start=1):
            step = time.perf_counter()
            if not demo.ingest(day):
                return 1
            say(
                f"day {index}/{len(days)} {day}: bronze, silver, gold, features, online store "
                f"({time.perf_counter() - step:.1f} s)"
            )
        say(
            f"{normal} days through bronze, silver, gold, features and the online store in "
            f"{time.perf_counter() - phase:.1f} s"
        )
        if not demo.train(days[normal - 1], normal) or not demo.load_by_alias():
            return 1
        # Every other declared model goes through the same lifecycle from its declaration.
        for model in list(MODELS)[1:]:
            if not demo.train(days[normal - 1], normal, model=model):
                return 1
        for day in days[max(0, normal - 2) : normal]:
            if not demo.score_and_monitor(day):
                return 1
            demo.score_other_models(day)
        demo.online_burst(days[normal - 1])
        demo.tick()
        for day in days[normal:]:
            if day == days[normal]:
                # As it lands: before the day's own features are published.
                demo.stream_one_file(day)
            if not demo.ingest(day):
                return 1
            if not demo.score_and_monitor(day):
                return 1
            demo.score_other_models(day)
            demo.tick()
        if drifted:
            report = demo.materialize([["monitoring", "drift_report"]], days[normal])
            if report.success:
                meta = _own(report, "monitoring__drift_report")[0]
                demo.story.report = meta.metadata["path"].value
                say(f"Evidently drift report of {days[normal]}: {demo.story.report}")
        # The analysts' view: each scored day summarized with every label known, the page.
        for day in sorted(demo._scored):
            if not demo.materialize([["gold", "prediction_summary"]], day).success:
                say(f"prediction summary of {day} failed: see the run in the UI")
                return 1
        page = demo.materialize([["monitoring", "dashboard"]])
        if not page.success:
            say("the monitoring dashboard failed: see the run in the UI")
            return 1
        say(
            f"gold/prediction_summary holds {len(demo._scored)} scored days; monitoring "
            f"dashboard: {_own(page, 'monitoring__dashboard')[0].metadata['path'].value}"
        )
    _summary(settings, demo.story, manifests, drift is not None)
    say(f"done in {time.perf_counter() - started:.1f} s; `make ui` shows the asset graph")
    return 0


def _summary(settings: Settings, story: Story, manifests, drifted: bool) -> None:
    from mlops_assets.lakehouse.summary import lake_summary, print_summary

    print_summary(lake_summary(settings), manifests)
    retrains = len(story.retrain_requests)
    if drifted:
        say(
            f"the loop: {retrains} retraining requested after drift"
            + (
                f" ({story.retrain_requests[0]['run_key']}); champions in turn: "
                f"{' -> '.join(story.champion_versions)}"
                if retrains
                else ""
            )
        )
    else:
        say(
            f"no drift: {retrains} retraining requested; champion stays version(s) "
            f"{' -> '.join(story.champion_versions)}"
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
        f"http://127.0.0.1:3000), `mlflow ui --backend-store-uri {settings.mlflow_uri}`"
    )
