"""The `mlops` command: simulate landing data, run the demo, inspect tables, start the UI."""

from __future__ import annotations

import argparse
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
    options = {
        "days": args.days,
        "seed": args.seed,
        "start_date": settings.start_date,
        "label_delay_days": (1, args.label_days),
    }
    if args.per_day:
        options["transactions_per_day"] = args.per_day
    return factory(**options)


def cmd_simulate(args: argparse.Namespace) -> int:
    """Write simulated landing files for the active environment: a line per day, a summary.

    Each day's manifest (with every injected transaction id) is in its file under
    `_manifests/`; the terminal gets counts.
    """
    from mlops_assets.simulate import simulate
    from mlops_assets.simulate.report import day_line, summary_lines

    settings = load_settings()
    scenario = _scenario(args, settings)
    started = time.perf_counter()
    manifests = []
    for day in range(scenario.days):
        manifests += simulate(scenario, settings.landing_root, days=[day])
        elapsed = time.perf_counter() - started
        print(f"[simulate] {day_line(manifests[-1], day + 1, scenario.days, elapsed)}", flush=True)
    for line in summary_lines(manifests, settings.landing_root, time.perf_counter() - started):
        print(f"[simulate] {line}")
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    """Run a daily job for a range of days in-process: a line per day, then a summary."""
    import datetime

    import dagster as dg

    from mlops_assets.definitions import build_definitions
    from mlops_assets.defs.runner import prepare_dagster_home, print_day, run_days

    settings = load_settings()
    try:
        first = datetime.date.fromisoformat(args.start)
        last = datetime.date.fromisoformat(args.end or args.start)
    except ValueError as error:
        print(f"mlops backfill: dates are YYYY-MM-DD: {error}", file=sys.stderr)
        return 2
    if last < first:
        print(f"mlops backfill: --to {last} is before --from {first}", file=sys.stderr)
        return 2
    days = [first + datetime.timedelta(days=i) for i in range((last - first).days + 1)]
    defs = build_definitions(settings)
    daily = sorted(
        job.name
        for job in defs.resolve_all_job_defs()
        if job.partitions_def is not None and not job.name.startswith("__")
    )
    if args.job not in daily:
        print(
            f"mlops backfill: {args.job!r} is not a daily job; daily jobs: {', '.join(daily)}",
            file=sys.stderr,
        )
        return 2
    prepare_dagster_home(settings)
    started = time.perf_counter()
    print(f"[backfill] {args.job}: {len(days)} days from {first} to {last} in {settings.env}")
    with dg.DagsterInstance.get() as instance:
        runs = run_days(
            defs, days, instance, job_name=args.job, log_level="ERROR", on_day=print_day(args.job)
        )
    ok = sum(run.success for run in runs)
    print(
        f"[backfill] {ok} of {len(days)} days done in {time.perf_counter() - started:.1f} s"
        + ("" if ok == len(days) else f"; stopped at {runs[-1].day}, which failed")
    )
    print(
        f"[backfill] look at: `mlops ui` (runs and their logs, Dagster home "
        f"{settings.dagster_home}), `mlops tables` (the Delta tables under {settings.lake_uri})"
    )
    return 0 if ok == len(days) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole loop on a simulated clock (see `mlops_assets.demo`)."""
    from mlops_assets.demo import run

    return run(load_settings(), args)


def cmd_tables(args: argparse.Namespace) -> int:
    """List the active environment's Delta tables with version and row count."""
    from mlops_assets.lakehouse.summary import lake_summary

    for row in lake_summary(load_settings()):
        print(f"{row.name:40s} v{row.version:<4d} {row.rows:>10,d} rows  {row.uri}")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    """Run a SQL query over the environment's Delta tables (see `lakehouse.sql`)."""
    from mlops_assets.lakehouse.sql import SqlError, parse_at, query, render

    text = sys.stdin.read() if args.query == "-" else args.query
    try:
        result = query(load_settings(), text, at=parse_at(args.at), limit=args.limit or None)
        output = render(result.frame, args.format)
    except SqlError as error:
        print(f"mlops sql: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(output)
    if args.format == "table":
        more = "; more rows exist (raise --limit, 0 for all)" if result.truncated else ""
        read = ", ".join(use.name for use in result.tables) or "no table"
        print(f"({result.frame.height:,} rows{more}; read {read})", file=sys.stderr)
    elif result.truncated:
        print(f"mlops sql: output cut at --limit {args.limit} rows", file=sys.stderr)
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
    """Show the model lifecycle and audit trail, promote a validated version, or roll back."""
    import getpass

    import mlflow

    from mlops_assets.lakehouse.catalog import Catalog
    from mlops_assets.models import deploy
    from mlops_assets.models.audit import AUDIT, history
    from mlops_assets.models.lifecycle import LifecycleError

    settings = load_settings()
    cycle = deploy.lifecycle(settings, args.model)
    who = f"{getpass.getuser()} (mlops model {args.action})"
    try:
        if args.action == "status":
            status = cycle.status()
            trail = history(Catalog(settings).uri_for_read(AUDIT), cycle.name)
            status["audit"] = [
                {k: v for k, v in row.items() if k not in ("metrics", "details") and v is not None}
                for row in trail.tail(args.last).to_dicts()
            ]
            print(json.dumps(status, indent=2, default=str))
            return 0
        if args.action == "promote":
            if not args.version:
                print("mlops model promote needs a version", file=sys.stderr)
                return 2
            move = deploy.promote_version(
                settings, args.version, who=who, why=args.why, model=args.model
            )
        else:
            move = deploy.rollback(settings, who=who, why=args.why, model=args.model)
    except LifecycleError as error:
        print(error, file=sys.stderr)
        return 2
    except mlflow.exceptions.MlflowException as error:
        print(f"{cycle.name}: {error.message}", file=sys.stderr)
        return 2
    print(json.dumps(vars(move), indent=2))
    return 0


def cmd_webhook(args: argparse.Namespace) -> int:
    """Receive MLflow registry webhooks for the CD sensor, or register the webhook in MLflow."""
    secret = os.environ.get("MLOPS_WEBHOOK_SECRET", "")
    if not secret:
        print("set MLOPS_WEBHOOK_SECRET to the secret shared with the registry", file=sys.stderr)
        return 2
    settings = load_settings()
    if args.action == "register":
        from mlops_assets.models.deploy import mlflow_client

        if not args.url:
            print("mlops webhook register needs the receiver's URL", file=sys.stderr)
            return 2
        hook = mlflow_client(settings).create_webhook(
            name=f"{settings.env}-cd",
            url=args.url,
            events=["model_version.created"],
            secret=secret,
            description="new model versions for the CD sensor",
        )
        print(json.dumps({"webhook_id": hook.webhook_id, "url": hook.url}))
        return 0
    from mlops_assets.models.webhooks import PATH, Inbox, make_server

    server = make_server(Inbox(settings.webhook_inbox_path), secret, args.host, args.port)
    host, port = server.server_address[:2]
    print(f"receiving registry webhooks on http://{host}:{port}{PATH}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
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
    return serve(
        load_settings(),
        host=args.host,
        port=args.port,
        token=token,
        poll_seconds=args.poll_seconds,
        flush_rows=args.log_flush_rows,
        flush_interval_ms=args.log_flush_ms,
        http=args.http,
        log_writer=args.log_writer,
    )


def cmd_stack(args: argparse.Namespace) -> int:
    """Start, stop or show the local stack (PostgreSQL, Redis, MLflow, Dagster, serving)."""
    from mlops_assets.stack.process import StackError
    from mlops_assets.stack.stack import Stack

    try:
        # Finds the PostgreSQL and Redis programs: an error names the one missing.
        stack = Stack(load_settings())
    except StackError as error:
        print(f"mlops stack {args.action}: {error}", file=sys.stderr)
        return 2
    if args.action == "up":

        def ready(name: str, seconds: float) -> None:
            print(f"{name:28s} ready in {seconds:5.1f} s", flush=True)

        try:
            seconds = stack.up(on_ready=ready)
        except StackError as error:
            print(f"mlops stack up failed: {error}", file=sys.stderr)
            print("`mlops stack down` stops what did start", file=sys.stderr)
            return 1
        print(f"the stack is up ({seconds['total']:.1f} s):")
        for name, url in stack.urls.items():
            print(f"  {name:28s} {url}")
        print(f"variables for a shell: source {stack.env_file}")
        return 0
    if args.action == "down":
        try:
            stopped = stack.down()
        except StackError as error:
            print(f"mlops stack down: {error}", file=sys.stderr)
            return 2
        print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
        return 0
    try:
        rows = stack.status()
    except StackError as error:
        print(f"mlops stack status: {error}", file=sys.stderr)
        return 2
    for row in rows:
        port = "-" if row.port is None else str(row.port)
        pid = "-" if row.pid is None else str(row.pid)
        print(f"{row.name:28s} pid {pid:>8s}  port {port:>5s}  {'up' if row.up else 'down'}")
    return 0 if all(row.up for row in rows) else 1


def cmd_stream(args: argparse.Namespace) -> int:
    """Score landed transactions files as they land, recording each in Dagster."""
    import logging
    import signal
    import threading

    import dagster as dg

    from mlops_assets.defs.runner import prepare_dagster_home
    from mlops_assets.defs.serving import record_stream_batch
    from mlops_assets.serving.stream_worker import StreamWorker

    logging.basicConfig(level=logging.WARNING, format="[stream] %(asctime)s %(message)s")
    logging.getLogger("mlops_assets").setLevel(logging.INFO)
    settings = load_settings()
    prepare_dagster_home(settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with dg.DagsterInstance.get() as instance:
        worker = StreamWorker(
            settings, record=lambda outcome: record_stream_batch(instance, outcome)
        )
        print(
            f"[stream] scoring files landing under {settings.landing_root / 'transactions'} "
            f"every {args.poll} s on {worker.engine.value}"
            + (f" ({settings.spark_master})" if worker.engine.value == "spark" else ""),
            flush=True,
        )
        try:
            worker.run(stop, poll_seconds=args.poll)
        finally:
            worker.close()
    print(f"[stream] stopped after {worker.outcomes} files", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `mlops` argument parser."""
    parser = argparse.ArgumentParser(prog="mlops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def scenario_options(command: argparse.ArgumentParser, days: int, per_day: int = 0) -> None:
        command.add_argument("--days", type=int, default=days, help="landing days to simulate")
        command.add_argument("--seed", type=int, default=7, help="simulator seed")
        command.add_argument(
            "--label-days",
            type=int,
            default=3,
            help="chargebacks arrive 1 to this many days after the transaction",
        )
        command.add_argument(
            "--per-day",
            type=int,
            default=per_day,
            help=f"transactions per day (default: {per_day or 'the scenario default'})",
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
    demo = sub.add_parser(
        "demo", help="the whole loop: lake, champion, predictions, drift, retraining"
    )
    # Sized for a few minutes on a small machine: enough mature labels for a champion, and
    # drifted days enough for the sensor's labelled episode and a day of the new champion.
    scenario_options(demo, days=10, per_day=10_000)
    demo.add_argument(
        "--drift-days", type=int, default=7, help="days simulated after the normal ones"
    )
    demo.add_argument(
        "--no-drift", action="store_true", help="simulate the later days without drift"
    )
    demo.set_defaults(func=cmd_demo)
    backfill = sub.add_parser(
        "backfill", help="run a daily job (e.g. medallion_daily) for a range of days"
    )
    backfill.add_argument("job", help="a partitioned job: medallion_daily, features_daily, ...")
    backfill.add_argument("--from", dest="start", required=True, help="first day, YYYY-MM-DD")
    backfill.add_argument("--to", dest="end", default=None, help="last day (default: --from)")
    backfill.set_defaults(func=cmd_backfill)
    tables = sub.add_parser("tables", help="list Delta tables of the active environment")
    tables.set_defaults(func=cmd_tables)
    sql = sub.add_parser(
        "sql",
        help="SQL over the Delta tables: layer.table, env.layer.table, layer.table@VERSION",
        description=(
            "Run a SQL query (polars' SQL) over the active environment's Delta tables, named "
            "layer.table (e.g. silver.transactions); env.layer.table reads another "
            "environment where the access policy allows it; layer.table@3 reads version 3."
        ),
    )
    sql.add_argument("query", help='the query, or "-" to read it from stdin')
    sql.add_argument(
        "--at",
        action="append",
        default=[],
        metavar="TABLE=VERSION",
        help="read TABLE (layer.table or env.layer.table) at a version; repeatable",
    )
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table")
    sql.add_argument(
        "--limit", type=int, default=100, help="at most this many rows (0: all; default 100)"
    )
    sql.set_defaults(func=cmd_sql)
    features = sub.add_parser("features", help="list or describe feature tables")
    features.add_argument("action", choices=("list", "describe"))
    features.add_argument("name", nargs="?", help="feature table (for describe)")
    features.set_defaults(func=cmd_features)
    model = sub.add_parser("model", help="model lifecycle: status, promote, rollback")
    model.add_argument("action", choices=("status", "promote", "rollback"))
    model.add_argument("version", nargs="?", help="version to promote")
    model.add_argument("--why", default="by hand", help="reason recorded with the move")
    model.add_argument("--last", type=int, default=20, help="audit rows shown by status")
    from mlops_assets.models.declaration import MODELS

    model.add_argument(
        "--model",
        default="fraud_detector",
        choices=list(MODELS),
        help="the declared model (models/declaration.py)",
    )
    model.set_defaults(func=cmd_model)
    webhook = sub.add_parser(
        "webhook", help="receive MLflow registry webhooks (serve) or create one (register)"
    )
    webhook.add_argument("action", choices=("serve", "register"))
    webhook.add_argument("url", nargs="?", help="receiver URL (for register)")
    webhook.add_argument("--host", default="127.0.0.1")
    webhook.add_argument("--port", type=int, default=8765)
    webhook.set_defaults(func=cmd_webhook)
    ui = sub.add_parser("ui", help="start the Dagster UI on 127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=cmd_ui)
    serve = sub.add_parser("serve", help="serve the champion model over REST")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--token", default=None, help="bearer token required to score (or MLOPS_SERVE_TOKEN)"
    )
    serve.add_argument(
        "--poll-seconds", type=float, default=2.0, help="how often the champion alias is read"
    )
    serve.add_argument(
        "--log-flush-rows", type=int, default=2_000, help="inference log rows per commit at most"
    )
    serve.add_argument(
        "--log-flush-ms",
        type=int,
        default=1_000,
        help="longest time an inference log row waits for its commit",
    )
    serve.add_argument(
        "--http",
        choices=("threads", "loop"),
        default="loop",
        help=(
            "concurrency: one event loop (the default: more requests per second and a shorter "
            "tail with 8 clients in `python -m benchmarks serving`), or a thread per connection"
        ),
    )
    serve.add_argument(
        "--log-writer",
        choices=("process", "thread"),
        default="process",
        help=(
            "who makes the inference log's commits: a writer process of its own (the default: "
            "the p99 with 8 clients in `python -m benchmarks serving`), or a thread of the server"
        ),
    )
    serve.set_defaults(func=cmd_serve)
    stream = sub.add_parser(
        "stream", help="score landed transactions files as they land (the stream worker)"
    )
    stream.add_argument("--poll", type=float, default=1.0, help="seconds between polls")
    stream.set_defaults(func=cmd_stream)
    stack = sub.add_parser(
        "stack",
        help="the local stack: PostgreSQL, Redis, MLflow, Dagster webservers and daemon, serving",
    )
    stack.add_argument(
        "action", choices=("up", "down", "status"), help="status exits 1 unless all are up"
    )
    stack.set_defaults(func=cmd_stack)
    release = sub.add_parser(
        "release", help="code promotion: the staging stage, deployment to prod, status"
    )
    stages = release.add_subparsers(dest="stage", required=True)
    from mlops_assets.release import deploy as release_deploy
    from mlops_assets.release import staging as release_staging

    release_staging.add_commands(stages)
    release_deploy.add_commands(stages)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mlops` command."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
