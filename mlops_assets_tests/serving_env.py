"""A small serving environment for tests and benchmarks: simulated lake, online store, models.

Simulates a few landing days, builds the medallion, feature tables, the online store and a
point-in-time training set in-process (Dagster, ephemeral instance), then trains and registers
fraud detectors in the environment's MLflow registry and makes the first one champion.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from mlops_assets.settings import Settings, load_settings

START = datetime.date(2026, 1, 1)


@dataclass
class ServingEnv:
    """What the builder made: settings, a trained frame and the registered versions."""

    settings: Settings
    training_set: pl.DataFrame
    versions: list[str]

    @property
    def client(self) -> Any:
        import mlflow

        uri = self.settings.mlflow_uri
        return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)

    def requests(self, n: int, seed: int = 1, unknown_share: float = 0.0) -> list[dict]:
        """Requests for cards and merchants the store knows, just after its latest rows."""
        from mlops_assets.features.online_store import OnlineStore

        store = OnlineStore(self.settings.online_store_path)
        try:
            latest = store.describe("card_behaviour")["latest_feature_time"]
        finally:
            store.close()
        at = latest + datetime.timedelta(minutes=5)
        silver = pl.read_delta(str(self.settings.lake_root / "silver" / "transactions"))
        recent = silver.filter(pl.col("event_time") > latest - datetime.timedelta(days=2))
        sample = recent.sample(n, with_replacement=recent.height < n, seed=seed)
        out = []
        for i, row in enumerate(sample.iter_rows(named=True)):
            out.append(
                {
                    "transaction_id": f"req-{seed}-{i:07d}",
                    "card_id": row["card_id"],
                    "merchant_id": row["merchant_id"],
                    "event_time": (at + datetime.timedelta(seconds=i % 3600)).isoformat(),
                    "amount": float(row["amount"]) * (1 + (i % 7) / 3),
                    "merchant_category": row["merchant_category"],
                    "channel": row["channel"],
                    "entry_mode": row["entry_mode"],
                    "device_type": row["device_type"],
                    "country": row["country"],
                    "card_country": row["card_country"],
                }
            )
        return out


def run_daily_jobs(defs: Any, instance: Any, day_list: list[datetime.date]) -> None:
    """The medallion and the feature tables of each day, in-process.

    Raises:
        RuntimeError: A day's run failed.
    """
    from mlops_assets.defs.runner import run_days

    for job in ("medallion_daily", "features_daily"):
        runs = run_days(defs, day_list, instance, job_name=job, log_level="ERROR")
        if not all(r.success for r in runs) or len(runs) != len(day_list):
            raise RuntimeError(f"{job} failed for {day_list[0]}..{day_list[-1]}")


def materialize_training_set(defs: Any, instance: Any, day_list: list[datetime.date]) -> None:
    """`ml/training_set` over the days, labels cut off at midnight after the last one.

    Raises:
        RuntimeError: The run failed.
    """
    import dagster as dg

    cutoff = datetime.datetime.combine(
        day_list[-1] + datetime.timedelta(days=1), datetime.time(), datetime.UTC
    )
    job = dg.define_asset_job("training_set_only", selection=[dg.AssetKey(["ml", "training_set"])])
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    built = merged.resolve_job_def("training_set_only").execute_in_process(
        instance=instance,
        run_config={
            "ops": {
                "ml__training_set": {
                    "config": {
                        "label_cutoff": cutoff.isoformat(),
                        "days": len(day_list),
                        "label_maturity_days": 1,
                    }
                }
            },
            "loggers": {"console": {"config": {"log_level": "ERROR"}}},
        },
    )
    if not built.success:
        raise RuntimeError("the training set failed")


def build_serving_env(
    root: Path, *, days: int = 6, per_day: int = 1_200, models: int = 2, seed: int = 5
) -> ServingEnv:
    """Build the lake, the online store and `models` registered versions under `root`.

    The first version is validated and made champion; the others are registered only.
    """
    import dagster as dg

    from mlops_assets.definitions import build_definitions
    from mlops_assets.features.spec import FRAUD_SPEC
    from mlops_assets.models.lifecycle import Lifecycle, model_name
    from mlops_assets.models.registry import log_and_register
    from mlops_assets.models.training import train
    from mlops_assets.simulate import Scenario, simulate

    settings = load_settings({"MLOPS_DATA_ROOT": str(root), "MLOPS_ENV": "dev"})
    day_list = [START + datetime.timedelta(days=i) for i in range(days)]
    scenario = Scenario.demo(
        days=days, transactions_per_day=per_day, n_cards=300, seed=seed, start_date=START
    )
    simulate(scenario, settings.landing_root)
    defs = build_definitions(settings)
    with dg.DagsterInstance.ephemeral() as instance:
        run_daily_jobs(defs, instance, day_list)
        if not defs.resolve_job_def("online_publish").execute_in_process(instance=instance).success:
            raise RuntimeError("online publish failed while building the serving environment")
        materialize_training_set(defs, instance, day_list)
    frame = pl.read_delta(str(settings.lake_root / "ml" / "training_set"))
    versions = []
    for i in range(models):
        result = train(frame, FRAUD_SPEC, seed=3 + i, params={"max_iter": 60 + 40 * i})
        registered = log_and_register(
            settings,
            result,
            FRAUD_SPEC,
            inputs={"ml/training_set": 0},
            example=frame.head(5),
            dagster_run_id=f"serving-env-{i}",
        )
        versions.append(registered.version)
    env = ServingEnv(settings=settings, training_set=frame, versions=versions)
    cycle = Lifecycle(env.client, model_name(settings.env))
    for version in versions:
        cycle.record_validation(version, True, {"by": "serving environment builder"})
    cycle.promote(versions[0], "serving-env", "first champion")
    return env
