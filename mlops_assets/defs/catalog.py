"""The catalog the Dagster UI shows before a run: column schemas, code references, freshness.

Every table's columns are derived from the code that writes it, never listed twice: the
medallion and feature tables by running their transforms on empty frames of their inputs'
schemas (bronze's bounded schema, then silver's contracts, and so on down the graph), the
model, serving and monitoring tables from the schemas their domain modules declare. The
column types are the Arrow types the Delta writes report, so a definition's
`dagster/column_schema` and a materialization's agree (tested).
"""

from __future__ import annotations

import datetime
import functools
import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import narwhals as nw
import polars as pl
from dagster._core.definitions.metadata import TableMetadataSet

from mlops_assets.lakehouse.delta_io import _comparable

# A day with no meaning: transforms are run on empty frames of it.
_DAY = datetime.date(2000, 1, 1)
_NOW = datetime.datetime(2000, 1, 2, tzinfo=datetime.UTC)

# Gold and the feature tables are built daily (the medallion and refresh schedules): a table
# not materialized for this long is late (warn), then stale (fail).
FRESHNESS_WARN = datetime.timedelta(hours=26)
FRESHNESS_FAIL = datetime.timedelta(hours=50)
FRESH_LAYERS = ("gold", "features")


def _silver_tables() -> dict[str, dict[str, pl.DataType]]:
    """Bronze, silver and both quarantines of each source, from bronze's schema and contracts."""
    from mlops_assets.defs.bronze import bronze_schema
    from mlops_assets.defs.silver import SILVER_TABLES
    from mlops_assets.transforms.bronze import LINE_NUMBER, RAW, REASON, SOURCE_FILE
    from mlops_assets.transforms.quarantine import to_quarantine
    from mlops_assets.transforms.silver import (
        published_columns,
        resolve_versions,
        validate,
        with_event_date,
    )

    tables: dict[str, dict[str, pl.DataType]] = {}
    for spec in SILVER_TABLES:
        source = spec.source
        bronze = pl.DataFrame(schema=bronze_schema(source)).with_columns(
            pl.lit(_DAY).alias("landing_date")
        )
        tables[f"bronze/{source}"] = dict(bronze.schema)
        rejects = pl.DataFrame(
            schema={
                SOURCE_FILE: pl.String,
                LINE_NUMBER: pl.Int64,
                RAW: pl.String,
                REASON: pl.String,
            }
        )
        tables[f"quarantine/bronze_{source}"] = _schema(
            to_quarantine(
                nw.from_native(rejects), stage="bronze", landing_date=_DAY, quarantined_at=_NOW
            )
        )
        valid, rejected = validate(nw.from_native(bronze), spec.contract, "landing_date")
        valid = with_event_date(valid, spec.time_column, spec.date_column)
        published = pl.DataFrame(schema=dict.fromkeys(published_columns(spec.contract), pl.String))
        resolved = resolve_versions(valid, spec.contract, nw.from_native(published))
        tables[f"silver/{source}"] = _schema(resolved.unique)
        raw_fields = [c for c in bronze.columns if c not in (SOURCE_FILE, LINE_NUMBER)]
        tables[f"quarantine/silver_{source}"] = _schema(
            to_quarantine(
                rejected,
                stage="silver",
                landing_date=_DAY,
                quarantined_at=_NOW,
                raw_fields=raw_fields,
            )
        )
    return tables


def _gold_and_feature_tables(
    silver: Mapping[str, Mapping[str, pl.DataType]],
) -> dict[str, dict[str, pl.DataType]]:
    """Gold and the feature tables, from their transforms on empty silver frames."""
    from mlops_assets.transforms.features import card_behaviour, merchant_daily, merchant_risk
    from mlops_assets.transforms.gold import merchant_category_daily
    from mlops_assets.transforms.labels import day_reports

    transactions = pl.DataFrame(schema=silver["silver/transactions"])
    labels = pl.DataFrame(schema=silver["silver/labels"])
    gold = merchant_category_daily(nw.from_native(transactions), nw.from_native(labels))
    reported = (
        day_reports(nw.from_native(labels), _DAY)
        .to_native()
        .join(transactions.select("transaction_id", "merchant_id"), on="transaction_id")
    )
    daily = merchant_daily(transactions, reported, _DAY)
    tables = {
        "gold/merchant_category_daily": _schema(gold),
        "features/card_behaviour": _schema(card_behaviour(transactions, _DAY)),
        "features/merchant_daily": _schema(daily),
    }
    tables["features/merchant_risk"] = _schema(
        merchant_risk(pl.DataFrame(schema=tables["features/merchant_daily"]), _DAY)
    )
    return tables


def _model_tables(tables: Mapping[str, Mapping[str, pl.DataType]]) -> dict[str, Any]:
    """Each declared model's training set and the tables keyed by its feature spec."""
    from mlops_assets.models import windows as training_windows
    from mlops_assets.models.declaration import MODELS
    from mlops_assets.monitoring.performance import PERFORMANCE_SCHEMA
    from mlops_assets.monitoring.windows import DRIFT_TABLE_SCHEMA, PREDICTION
    from mlops_assets.serving.inference_log import inference_schema

    def scan(name: str) -> pl.LazyFrame:
        return pl.LazyFrame(schema=tables[name])

    out: dict[str, Any] = {}
    log: dict[str, pl.DataType] = {}
    window = training_windows.Window(_DAY, _DAY, _NOW, _NOW)
    for model in MODELS.values():
        spec = model.spec
        events = training_windows.labelled_events(
            scan("silver/transactions"), scan("silver/labels"), window, spec.request_fields
        )
        rows = training_windows.feature_rows(scan, spec, model.windows, _DAY, _DAY)
        training = spec.training_set(events, rows)
        prefix = "" if model.suffix == "" else f"{model.name}__"
        out[f"ml/{prefix}training_set"] = dict(training.schema)
        # A version's reference: its inputs as the training set holds them, and its scores.
        out[f"monitoring/{prefix}reference"] = {
            **{c: training.schema[c] for c in spec.feature_columns},
            PREDICTION: pl.Float64(),
            "model_version": pl.String(),
        }
        if prefix:
            out[f"monitoring/{prefix}drift_metrics"] = dict(DRIFT_TABLE_SCHEMA)
            out[f"monitoring/{prefix}performance"] = _performance(PERFORMANCE_SCHEMA)
        for name, dtype in inference_schema(spec).items():
            log.setdefault(name, dtype)
    out["serving/inference_log"] = log
    return out


def _performance(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A performance table's columns: the day and version, the figures, the label horizon."""
    return {
        "day": pl.Date(),
        "model_version": pl.String(),
        **schema,
        "label_horizon": pl.Datetime("us", "UTC"),
        "mature": pl.Boolean(),
    }


def _declared_tables() -> dict[str, Any]:
    """Tables whose domain module declares their columns."""
    from mlops_assets.models.audit import SCHEMA as AUDIT_SCHEMA
    from mlops_assets.monitoring.alerts import SCHEMA as ALERTS_SCHEMA
    from mlops_assets.monitoring.performance import PERFORMANCE_SCHEMA
    from mlops_assets.monitoring.profile import PROFILE_SCHEMA
    from mlops_assets.monitoring.windows import DRIFT_TABLE_SCHEMA
    from mlops_assets.serving.streaming import CHECKPOINT_SCHEMA

    return {
        "ml/model_audit": dict(AUDIT_SCHEMA),
        "monitoring/alerts": dict(ALERTS_SCHEMA),
        "monitoring/drift_metrics": dict(DRIFT_TABLE_SCHEMA),
        "monitoring/profiles": {
            "day": pl.Date(),
            "model_version": pl.String(),
            **PROFILE_SCHEMA,
        },
        "monitoring/performance": _performance(PERFORMANCE_SCHEMA),
        "serving/stream_checkpoint": dict(CHECKPOINT_SCHEMA),
    }


# Schemas derived by another process (`preload_table_schemas`), used instead of deriving them.
_PRELOADED: dict[str, dict[str, str]] | None = None


def table_schemas() -> dict[str, dict[str, str]]:
    """Every table's columns (`layer/table` to column name to Arrow type), derived from code."""
    return _PRELOADED if _PRELOADED is not None else _derived_schemas()


def preload_table_schemas() -> None:
    """Derive the schemas in a fresh Python process and use its answer in this one.

    Deriving runs polars, whose thread pool a process must not hold when it forks (a forked
    child inherits the pool's locks but not its threads, and its first parallel polars call
    hangs): the warm launcher's fork server calls this before it loads the definitions.

    Raises:
        RuntimeError: The process failed; its error output is given.
    """
    import json
    import subprocess
    import sys

    global _PRELOADED
    done = subprocess.run(
        [sys.executable, "-m", "mlops_assets.defs.catalog"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"deriving the table schemas failed: {done.stderr[-2000:]}")
    _PRELOADED = json.loads(done.stdout)


@functools.cache
def _derived_schemas() -> dict[str, dict[str, str]]:
    tables: dict[str, Any] = _silver_tables()
    tables.update(_gold_and_feature_tables(tables))
    tables.update(_model_tables(tables))
    tables.update(_declared_tables())
    return {name: _arrow_types(schema) for name, schema in tables.items()}


def column_schema(table: str, descriptions: Mapping[str, str] | None = None) -> dg.TableSchema:
    """The `dagster/column_schema` of a table (`layer/table`), its columns described.

    Raises:
        KeyError: The catalog does not know the table (it names the known ones).
    """
    schemas = table_schemas()
    if table not in schemas:
        raise KeyError(f"no column schema for table {table!r}; known: {', '.join(sorted(schemas))}")
    descriptions = descriptions or {}
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, kind, description=descriptions.get(name))
            for name, kind in schemas[table].items()
        ]
    )


def _schema(frame: Any) -> dict[str, pl.DataType]:
    native = frame.to_native() if isinstance(frame, nw.DataFrame | nw.LazyFrame) else frame
    return dict(native.collect_schema())


def _arrow_types(schema: Mapping[str, Any]) -> dict[str, str]:
    """Polars types as the Arrow type strings a Delta write reports (`WriteResult.schema`)."""
    arrow = pl.DataFrame(schema=dict(schema)).to_arrow().schema
    return {field.name: _comparable(field.type) for field in arrow}


def _feature_descriptions(table: str) -> dict[str, str]:
    from mlops_assets.features.registry import FEATURE_TABLES

    for definition in FEATURE_TABLES.values():
        if str(definition.ref) == table:
            return {f.name: f"{f.description} Default {f.default}." for f in definition.features}
    return {}


def code_reference(obj: Any, label: str | None = None) -> dg.LocalFileCodeReference:
    """A reference to where a function, class or module is defined."""
    target = inspect.unwrap(obj)
    file_path = inspect.getsourcefile(target)
    if file_path is None:
        raise ValueError(f"{obj!r} has no source file")
    _, line = inspect.getsourcelines(target)
    return dg.LocalFileCodeReference(
        file_path=str(Path(file_path).resolve()), line_number=max(line, 1), label=label
    )


def catalogued(
    assets: Iterable[Any],
    *,
    references: Mapping[str, Iterable[Callable[..., Any] | Any]] | None = None,
) -> list[Any]:
    """Assets with the catalog filled in: column schemas, code references, freshness.

    Every spec with a `table` metadata entry the catalog knows gets that table's
    `dagster/column_schema` and `dagster/table_name` (unless it declares its own); every
    asset a reference to the function that builds it (with_source_code_references) and to
    the code named in `references`; gold and feature tables a time-window freshness policy.

    Args:
        assets: Assets definitions, specs and source assets.
        references: Further code per asset key (`layer/table`), such as the transform.
    """
    references = references or {}
    out: list[Any] = []
    with warnings.catch_warnings():
        # Code references and the freshness API are marked beta and preview in Dagster 1.13.
        warnings.filterwarnings("ignore", category=dg.BetaWarning)
        warnings.filterwarnings("ignore", category=dg.PreviewWarning)
        for item in dg.with_source_code_references(list(assets)):
            if isinstance(item, dg.AssetsDefinition):
                out.append(item.map_asset_specs(lambda spec: _catalogued(spec, references)))
            elif isinstance(item, dg.AssetSpec):
                out.append(_catalogued(item, references))
            else:
                out.append(item)
    return out


def _catalogued(spec: dg.AssetSpec, references: Mapping[str, Iterable[Any]]) -> dg.AssetSpec:
    key = spec.key.to_user_string()
    metadata = dict(spec.metadata)
    table = metadata.get("table")
    if isinstance(table, str) and "/" in table:
        metadata["dagster/table_name"] = table.replace("/", ".")
        metadata["dagster/storage_kind"] = "deltalake"
        # A spec that declares its columns keeps them; the test of the definitions asks
        # every table asset for a column schema.
        if table in table_schemas() and "dagster/column_schema" not in metadata:
            metadata.update(
                TableMetadataSet(column_schema=column_schema(table, _feature_descriptions(table)))
            )
    existing = metadata.get("dagster/code_references")
    found = list(existing.code_references) if existing is not None else []
    found += [code_reference(obj) for obj in references.get(key, ())]
    if found:
        metadata["dagster/code_references"] = dg.CodeReferencesMetadataValue(code_references=found)
    spec = spec.replace_attributes(metadata=metadata)
    if spec.key.path[0] in FRESH_LAYERS and spec.freshness_policy is None:
        spec = dg.apply_freshness_policy(
            spec,
            dg.FreshnessPolicy.time_window(fail_window=FRESHNESS_FAIL, warn_window=FRESHNESS_WARN),
        )
    return spec


def catalogued_definitions(definitions: dg.Definitions) -> dg.Definitions:
    """The definitions with their assets catalogued (`catalogued`), the rest unchanged."""
    from mlops_assets.models import audit
    from mlops_assets.monitoring import alerts, reference
    from mlops_assets.serving import inference_log, streaming
    from mlops_assets.transforms import features, gold, silver

    references: dict[str, list[Any]] = {
        # Specs without a function of their own: the domain code that writes them.
        "ml/model_audit": [audit.record],
        "monitoring/alerts": [alerts.raise_alert],
        "monitoring/reference": [reference.model_reference],
        "serving/stream_checkpoint": [streaming],
        "serving/inference_log": [inference_log],
        "silver/transactions": [silver.validate, silver.resolve_versions],
        "silver/labels": [silver.validate, silver.resolve_versions],
        "gold/merchant_category_daily": [gold.merchant_category_daily],
        "features/card_behaviour": [features.card_behaviour],
        "features/merchant_daily": [features.merchant_daily],
        "features/merchant_risk": [features.merchant_risk],
    }
    from dagster_shared.record import replace

    return replace(
        definitions, assets=catalogued(list(definitions.assets or []), references=references)
    )


if __name__ == "__main__":
    # `python -m mlops_assets.defs.catalog`: the derived schemas as JSON (`preload_table_schemas`).
    import json

    print(json.dumps(_derived_schemas()))
