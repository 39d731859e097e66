"""Online store assets: the latest feature vector per key, published for serving."""

import datetime
from typing import Any

import dagster as dg
import narwhals as nw

from mlops_assets.defs.resources import LakehouseResource
from mlops_assets.features.online_store import open_online_store
from mlops_assets.features.registry import FEATURE_TABLES, FeatureTable
from mlops_assets.features.spec import tie_breaker

CODE_VERSION = "online-2"
# The engine group of the online assets: the latest rows are picked on polars or on Spark
# (`MLOPS_ENGINE_ONLINE`), then published from the driver.
GROUP = "online"


def latest_rows(
    rows: nw.LazyFrame[Any], table: FeatureTable, newest: datetime.datetime | None
) -> nw.LazyFrame[Any]:
    """The row each key serves, on the engine of `rows` (polars or Spark alike).

    The latest row by the table's timestamp; among rows of a key with the same time, the one
    with the greatest other row key (`transaction_id` for cards), the tie-breaker the
    training set's point-in-time join uses, so training and serving pick the same row. Rows
    older than `max_staleness_days` before `newest` (the table's newest timestamp) are left
    out: serving falls back to the defaults for them, as training does.
    """
    time = table.timestamp_key
    keys = list(table.entity_keys)
    if newest is not None:
        oldest = newest - datetime.timedelta(days=table.max_staleness_days)
        rows = rows.filter(nw.col(time) > oldest)
    column = tie_breaker(table)
    extra = [column] if column and column not in (time, *table.feature_names) else []
    rows = rows.select(*keys, time, *table.feature_names, *extra)
    rows = rows.filter(nw.col(time) == nw.col(time).max().over(*keys))
    if column:
        greatest = nw.col(column).max().over(*keys)
        rows = rows.filter((nw.col(column) == greatest) | greatest.is_null())
    return rows.select(*keys, time, *table.feature_names)


def build_online_asset(table: FeatureTable) -> dg.AssetsDefinition:
    """The asset publishing one feature table's latest rows to the online store."""

    @dg.asset(
        key=["online", table.name],
        deps=[dg.AssetDep(["features", table.name], partition_mapping=dg.AllPartitionMapping())],
        group_name="online",
        owners=[table.owner],
        kinds={"polars", "sqlite"},
        code_version=CODE_VERSION,
        description=(
            f"The latest row per {', '.join(table.entity_keys)} of features/{table.name}, "
            "published to the environment's embedded online store (SQLite) for serving. "
            f"Rows older than {table.max_staleness_days} days before the newest are left out, "
            "so serving falls back to the documented defaults for them, as training does."
        ),
        metadata={"store": "sqlite (embedded); production option: Redis"},
    )
    def _publish(lakehouse: LakehouseResource) -> dg.MaterializeResult:
        lake = lakehouse.store(GROUP)
        version = lake.version(table.ref)
        if version is None:
            raise dg.Failure(f"{table.ref} does not exist yet: materialize it first")
        rows = lake.scan(table.ref, version=version)
        newest = lake.to_polars(rows.select(nw.col(table.timestamp_key).max())).item()
        latest = latest_rows(rows, table, newest)
        (key,) = table.entity_keys
        store = open_online_store(lakehouse.settings)
        try:
            published = store.publish(
                table.name,
                lake.to_polars(latest),
                key=key,
                feature_time=table.timestamp_key,
                features=list(table.feature_names),
                defaults=table.defaults,
            )
        finally:
            store.close()
        lag = (
            (published.published_at - published.latest_feature_time).total_seconds()
            if published.latest_feature_time
            else None
        )
        return dg.MaterializeResult(
            metadata={
                "keys": published.rows,
                "store_path": dg.MetadataValue.path(published.path),
                "store_version": published.version,
                "latest_feature_time": str(published.latest_feature_time),
                "seconds_behind_latest_feature": lag,
                "source_delta_version": version,
                "defaults": dg.MetadataValue.json(table.defaults),
            }
        )

    return _publish


online_assets = [build_online_asset(t) for t in FEATURE_TABLES.values() if t.online]
