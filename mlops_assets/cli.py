"""The `mlops` command: simulate landing data, run the demo, inspect tables, start the UI."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence

from mlops_assets.settings import Settings, load_settings, project_root


def _scenario(args: argparse.Namespace, settings: Settings):
    from mlops_assets.simulate import Scenario

    factory = {
        "clean": Scenario.clean,
        "demo": Scenario.demo,
        "drifted": Scenario.drifted,
    }[args.scenario]
    options = {"days": args.days, "seed": args.seed, "start_date": settings.start_date}
    if args.per_day:
        options["transactions_per_day"] = args.per_day
    return factory(**options)


def cmd_simulate(args: argparse.Namespace) -> int:
    """Write simulated landing files for the active environment."""
    from mlops_assets.simulate import simulate

    settings = load_settings()
    scenario = _scenario(args, settings)
    started = time.perf_counter()
    manifests = simulate(scenario, settings.landing_root)
    for manifest in manifests:
        print(
            json.dumps(
                manifest.to_dict() if hasattr(manifest, "to_dict") else vars(manifest), default=str
            )
        )
    print(
        f"wrote {len(manifests)} landing days under {settings.landing_root} "
        f"in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Simulate landing days, then build bronze, silver, gold and quarantine for each."""
    import dagster as dg

    from mlops_assets.defs.runner import prepare_dagster_home, run_days, run_once
    from mlops_assets.simulate import simulate

    settings = load_settings()
    prepare_dagster_home(settings)
    from mlops_assets.definitions import build_definitions

    scenario = _scenario(args, settings)
    print(f"[demo] environment {settings.env}: {settings.env_root}")
    started = time.perf_counter()
    manifests = simulate(scenario, settings.landing_root)
    days = [settings.start_date + datetime.timedelta(days=i) for i in range(scenario.days)]
    print(
        f"[demo] simulated {len(manifests)} landing days of ~{scenario.transactions_per_day:,} "
        f"transactions in {time.perf_counter() - started:.1f} s"
    )
    defs = build_definitions(settings)
    with dg.DagsterInstance.get() as instance:
        runs = run_days(defs, days, instance)
        for run in runs:
            status = "ok" if run.success else "FAILED"
            print(
                f"[demo] {run.day} medallion run {run.run_id[:8]} {status} in {run.seconds:.1f} s"
            )
        if not all(r.success for r in runs) or len(runs) != len(days):
            print("[demo] a run failed: open the UI (make ui) and look at the run's logs")
            return 1
        # Late events and chargebacks of a day land on later days: refresh gold once all are in.
        gold = [dg.AssetKey(["gold", "merchant_category_daily"])]
        refresh = run_days(defs, days, instance, selection=gold)
        print(
            f"[demo] refreshed gold for {len(refresh)} days with late events and chargebacks "
            f"in {sum(r.seconds for r in refresh):.1f} s"
        )
        if not all(r.success for r in refresh):
            print("[demo] the gold refresh failed: open the UI (make ui) for the run's logs")
            return 1
        features = run_days(defs, days, instance, job_name="features_daily")
        print(
            f"[demo] feature tables refreshed for {len(features)} days "
            f"in {sum(r.seconds for r in features):.1f} s"
        )
        if not all(r.success for r in features) or len(features) != len(days):
            print("[demo] a feature run failed: open the UI (make ui) for the run's logs")
            return 1
        if not run_once(defs, "online_publish", instance).success:
            print("[demo] publishing to the online store failed: see the run in the UI")
            return 1
        print(f"[demo] latest feature rows published to {settings.online_store_path}")
        training = run_once(defs, "training_set", instance)
        if not training.success:
            print("[demo] building the training set failed: see the run in the UI")
            return 1
        built = training.asset_materializations_for_node("ml__training_set")[0].metadata
        print(
            f"[demo] point-in-time training set: {built['events'].value:,} events, "
            f"{built['fraud_events'].value:,} fraud, at {built['dagster/uri'].value}"
        )
    from mlops_assets.lakehouse.summary import lake_summary, print_summary

    print_summary(lake_summary(settings), manifests)
    print(f"[demo] done in {time.perf_counter() - started:.1f} s; `make ui` shows the asset graph")
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    """List the active environment's Delta tables with version and row count."""
    from mlops_assets.lakehouse.summary import lake_summary

    for row in lake_summary(load_settings()):
        print(f"{row.name:40s} v{row.version:<4d} {row.rows:>10,d} rows  {row.uri}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    """List feature tables, or describe one: features, keys, freshness and lineage."""
    from mlops_assets.features.discovery import describe, list_tables
    from mlops_assets.lakehouse.catalog import Catalog

    catalog = Catalog(load_settings())
    if args.action == "list":
        for row in list_tables(catalog):
            keys = ",".join(row["entity_keys"])
            rows = "not built" if row["rows"] is None else f"{row['rows']:,} rows"
            print(
                f"{row['name']:16s} keys={keys:12s} time={row['timestamp_key']:10s} "
                f"{row['features']:>2d} features  {rows:>14s}  "
                f"latest {row['latest_feature_time'] or '-'}"
            )
        return 0
    if not args.name:
        print("mlops features describe needs a table name", file=sys.stderr)
        return 2
    try:
        info = describe(catalog, args.name)
    except KeyError as error:
        print(error.args[0], file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    """Show the model lifecycle, promote a validated version, or roll back the champion."""
    import getpass

    import mlflow

    from mlops_assets.models.lifecycle import Lifecycle, LifecycleError, model_name

    settings = load_settings()
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    cycle = Lifecycle(client, model_name(settings.env))
    who = f"{getpass.getuser()} (mlops model {args.action})"
    try:
        if args.action == "status":
            print(json.dumps(cycle.status(), indent=2))
            return 0
        if args.action == "promote":
            if not args.version:
                print("mlops model promote needs a version", file=sys.stderr)
                return 2
            move = cycle.promote(args.version, who, args.why)
        else:
            move = cycle.rollback(who, args.why)
    except LifecycleError as error:
        print(error, file=sys.stderr)
        return 2
    except mlflow.exceptions.MlflowException as error:
        print(f"{cycle.name}: {error.message}", file=sys.stderr)
        return 2
    print(json.dumps(vars(move), indent=2))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """Start the Dagster UI for the active environment on 127.0.0.1."""
    from mlops_assets.defs.runner import prepare_dagster_home

    settings = load_settings()
    prepare_dagster_home(settings)
    command = [
        os.path.join(os.path.dirname(sys.executable), "dagster"),
        "dev",
        "-w",
        str(project_root() / "workspace.yaml"),
        "-h",
        "127.0.0.1",
        "-p",
        str(args.port),
    ]
    return subprocess.call(command, cwd=project_root())


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the champion fraud detector over REST on 127.0.0.1, logging every prediction."""
    from mlops_assets.serving.app import serve

    token = args.token or os.environ.get("MLOPS_SERVE_TOKEN") or None
    return serve(load_settings(), host=args.host, port=args.port, token=token)


def build_parser() -> argparse.ArgumentParser:
    """The `mlops` argument parser."""
    parser = argparse.ArgumentParser(prog="mlops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def scenario_options(command: argparse.ArgumentParser, days: int) -> None:
        command.add_argument("--days", type=int, default=days, help="landing days to simulate")
        command.add_argument("--seed", type=int, default=7, help="simulator seed")
        command.add_argument(
            "--per-day", type=int, default=0, help="transactions per day (scenario default: 0)"
        )
        command.add_argument(
            "--scenario",
            choices=("clean", "demo", "drifted"),
            default="demo",
            help="clean data, demo (dirty data), or drifted (dirty data and drift)",
        )

    simulate = sub.add_parser("simulate", help="write simulated landing files")
    scenario_options(simulate, days=8)
    simulate.set_defaults(func=cmd_simulate)
    demo = sub.add_parser("demo", help="simulate and build the whole lake")
    scenario_options(demo, days=8)
    demo.set_defaults(func=cmd_demo)
    tables = sub.add_parser("tables", help="list Delta tables of the active environment")
    tables.set_defaults(func=cmd_tables)
    features = sub.add_parser("features", help="list or describe feature tables")
    features.add_argument("action", choices=("list", "describe"))
    features.add_argument("name", nargs="?", help="feature table (for describe)")
    features.set_defaults(func=cmd_features)
    model = sub.add_parser("model", help="model lifecycle: status, promote, rollback")
    model.add_argument("action", choices=("status", "promote", "rollback"))
    model.add_argument("version", nargs="?", help="version to promote")
    model.add_argument("--why", default="by hand", help="reason recorded with the move")
    model.set_defaults(func=cmd_model)
    ui = sub.add_parser("ui", help="start the Dagster UI on 127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=cmd_ui)
    serve = sub.add_parser("serve", help="serve the champion model over REST")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--token", default=None, help="bearer token required to score (or MLOPS_SERVE_TOKEN)"
    )
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mlops` command."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
