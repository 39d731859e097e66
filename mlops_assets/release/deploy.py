"""Deployment of code to prod: the record of what runs there, and what it makes stale.

`mlops release deploy` runs in prod only, from the checkout CI has just installed (the release
tag). It records the deployment in prod's append-only table `ml/deployments`: the git commit,
the tag if one points at it, whether the work tree was clean (and what differed), who, when,
and the code version of every asset. It asks a running prod Dagster webserver, when one
answers, to reload its code location, and reports two things:

- the assets whose code version changed since the previous deployment (the record's own
  comparison), and
- the assets Dagster now shows as needing refresh because of a code change: Dagster's own
  staleness (`CachingStaleStatusResolver`, causes of category `CODE`), evaluated with the
  deployed definitions against prod's Dagster instance, partition by partition for
  partitioned assets.

Models are not deployed here: they move through the registry (`mlops model promote`) on their
own lifecycle, and a code deployment leaves the registry as it was.

`mlops release status` shows the deployed commit (read from prod, as the read policy allows),
what the local checkout has that prod does not (commits, uncommitted files, changed code
versions) and the assets stale by code in the active environment.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import subprocess
import sys
import urllib.error
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from mlops_assets.lakehouse.catalog import Catalog, TableRef
from mlops_assets.lakehouse.delta_io import append_table, scan_table, table_exists
from mlops_assets.settings import Settings, project_root

DEPLOYMENTS = TableRef("ml", "deployments")
DEPLOY_ENV = "prod"

SCHEMA = {
    "at": pl.Datetime("us", "UTC"),
    "env": pl.String,
    "commit": pl.String,
    "tag": pl.String,
    "clean": pl.Boolean,
    "uncommitted": pl.String,
    "who": pl.String,
    "previous_commit": pl.String,
    "code_versions": pl.String,
    "changed_assets": pl.String,
    "stale_by_code": pl.String,
    "reload": pl.String,
}

RELOAD_LOCATION = """
mutation($name: String!) {
  reloadRepositoryLocation(repositoryLocationName: $name) {
    __typename
    ... on WorkspaceLocationEntry {
      name
      loadStatus
      locationOrLoadError {
        __typename
        ... on PythonError { message cause { message cause { message } } }
      }
    }
    ... on ReloadNotSupported { message }
    ... on RepositoryLocationNotFound { message }
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""


class DeployError(RuntimeError):
    """A deployment cannot be made or described (wrong environment, no git, bad assets)."""


@dataclass(frozen=True)
class GitState:
    """What a checkout holds.

    Attributes:
        commit: The commit checked out (`HEAD`).
        tag: A tag pointing at that commit, if any (the release tag in CI).
        clean: Whether the work tree equals the commit (no modified or untracked file).
        uncommitted: `git status --porcelain` lines of what differs, when not clean.
    """

    commit: str
    tag: str | None
    clean: bool
    uncommitted: tuple[str, ...] = ()


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)


def git_state(root: Path) -> GitState:
    """The commit, tag and cleanliness of the checkout at `root`.

    Raises:
        DeployError: `root` is not a git work tree (a deployment records its commit).
    """
    head = _git(root, "rev-parse", "HEAD")
    if head.returncode != 0:
        raise DeployError(
            f"{root} is not a git work tree with a commit ({head.stderr.strip()}); a deployment "
            "records the commit it deploys: deploy from a checkout of the release"
        )
    tag = _git(root, "describe", "--tags", "--exact-match", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=normal")
    if status.returncode != 0:
        raise DeployError(f"git status failed in {root}: {status.stderr.strip()}")
    changes = tuple(line for line in status.stdout.splitlines() if line.strip())
    return GitState(
        commit=head.stdout.strip(),
        tag=tag.stdout.strip() if tag.returncode == 0 else None,
        clean=not changes,
        uncommitted=changes,
    )


def commits_since(root: Path, commit: str) -> list[str] | None:
    """One line per commit of `HEAD` not in `commit`; None when `commit` is not in the clone."""
    if _git(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        return None
    log = _git(root, "log", "--oneline", f"{commit}..HEAD")
    return log.stdout.splitlines() if log.returncode == 0 else None


def code_versions(defs: Any) -> dict[str, str]:
    """The code version of every asset of the definitions, by asset key (`layer/name`).

    Assets described only (asset specs, observed sources) are included when they declare one.

    Raises:
        DeployError: A materializable asset declares no code version: Dagster would then
            treat every materialization as new data, and no code change could be traced.
    """
    graph = defs.resolve_asset_graph()
    versions: dict[str, str] = {}
    missing: list[str] = []
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        if node.code_version:
            versions[name] = node.code_version
        elif node.is_materializable:
            missing.append(name)
    if missing:
        raise DeployError(
            f"assets without a code version: {', '.join(sorted(missing))}; give each a "
            "code_version in its definition (defs/), so a deployment can say what it changed"
        )
    return dict(sorted(versions.items()))


@dataclass(frozen=True)
class AssetChange:
    """An asset whose code version differs between two deployments (None: absent)."""

    asset: str
    before: str | None
    after: str | None


def changed_assets(before: Mapping[str, str] | None, after: Mapping[str, str]) -> list[AssetChange]:
    """The assets added, removed or with another code version; every asset when no `before`."""
    before = before or {}
    return [
        AssetChange(name, before.get(name), after.get(name))
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    ]


@dataclass(frozen=True)
class StaleByCode:
    """An asset Dagster shows as stale because its code version changed.

    Attributes:
        asset: The asset key (`layer/name`).
        partitions: The stale partitions of a partitioned asset (empty when unpartitioned).
        materialized: How many partitions are materialized (1 for an unpartitioned asset).
        recorded: The code version the asset's latest materialization was made with.
        current: The code version of the definitions.
        reason: Dagster's stale cause.
    """

    asset: str
    partitions: tuple[str, ...]
    materialized: int
    recorded: tuple[str, ...]
    current: str
    reason: str


def stale_by_code(defs: Any, instance: Any) -> list[StaleByCode]:
    """The assets Dagster shows as stale with a code cause, for `defs` on `instance`.

    Dagster's own resolver (`CachingStaleStatusResolver`) decides, with the code cause it
    gives first among an asset's stale causes (the definitions' code version against the one
    in the latest materialization's provenance); an unpartitioned asset is asked once, a
    partitioned one for each of its materialized partitions (Dagster gives a partitioned
    asset a stale status per partition only): about 17 ms a partition. Unmaterialized assets
    are missing, not stale.
    """
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import (
        CachingStaleStatusResolver,
        StaleCauseCategory,
    )
    from dagster._core.definitions.events import AssetKeyPartitionKey
    from dagster._time import get_current_datetime

    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance, graph, loading_context=view)
    found: list[StaleByCode] = []
    for key in sorted(graph.materializable_asset_keys, key=lambda k: k.to_user_string()):
        node = graph.get(key)
        if node.is_partitioned:
            partitions: list[str | None] = sorted(instance.get_materialized_partitions(key))
        else:
            partitions = [None] if instance.get_latest_materialization_event(key) else []
        stale: list[str | None] = []
        recorded: set[str] = set()
        reason = ""
        for partition in partitions:
            # The resolver's code cause alone: what `get_stale_causes` yields first, without
            # walking the data causes of every dependency (ten times slower per partition).
            cause = resolver._get_code_version_stale_cause(  # noqa: SLF001
                key=AssetKeyPartitionKey(key, partition)
            )
            if cause is not None and cause.category == StaleCauseCategory.CODE:
                stale.append(partition)
                reason = cause.reason
                provenance = resolver._get_current_data_provenance(key=cause.key)  # noqa: SLF001
                if provenance and provenance.code_version:
                    recorded.add(provenance.code_version)
        if stale:
            found.append(
                StaleByCode(
                    asset=key.to_user_string(),
                    partitions=tuple(p for p in stale if p is not None),
                    materialized=len(partitions),
                    recorded=tuple(sorted(recorded)),
                    current=node.code_version or "",
                    reason=reason,
                )
            )
    return found


@dataclass(frozen=True)
class Reload:
    """What the prod Dagster webserver said when asked to reload its code locations.

    Attributes:
        port: The webserver's port on 127.0.0.1.
        answered: Whether a webserver answered there.
        reloaded: The locations reloaded and loaded again.
        failed: Location name to the error it reported.
    """

    port: int
    answered: bool
    reloaded: tuple[str, ...] = ()
    failed: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for people."""
        where = f"Dagster webserver on 127.0.0.1:{self.port}"
        if not self.answered:
            return f"no {where} answered; its code loads when it starts"
        parts = []
        if self.reloaded:
            parts.append(f"reloaded {', '.join(self.reloaded)}")
        if self.failed:
            parts.append(
                "failed " + "; ".join(f"{name}: {why}" for name, why in self.failed.items())
            )
        return f"{where}: {', '.join(parts) or 'no code location to reload'}"


def _python_error(error: Mapping[str, Any] | None) -> str:
    """A PythonError's message followed by its causes' (the user code's own error last)."""
    messages = []
    while error:
        messages.append((error.get("message") or error.get("__typename", "")).strip())
        error = error.get("cause")
    return " caused by ".join(m for m in messages if m) or "did not load"


def reload_webserver(port: int, timeout: float = 120.0) -> Reload:
    """Ask the Dagster webserver on 127.0.0.1:`port` to reload each of its code locations.

    A location reloads by restarting its code server, which imports the code now on disk.
    No webserver answering is not an error: there is nothing to reload.
    """
    from mlops_assets.stack.dagster_servers import graphql

    query = "{ workspaceOrError { __typename ... on Workspace { locationEntries { name } } } }"
    try:
        data = graphql(port, query, timeout=5.0)
    except (urllib.error.URLError, OSError, ValueError):
        return Reload(port, answered=False)
    workspace = data["workspaceOrError"]
    if workspace["__typename"] != "Workspace":
        return Reload(port, True, failed={"workspace": workspace["__typename"]})
    reloaded: list[str] = []
    failed: dict[str, str] = {}
    for entry in workspace["locationEntries"]:
        name = entry["name"]
        try:
            answer = graphql(port, RELOAD_LOCATION, {"name": name}, timeout=timeout)
        except (urllib.error.URLError, OSError, ValueError, RuntimeError) as error:
            failed[name] = f"{type(error).__name__}: {error}"
            continue
        result = answer["reloadRepositoryLocation"]
        if result["__typename"] != "WorkspaceLocationEntry":
            failed[name] = f"{result['__typename']}: {result.get('message', '')}"
        elif result["locationOrLoadError"]["__typename"] != "RepositoryLocation":
            failed[name] = _python_error(result["locationOrLoadError"])
        else:
            reloaded.append(name)
    return Reload(port, True, tuple(reloaded), failed)


@dataclass(frozen=True)
class Deployment:
    """A recorded deployment and what it changed.

    Attributes:
        at: When it was recorded (UTC).
        env: The environment deployed to (prod).
        git: The commit, tag and cleanliness deployed.
        who: Who deployed.
        previous_commit: The commit of the deployment before, if any.
        code_versions: Every asset's code version.
        changed: Assets whose code version differs from the previous deployment's.
        stale: Assets Dagster shows as stale by code after the deployment.
        reload: The webserver's reload.
        table_version: The deployments table's commit holding the record.
    """

    at: datetime.datetime
    env: str
    git: GitState
    who: str
    previous_commit: str | None
    code_versions: dict[str, str]
    changed: list[AssetChange]
    stale: list[StaleByCode]
    reload: Reload
    table_version: int


def deployments(settings: Settings) -> pl.DataFrame:
    """Prod's deployments, oldest first, read as the active environment's policy allows.

    Raises:
        AccessDeniedError: The active environment may not read prod.
    """
    uri = Catalog(settings).uri_for_read(DEPLOYMENTS, DEPLOY_ENV)
    if not table_exists(uri, storage_options=settings.storage_options):
        return pl.DataFrame(schema=SCHEMA)
    return scan_table(uri, storage_options=settings.storage_options).sort("at").collect()


def last_deployment(settings: Settings) -> dict[str, Any] | None:
    """The latest row of prod's deployments table (JSON columns decoded), or None."""
    rows = deployments(settings)
    if rows.is_empty():
        return None
    row = rows.row(rows.height - 1, named=True)
    for column in ("uncommitted", "code_versions", "changed_assets", "stale_by_code"):
        row[column] = json.loads(row[column]) if row[column] else None
    return row


def deploy(
    settings: Settings,
    defs: Any,
    instance: Any,
    *,
    who: str,
    root: Path | None = None,
    webserver_port: int | None = None,
) -> Deployment:
    """Record a deployment of the code of `defs` to prod and say what it changes.

    Args:
        settings: Prod's settings.
        defs: The definitions being deployed (built from the checkout).
        instance: Prod's Dagster instance (staleness is read from it).
        who: Who deploys (a person, or CI's actor and run).
        root: The checkout (default: the project's root).
        webserver_port: The prod Dagster webserver's port (default: the stack's setting).

    Raises:
        DeployError: The active environment is not prod, the checkout is not a git work
            tree, or an asset has no code version.
    """
    if settings.env != DEPLOY_ENV:
        raise DeployError(
            f"mlops release deploy deploys to prod only, and MLOPS_ENV is {settings.env!r}: "
            "run it as MLOPS_ENV=prod from prod's checkout (CI's deploy job does); "
            "other environments take code from their own checkout"
        )
    git = git_state(root or project_root())
    versions = code_versions(defs)
    uri = Catalog(settings).uri_for_write(DEPLOYMENTS)
    previous = last_deployment(settings)
    changed = changed_assets(previous["code_versions"] if previous else None, versions)
    reload = reload_webserver(
        settings.stack_ports.webserver if webserver_port is None else webserver_port
    )
    stale = stale_by_code(defs, instance)
    at = datetime.datetime.now(datetime.UTC)
    row = {
        "at": at,
        "env": settings.env,
        "commit": git.commit,
        "tag": git.tag,
        "clean": git.clean,
        "uncommitted": json.dumps(list(git.uncommitted)),
        "who": who,
        "previous_commit": previous["commit"] if previous else None,
        "code_versions": json.dumps(versions, sort_keys=True),
        "changed_assets": json.dumps([asdict(c) for c in changed]),
        "stale_by_code": json.dumps([asdict(s) for s in stale]),
        "reload": reload.describe(),
    }
    written = append_table(
        uri,
        pl.DataFrame([row], schema=SCHEMA),
        table=str(DEPLOYMENTS),
        count_rows=False,
        storage_options=settings.storage_options,
    )
    return Deployment(
        at=at,
        env=settings.env,
        git=git,
        who=who,
        previous_commit=row["previous_commit"],
        code_versions=versions,
        changed=changed,
        stale=stale,
        reload=reload,
        table_version=written.version,
    )


def status(settings: Settings, defs: Any, instance: Any, root: Path | None = None) -> dict:
    """What prod runs, what this checkout has that prod does not, what is stale by code.

    Args:
        settings: The active environment (it reads prod's deployments as its policy allows).
        defs: The definitions of this checkout.
        instance: The active environment's Dagster instance.
        root: The checkout (default: the project's root).
    """
    root = root or project_root()
    last = last_deployment(settings)
    git = git_state(root)
    versions = code_versions(defs)
    deployed = None
    undeployed: dict[str, Any] = {
        "commits": None,
        "uncommitted": list(git.uncommitted),
        "code_versions": [asdict(c) for c in changed_assets(None, versions)],
    }
    if last is not None:
        deployed = {
            key: last[key] for key in ("at", "commit", "tag", "clean", "who", "previous_commit")
        }
        deployed["at"] = last["at"].isoformat()
        deployed["assets"] = len(last["code_versions"] or {})
        commits = commits_since(root, last["commit"])
        undeployed["commits"] = (
            commits if commits is not None else f"{last['commit']} is not in this clone"
        )
        undeployed["code_versions"] = [
            asdict(c) for c in changed_assets(last["code_versions"], versions)
        ]
    return {
        "env": settings.env,
        "deployed": deployed,
        "checkout": {"commit": git.commit, "tag": git.tag, "clean": git.clean},
        "undeployed": undeployed,
        "stale_by_code": [asdict(s) for s in stale_by_code(defs, instance)],
    }


def _instance_and_defs(settings: Settings) -> tuple[Any, Any]:
    import dagster as dg

    from mlops_assets.definitions import build_definitions
    from mlops_assets.defs.runner import prepare_dagster_home

    home = prepare_dagster_home(settings, set_env=False)
    return build_definitions(settings), dg.DagsterInstance.from_config(str(home))


def _print_deployment(done: Deployment) -> None:
    tag = f" (tag {done.git.tag})" if done.git.tag else ""
    tree = "clean" if done.git.clean else f"{len(done.git.uncommitted)} uncommitted change(s)"
    print(f"deployed {done.git.commit}{tag} to {done.env} by {done.who}, work tree {tree}")
    print(f"recorded in {DEPLOYMENTS} v{done.table_version}; {done.reload.describe()}")
    if done.previous_commit is None:
        print(f"first deployment: {len(done.code_versions)} assets' code versions recorded")
    else:
        print(f"code changed since {done.previous_commit}: {len(done.changed)} asset(s)")
        for change in done.changed:
            print(f"  {change.asset}: {change.before or '(new)'} -> {change.after or '(gone)'}")
    print(f"stale by code in Dagster now: {len(done.stale)} asset(s)")
    for stale in done.stale:
        where = (
            f"{len(stale.partitions)} of {stale.materialized} partitions"
            if stale.partitions
            else "unpartitioned"
        )
        print(
            f"  {stale.asset} ({where}): {stale.reason} "
            f"{'/'.join(stale.recorded) or '?'} -> {stale.current}"
        )


def cmd_deploy(args: argparse.Namespace) -> int:
    """`mlops release deploy`: record a code deployment to prod and report what it changed."""
    from mlops_assets.settings import load_settings

    settings = load_settings()
    if settings.env != DEPLOY_ENV:
        print(
            f"mlops release deploy: MLOPS_ENV is {settings.env!r}; code is deployed to prod "
            "only (MLOPS_ENV=prod, from prod's checkout of the release)",
            file=sys.stderr,
        )
        return 2
    defs, instance = _instance_and_defs(settings)
    try:
        done = deploy(
            settings,
            defs,
            instance,
            who=args.who or getpass.getuser(),
            webserver_port=args.webserver_port,
        )
    except DeployError as error:
        print(f"mlops release deploy: {error}", file=sys.stderr)
        return 2
    finally:
        instance.dispose()
    _print_deployment(done)
    if done.reload.failed:
        print(
            "mlops release deploy: the webserver could not load the deployed code; "
            "the deployment is recorded, fix the code and deploy again",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """`mlops release status`: the deployed commit, undeployed changes, stale-by-code assets."""
    from mlops_assets.settings import load_settings

    settings = load_settings()
    defs, instance = _instance_and_defs(settings)
    try:
        report = status(settings, defs, instance)
    except DeployError as error:
        print(f"mlops release status: {error}", file=sys.stderr)
        return 2
    finally:
        instance.dispose()
    print(json.dumps(report, indent=2, default=str))
    return 0


def add_commands(stages: argparse._SubParsersAction) -> None:
    """Add `mlops release deploy` and `mlops release status` to the `mlops release` parser."""
    deploy_parser = stages.add_parser(
        "deploy",
        help="record the checkout's code as deployed to prod (MLOPS_ENV=prod), reload the "
        "prod Dagster webserver, list what changed and what is stale by code",
    )
    deploy_parser.add_argument(
        "--who", default=None, help="who deploys (default: the user name), e.g. CI's actor"
    )
    deploy_parser.add_argument(
        "--webserver-port",
        type=int,
        default=None,
        help="port of prod's Dagster webserver on 127.0.0.1 (default: MLOPS_STACK_WEBSERVER_PORT)",
    )
    deploy_parser.set_defaults(func=cmd_deploy)
    status_parser = stages.add_parser(
        "status",
        help="the commit deployed to prod, local changes not deployed, assets stale by code",
    )
    status_parser.set_defaults(func=cmd_status)


__all__: Sequence[str] = (
    "DEPLOYMENTS",
    "AssetChange",
    "DeployError",
    "Deployment",
    "GitState",
    "Reload",
    "StaleByCode",
    "changed_assets",
    "code_versions",
    "deploy",
    "deployments",
    "git_state",
    "last_deployment",
    "reload_webserver",
    "stale_by_code",
    "status",
)
