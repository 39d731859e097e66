"""One definition of each monitoring threshold: one setting changes every verdict."""

import dataclasses
import datetime
import json

import numpy as np
import polars as pl
import pytest

from mlops_assets.definitions import build_definitions
from mlops_assets.defs.monitoring import MonitoringResource
from mlops_assets.monitoring.drift import (
    DEFAULT_DRIFT_SHARE,
    DEFAULT_THRESHOLDS,
    compute_drift,
    psi_level,
)
from mlops_assets.monitoring.policy import DriftPolicy, Window
from mlops_assets.monitoring.report import preset_options
from mlops_assets.monitoring.thresholds import DEFAULT, Thresholds, column_drifted, reached
from mlops_assets.settings import SettingsError, load_settings

DAY = datetime.date(2026, 1, 5)


def frames(columns: int = 6, shifted: int = 2, rows: int = 5_000):
    """Reference and current frames where `shifted` of `columns` numeric features moved."""
    rng = np.random.default_rng(3)
    reference = pl.DataFrame({f"f{i}": rng.normal(0, 1, rows) for i in range(columns)})
    current = pl.DataFrame(
        {f"f{i}": rng.normal(2.0 if i < shifted else 0.0, 1, rows) for i in range(columns)}
    )
    return reference, current


def resource(tmp_path, **monitoring) -> MonitoringResource:
    """The monitoring resource the definitions build from MLOPS_MONITORING."""
    settings = load_settings(
        {"MLOPS_DATA_ROOT": str(tmp_path), "MLOPS_MONITORING": json.dumps(monitoring)}
    )
    return build_definitions(settings).resources["monitoring"]


def verdicts(monitoring: MonitoringResource, reference, current) -> dict[str, bool]:
    """Whether the window drifted, by the statistics, the policy and the report's options."""
    limits = monitoring.thresholds()
    result = compute_drift(reference, current, thresholds=limits)
    share = result.summary.drifted_share
    window = Window(DAY, "1", drifted_share=share, prediction_drift=0.0)
    options = preset_options(limits, reference.height)
    return {
        "statistics": result.summary.dataset_drift,
        "policy": bool(window.reasons(monitoring.policy())),
        # Evidently reports dataset drift when its share reaches `drift_share`.
        "report": reached(share, options["drift_share"]),
    }


def test_changing_the_one_drift_share_setting_changes_every_verdict(tmp_path):
    reference, current = frames()
    default = resource(tmp_path / "a")
    assert compute_drift(reference, current).summary.drifted_columns == 2  # share 1/3
    assert verdicts(default, reference, current) == {
        "statistics": False,
        "policy": False,
        "report": False,
    }
    lower = resource(tmp_path / "b", drift_share=0.3)
    assert lower.thresholds().drift_share == 0.3
    assert verdicts(lower, reference, current) == {
        "statistics": True,
        "policy": True,
        "report": True,
    }
    # At the limit itself every verdict is "drifted" (share >= limit).
    exact = resource(tmp_path / "c", drift_share=1 / 3)
    assert set(verdicts(exact, reference, current).values()) == {True}


def test_a_method_limit_changes_the_columns_the_policy_and_the_report_alike(tmp_path):
    reference, current = frames()
    loose = resource(tmp_path, wasserstein=5.0)
    result = compute_drift(reference, current, thresholds=loose.thresholds())
    assert result.columns.get_column("threshold").unique().to_list() == [5.0]
    assert not result.columns.get_column("drifted").any()
    assert preset_options(loose.thresholds(), reference.height)["num_threshold"] == 5.0
    assert preset_options(loose.thresholds(), 500)["num_threshold"] == DEFAULT.ks
    assert verdicts(loose, reference, current) == {
        "statistics": False,
        "policy": False,
        "report": False,
    }


def test_every_default_is_the_thresholds_default():
    assert DEFAULT.drift_share == DEFAULT_DRIFT_SHARE
    assert DEFAULT.method_limits() == DEFAULT_THRESHOLDS
    assert DriftPolicy().thresholds == DEFAULT
    assert MonitoringResource().thresholds() == DEFAULT
    names = {f.name for f in dataclasses.fields(Thresholds)}
    assert names <= set(MonitoringResource.model_fields)


def test_the_comparison_rules():
    assert reached(0.5, 0.5) and not reached(0.49, 0.5)
    assert column_drifted("wasserstein", 0.1, 0.1) and column_drifted("jensenshannon", 0.2, 0.1)
    assert column_drifted("ks", 0.05, 0.05) and not column_drifted("chisquare", 0.05, 0.05)
    assert column_drifted("z", 0.01, 0.05)
    with pytest.raises(ValueError, match="drift method 'psi' is not one of"):
        column_drifted("psi", 1.0, 0.1)
    limits = Thresholds(psi_moderate=0.2, psi_major=0.5)
    assert [psi_level(v, limits) for v in (0.1, 0.2, 0.49, 0.5)] == [
        "stable",
        "moderate",
        "moderate",
        "major",
    ]
    assert Thresholds(min_pr_auc=0.3).performance_low(0.29)
    assert not Thresholds(min_pr_auc=0.3).performance_low(None)


def test_bad_thresholds_fail_naming_the_setting(tmp_path):
    with pytest.raises(SettingsError, match="MLOPS_MONITORING.*drift_share must be in"):
        resource(tmp_path, drift_share=1.5)
    with pytest.raises(SettingsError, match="psi_major"):
        resource(tmp_path, psi_major=0.05)
    with pytest.raises(ValueError, match="unknown drift methods \\['psi'\\]"):
        compute_drift(*frames(), thresholds={"psi": 0.1})
