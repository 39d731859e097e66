"""The stream worker: a long-lived process that scores transactions files as they land.

A run per file pays a Dagster run's start-up (queue, run process, imports, the champion loaded
again) for a few seconds of work. The worker keeps the champion loaded (following its alias)
and the online store open, polls the landing folder, and scores each complete file (its
size and modification time unchanged for the settle time) with the same exactly-once
protocol as the `stream_predictions` asset (`serving.streaming`); each
micro-batch is then reported to its caller, which records it in Dagster as an asset event.

With the serving group on Spark (`MLOPS_ENGINE_SERVING=spark`), the files due at a poll are
scored together on the executors (`serving.spark_streaming`), then written file by file with
the same protocol.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from mlops_assets.lakehouse.catalog import Catalog, TableRef
from mlops_assets.serving.inference_log import INFERENCE_LOG
from mlops_assets.serving.streaming import (
    STREAM_CHECKPOINT,
    Settling,
    StreamLedger,
    StreamOutcome,
    pending_files,
    score_landed_file,
)

log = logging.getLogger(__name__)
# Files a poll scores on Spark at most: their rows come back to the driver together, so a
# backlog (a worker started after days of landed files) is taken in bounded bites.
SPARK_FILES_PER_POLL = 64
# The alerts table (`monitoring.alerts.ALERTS`), named here so the worker starts without it.
ALERTS = TableRef("monitoring", "alerts")


class StreamWorker:
    """Scores landed transactions files of an environment as they land, each once.

    Args:
        settings: The environment's `Settings`.
        record: Called with each file's outcome (e.g. to report a Dagster asset event).
        settle_seconds: A file whose size and modification time have not been unchanged this
            long is left for a later poll (a guard for writers that do not rename a finished
            file into place; default: the settings' `landing_settle_seconds`).
        holder: The champion to score with (a started `ChampionHolder` by default).
        store_factory: Opens the online store (the environment's by default).
        alert: Raises the alert about a scored file that changed (message, details); by
            default appended to the environment's `monitoring/alerts` (and posted to its
            webhook).
        spark: Returns the Spark session that scores a poll's files when the serving group
            runs on Spark (by default the session of the `MLOPS_SPARK_*` settings, started at
            the first poll with files to score); unused on polars.
    """

    def __init__(
        self,
        settings: Any,
        *,
        record: Callable[[StreamOutcome], None] | None = None,
        settle_seconds: float | None = None,
        holder: Any = None,
        store_factory: Callable[[], Any] | None = None,
        alert: Callable[[str, dict[str, Any]], None] | None = None,
        spark: Callable[[], Any] | None = None,
    ) -> None:
        from mlops_assets.features.online_store import open_online_store
        from mlops_assets.models.lifecycle import model_name
        from mlops_assets.serving.model import ChampionHolder
        from mlops_assets.settings import use_mlflow_store

        self.settings = settings
        self.record = record
        self.settle_seconds = (
            settings.landing_settle_seconds if settle_seconds is None else settle_seconds
        )
        self.settling = Settling(self.settle_seconds)
        self.alert = alert or self._raise_alert
        catalog = Catalog(settings)
        self.alerts_uri = catalog.uri_for_write(ALERTS)
        self.log_uri = catalog.uri_for_write(INFERENCE_LOG)
        self.checkpoint_uri = catalog.uri_for_write(STREAM_CHECKPOINT)
        self.ledger = StreamLedger(self.log_uri, self.checkpoint_uri)
        if holder is None:
            use_mlflow_store(settings.mlflow_uri)
            holder = ChampionHolder(model_name(settings.env), poll_seconds=2.0)
            holder.start()
        self.holder = holder
        self._store = (store_factory or (lambda: open_online_store(settings)))()
        self.engine = settings.engine_for("serving")
        self._spark = spark
        self._done: dict[str, int | None] | None = None
        self.outcomes = 0
        self.failures = 0

    def _model(self) -> Any:
        model = self.holder.current
        if model is None:
            raise RuntimeError(f"{self.holder.name} has no champion loaded yet")
        return model

    def _open_store(self) -> Any:
        store = self._store

        class _Kept:
            """The worker's store, kept open across files."""

            def __enter__(self) -> Any:
                return store

            def __exit__(self, *exc: object) -> None:
                return None

        return _Kept()

    def _raise_alert(self, message: str, details: dict[str, Any]) -> None:
        from mlops_assets.monitoring.alerts import Alert, raise_alert

        alert = Alert(
            kind="check_failed",
            severity="warning",
            subject=f"serving/stream_predictions {details.get('file', '')}",
            message=message,
            env=self.settings.env,
            details={**details, "scored_by": "stream worker"},
        )
        raise_alert(self.alerts_uri, alert, self.settings.alert_webhook_url or None)

    def pending(self) -> list[str]:
        """Settled landed files not scored yet (or changed since), oldest day first."""
        if self._done is None:
            self._done = self.ledger.sizes()
        return pending_files(
            self.settings.landing_root,
            self._done,
            settle_seconds=self.settle_seconds,
            settling=self.settling,
        )

    def run_once(self) -> list[StreamOutcome]:
        """Score every pending file (none while no champion is loaded).

        A file that fails is logged and stays pending (tried again at the next poll); the
        other files go on. A micro-batch that could not be recorded in Dagster is logged with
        the file's name (its rows and checkpoint are written).
        """
        if self.holder.current is None:
            return []
        outcomes = []
        names = self.pending()
        if self._on_spark:
            names = names[:SPARK_FILES_PER_POLL]  # the rest at the next polls, oldest first
        model = self._model()  # one champion for the whole poll
        scored = self._score_on_spark(names, model) if names and self._on_spark else {}
        for name in names:
            batch = scored.get(name)
            if isinstance(batch, Exception):
                log.error(
                    "stream worker: scoring %s failed (%s); retrying at the next poll", name, batch
                )
                self.failures += 1
                continue
            try:
                outcome = score_landed_file(
                    self.settings.landing_root,
                    name,
                    load_model=lambda: model,
                    open_store=self._open_store,
                    log_uri=self.ledger.log_uri,
                    checkpoint_uri=self.ledger.checkpoint_uri,
                    log_table=self.ledger.log_table,
                    checkpoint_table=self.ledger.checkpoint_table,
                    timezone=self.settings.source_timezones.get("transactions"),
                    run_id=self.run_id,
                    alert=self.alert,
                    scored=batch,
                )
            except Exception:  # noqa: BLE001 - a bad file must not stop the stream
                log.exception("stream worker: scoring %s failed; retrying at the next poll", name)
                self.failures += 1
                continue
            assert self._done is not None
            self._done[name] = outcome.size
            self.outcomes += 1
            outcomes.append(outcome)
            if self.record is not None and not outcome.skipped:
                try:
                    self.record(outcome)
                except Exception:  # noqa: BLE001 - the file is scored; say it was not recorded
                    log.exception("stream worker: %s scored but not recorded in Dagster", name)
        return outcomes

    @property
    def run_id(self) -> str:
        """The run id of the worker's rows (`stream-worker:<env>`)."""
        return f"stream-worker:{self.settings.env}"

    @property
    def _on_spark(self) -> bool:
        from mlops_assets.settings import Engine

        return self.engine is Engine.SPARK

    def _score_on_spark(self, names: list[str], model: Any) -> dict[str, Any]:
        """The poll's files scored on the executors (a file's value: its batch or its error)."""
        import functools

        from mlops_assets.features.online_store import open_online_store
        from mlops_assets.serving.spark_streaming import score_files

        if self._spark is None:
            from mlops_assets.defs.resources import SparkResource

            resource = SparkResource.from_settings(self.settings)
            self._spark = lambda: resource.session
        try:
            return score_files(
                self._spark(),
                self.settings.landing_root,
                names,
                model,
                functools.partial(open_online_store, self.settings),
                run_id=self.run_id,
                timezone=self.settings.source_timezones.get("transactions"),
            )
        except Exception as error:  # noqa: BLE001 - the poll's files stay pending
            log.exception("stream worker: scoring %d file(s) on Spark failed", len(names))
            return {name: error for name in names}

    def run(self, stop: threading.Event, poll_seconds: float = 1.0) -> None:
        """Poll until `stop` is set."""
        while not stop.is_set():
            try:
                for outcome in self.run_once():
                    log.info(
                        "scored %s: %s rows, %s errors in %.2f s (version %s)",
                        outcome.file,
                        outcome.scored,
                        outcome.errors,
                        outcome.seconds,
                        outcome.model_version,
                    )
            except Exception:  # noqa: BLE001 - e.g. the checkpoint table briefly unreadable
                log.exception("stream worker: a poll failed; retrying")
                self._done = None  # re-read the checkpoint at the next poll
            stop.wait(poll_seconds)

    def close(self) -> None:
        """Stop following the champion and close the store."""
        self.holder.stop()
        close = getattr(self._store, "close", None)
        if close is not None:
            close()
