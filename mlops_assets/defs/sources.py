"""The landing feeds as observable source assets: bronze's upstream in the lineage graph.

A feed writes files under `<landing root>/<source>/<day>/` (a temporary name, then a rename).
Observing a feed lists its complete files and reports a data version computed from their
names, sizes and modification times, so a file landing (or changing) gives a new version and
bronze shows as out of date with its source.
"""

import datetime
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from mlops_assets.defs.resources import LakehouseResource
from mlops_assets.lakehouse.landing import SOURCES, is_partial
from mlops_assets.settings import Settings

OWNERS = ["team:data-engineering"]
DESCRIPTIONS = {
    "transactions": (
        "Card transactions as the payment feed lands them: CSV files (gzip allowed) under "
        "`<landing root>/transactions/<day>/`, written under a temporary name and renamed "
        "when complete, with a manifest per day. Observed, not materialized: an observation "
        "lists the complete files and reports a data version from their names, sizes and "
        "modification times."
    ),
    "labels": (
        "Chargeback label reports as the card network's feed lands them: CSV files under "
        "`<landing root>/labels/<day>/`, a report per transaction and time. Observed, not "
        "materialized: an observation lists the complete files and reports a data version "
        "from their names, sizes and modification times."
    ),
}


@dataclass(frozen=True)
class FeedState:
    """What a landing feed holds now.

    Attributes:
        version: Digest of every complete file's relative path, size and modification time.
        files: Complete files.
        bytes: Their total size.
        days: Day folders holding at least one complete file.
        latest_file: The file modified last (relative to the feed's folder), or "".
        latest_mtime: Its modification time (UTC), or None.
    """

    version: str
    files: int
    bytes: int
    days: int
    latest_file: str
    latest_mtime: datetime.datetime | None


def feed_state(landing_root: Path, source: str) -> FeedState:
    """List a feed's complete files (partial names left out) and digest them.

    Args:
        landing_root: The environment's landing root.
        source: The feed (`transactions`, `labels`).

    Raises:
        ValueError: The source is not a landing feed.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown landing source {source!r}; feeds are {', '.join(SOURCES)}")
    folder = landing_root / source
    digest = hashlib.sha256()
    files = size = 0
    days: set[str] = set()
    latest: tuple[int, str] = (-1, "")
    paths = sorted(folder.glob("*/*")) if folder.is_dir() else []
    for path in paths:
        if not path.is_file() or is_partial(path.name) or is_partial(path.parent.name):
            continue
        stat = path.stat()
        relative = path.relative_to(folder).as_posix()
        digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        files += 1
        size += stat.st_size
        days.add(path.parent.name)
        latest = max(latest, (stat.st_mtime_ns, relative))
    return FeedState(
        version=digest.hexdigest()[:16] if files else "empty",
        files=files,
        bytes=size,
        days=len(days),
        latest_file=latest[1],
        latest_mtime=(
            datetime.datetime.fromtimestamp(latest[0] / 1e9, datetime.UTC)
            if latest[0] >= 0
            else None
        ),
    )


def landing_source(source: str, settings: Settings) -> dg.AssetsDefinition:
    """The observable source asset of one landing feed.

    Args:
        source: The feed (`transactions`, `labels`).
        settings: The environment (its landing folder is shown; the resource's is observed).
    """
    with warnings.catch_warnings():
        # Observable source assets are marked beta in Dagster 1.13.
        warnings.filterwarnings("ignore", category=dg.BetaWarning)
        return _observable(source, settings)


def _observable(source: str, settings: Settings) -> dg.AssetsDefinition:
    @dg.multi_observable_source_asset(
        name=f"landing_{source}",
        specs=[
            dg.AssetSpec(
                key=["landing", source],
                group_name="landing",
                description=DESCRIPTIONS[source],
                owners=OWNERS,
                kinds={"csv", "file"},
                code_version="landing-1",
                metadata={"folder": dg.MetadataValue.path(str(settings.landing_root / source))},
            )
        ],
    )
    def _observe(lakehouse: LakehouseResource):
        state = feed_state(Path(lakehouse.landing_root), source)
        yield dg.ObserveResult(
            asset_key=["landing", source],
            data_version=dg.DataVersion(state.version),
            metadata={
                "files": state.files,
                "bytes": state.bytes,
                "days": state.days,
                "latest_file": state.latest_file,
                **(
                    {"latest_modified": dg.MetadataValue.timestamp(state.latest_mtime)}
                    if state.latest_mtime
                    else {}
                ),
                "folder": dg.MetadataValue.path(str(Path(lakehouse.landing_root) / source)),
            },
        )

    return _observe


def landing_sources(settings: Settings) -> list[dg.AssetsDefinition]:
    """The landing feeds of an environment, one observable source asset each."""
    return [landing_source(source, settings) for source in SOURCES]
