"""notebooks/explore_lake.ipynb executed by nbclient (the .venv's ipykernel) on a small lake.

The lake is built here from simulated dirty days: medallion, features, a champion trained and
promoted, and the last days batch-scored into the inference log. The notebook's figures are
then compared with the same figures read straight from the Delta tables.
"""

import json
import os
import sys
from pathlib import Path

import dagster as dg
import nbformat
import polars as pl
import pytest
from nbclient import NotebookClient

from mlops_assets.definitions import build_definitions
from mlops_assets.settings import load_settings
from mlops_assets.simulate import Scenario, simulate
from mlops_assets_tests.integration.conftest import DAYS, QUIET, build_lake, retrain, twelve_days

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "explore_lake.ipynb"
SCORED = DAYS[-2:]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """Twelve dirty days through the lake, a champion, the last two days batch-scored."""
    root = tmp_path_factory.mktemp("notebook")
    settings = load_settings({"MLOPS_DATA_ROOT": str(root), "MLOPS_ENV": "dev"})
    scenario = twelve_days(Scenario.demo)
    simulate(scenario, settings.landing_root)
    defs = build_definitions(settings)
    with dg.DagsterInstance.ephemeral() as instance:
        build_lake(defs, instance, DAYS)
        assert retrain(defs, instance).success
        job = dg.define_asset_job(
            "score", selection=[dg.AssetKey(["serving", "batch_predictions"])]
        )
        scoring = dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("score")
        for day in SCORED:
            result = scoring.execute_in_process(
                instance=instance,
                partition_key=day.isoformat(),
                raise_on_error=False,
                run_config=QUIET,
            )
            assert result.success
    return settings


def delta(settings, layer, name, version=None) -> pl.DataFrame:
    return pl.read_delta(str(settings.lake_root / layer / name), version=version)


def test_the_notebook_runs_on_the_lake_and_its_figures_match_the_tables(lake, monkeypatch):
    settings = lake
    monkeypatch.setenv("MLOPS_DATA_ROOT", str(settings.data_root))
    monkeypatch.setenv("MLOPS_ENV", "dev")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # One extra cell hands the notebook's frames back to the test.
    notebook.cells.append(
        nbformat.v4.new_code_cell(
            "import json\n"
            "print(json.dumps({name: frame.to_dicts() for name, frame in {\n"
            "    'layers': layers, 'by_category': by_category, 'quarantine': quarantine,\n"
            "    'growth': growth, 'scores': scores, 'flagged': flagged}.items()},"
            " default=str))"
        )
    )
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=300,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute(env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    frames = json.loads(notebook.cells[-1].outputs[0]["text"])

    # Every cell of the notebook ran and showed something.
    for cell in notebook.cells[:-1]:
        if cell.cell_type == "code":
            assert cell.outputs, cell.source
            assert not [o for o in cell.outputs if o.output_type == "error"]

    # Layers and rows per layer.
    layers = {row["layer"]: row["rows"] for row in frames["layers"]}
    assert layers["silver"] == delta(settings, "silver", "transactions").height + (
        delta(settings, "silver", "labels").height
    )
    assert {"bronze", "silver", "gold", "quarantine", "features", "ml", "serving"} <= set(layers)

    # The join across layers: fraud per merchant category.
    silver = delta(settings, "silver", "transactions")
    labels = delta(settings, "silver", "labels").select("transaction_id", "is_fraud")
    expected = (
        silver.join(labels, on="transaction_id", how="left")
        .group_by("merchant_category")
        .agg(pl.len().alias("transactions"), pl.col("is_fraud").fill_null(False).sum())
    )
    by_category = {r["merchant_category"]: r for r in frames["by_category"]}
    assert set(by_category) == set(expected["merchant_category"])
    for row in expected.iter_rows(named=True):
        assert by_category[row["merchant_category"]]["transactions"] == row["transactions"]
        assert by_category[row["merchant_category"]]["fraud"] == row["is_fraud"]
    assert sum(r["fraud"] for r in frames["by_category"]) > 0

    # The quarantine's reasons: every refused line, by stage.
    refused = {
        stage: delta(settings, "quarantine", f"{stage}_transactions").height
        for stage in ("bronze", "silver")
    }
    by_stage = {}
    for row in frames["quarantine"]:
        by_stage[row["stage"]] = by_stage.get(row["stage"], 0) + row["lines"]
        assert row["example_reason"]
    assert by_stage == refused and all(refused.values())

    # Time travel: version by version, silver grows to today's table.
    growth = [row["rows"] for row in frames["growth"]]
    assert growth == [
        delta(settings, "silver", "transactions", v).height for v in range(len(growth))
    ]
    assert growth[-1] == silver.height and growth == sorted(growth)

    # The model's predictions: scored rows and the flagged share of each scored day.
    log = delta(settings, "serving", "inference_log").filter(
        pl.col("model_name") == "dev.fraud_detector", pl.col("status") == "ok"
    )
    assert sum(r["predictions"] for r in frames["scores"]) == log.height > 0
    flagged = {(r["day"], r["model_version"]): r for r in frames["flagged"]}
    for (day, version), rows in log.group_by("day", "model_version"):
        row = flagged.pop((str(day), version))
        assert row["scored"] == rows.height
        assert row["flagged"] == rows["decision"].sum()
        assert row["flagged_share"] == pytest.approx(rows["decision"].mean())
    assert not flagged
    days = {r["day"] for r in frames["flagged"]}
    assert {d.isoformat() for d in SCORED} <= days


def test_the_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert notebook.metadata.kernelspec.name == "python3"
