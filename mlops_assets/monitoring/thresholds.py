"""Every monitoring threshold, defined once, and the one rule each is compared by.

The statistics (`drift.compute_drift`), the loop's policy (`policy.DriftPolicy`), Evidently's
report (`report.drift_report_html`) and the Dagster resource (`defs.monitoring`, whose fields
`MLOPS_MONITORING` overrides) all take their limits from a `Thresholds` and compare with the
functions below; none keeps a number or a comparison of its own.

Comparison rules:

- **At or above the limit** (`reached(value, limit)`: `value >= limit`) for every figure that
  grows with drift: a column's distance (`wasserstein`, `jensenshannon`), the share of drifted
  features (`drift_share`: a window has drifted when `share >= drift_share`, Evidently's
  dataset rule), the prediction's drift score (`prediction_drift`) and PSI levels
  (`psi_moderate`, `psi_major`).
- **p-values** drift when small: `ks` when `p <= limit`, `chisquare` and `z` when `p < limit`
  (Evidently's own rules, kept for parity with it).
- **Below the floor** (`below(value, floor)`: `value < floor`) for a quality figure: a window
  with mature labels alerts when its PR-AUC is below `min_pr_auc`.

Label maturity (`label_maturity_days`) is a duration, not a comparison: a transaction without
chargeback is legitimate once it is that many days old.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Methods whose score is a p-value (drifted when small), and the one among them that
# includes its limit.
P_VALUE_METHODS = frozenset({"ks", "chisquare", "z"})
_INCLUSIVE_P_VALUE = "ks"
METHODS = ("wasserstein", "jensenshannon", "ks", "chisquare", "z")


def reached(value: float, limit: float) -> bool:
    """Whether a figure that grows with drift has reached its limit: `value >= limit`."""
    return value >= limit


def below(value: float, floor: float) -> bool:
    """Whether a quality figure fell below its floor: `value < floor`."""
    return value < floor


def column_drifted(method: str, score: float, limit: float) -> bool:
    """A column's verdict from its method's score (see the module docstring for the rules).

    Raises:
        ValueError: `method` is not one of `METHODS`.
    """
    if method not in METHODS:
        raise ValueError(f"drift method {method!r} is not one of {', '.join(METHODS)}")
    if method == _INCLUSIVE_P_VALUE:
        return score <= limit
    if method in P_VALUE_METHODS:
        return score < limit
    return reached(score, limit)


@dataclass(frozen=True)
class Thresholds:
    """The monitoring thresholds (defaults: Evidently's and the conventional ones).

    Attributes:
        drift_share: A window has drifted when at least this share of its features drifted.
        wasserstein: Normalized Wasserstein distance at or above which a numeric column drifted.
        jensenshannon: Jensen-Shannon distance at or above which a categorical column drifted.
        ks: Kolmogorov-Smirnov p-value at or below which a column drifted (small references).
        chisquare: Chi-square p-value below which a column drifted (small references).
        z: Two-proportion z-test p-value below which a column drifted (small references).
        psi_moderate: PSI at or above which a shift is moderate.
        psi_major: PSI at or above which a shift is major.
        prediction_drift: Drift score of the predictions at or above which a window alerts.
        min_pr_auc: PR-AUC (with mature labels) below which a window alerts.
        label_maturity_days: Days after which a transaction without chargeback is legitimate.
    """

    drift_share: float = 0.5
    wasserstein: float = 0.1
    jensenshannon: float = 0.1
    ks: float = 0.05
    chisquare: float = 0.05
    z: float = 0.05
    psi_moderate: float = 0.1
    psi_major: float = 0.25
    prediction_drift: float = 0.1
    min_pr_auc: float = 0.3
    label_maturity_days: int = 3

    def __post_init__(self) -> None:
        for name in ("drift_share", "ks", "chisquare", "z", "min_pr_auc"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"threshold {name} must be in [0, 1], got {value}")
        for name in ("wasserstein", "jensenshannon", "psi_moderate", "psi_major"):
            if getattr(self, name) < 0:
                raise ValueError(f"threshold {name} must be at least 0, got {getattr(self, name)}")
        if self.prediction_drift < 0:
            raise ValueError(
                f"threshold prediction_drift must be at least 0, got {self.prediction_drift}"
            )
        if self.psi_major < self.psi_moderate:
            raise ValueError(
                f"threshold psi_major ({self.psi_major}) is below "
                f"psi_moderate ({self.psi_moderate})"
            )
        if self.label_maturity_days < 0:
            raise ValueError(
                f"label_maturity_days must be at least 0, got {self.label_maturity_days}"
            )

    def method_limits(self) -> dict[str, float]:
        """The per-method column limits, by method name."""
        return {method: getattr(self, method) for method in METHODS}

    def dataset_drifted(self, share: float) -> bool:
        """Whether a share of drifted features makes the window drifted (`share >= drift_share`)."""
        return reached(share, self.drift_share)

    def prediction_drifted(self, score: float) -> bool:
        """Whether the predictions' drift score alerts (`score >= prediction_drift`)."""
        return reached(score, self.prediction_drift)

    def performance_low(self, pr_auc: float | None) -> bool:
        """Whether a PR-AUC with mature labels alerts (`pr_auc < min_pr_auc`; None: unknown)."""
        return pr_auc is not None and below(pr_auc, self.min_pr_auc)

    def psi_level(self, psi: float) -> str:
        """`major` at or above `psi_major`, `moderate` at or above `psi_moderate`, else `stable`."""
        if reached(psi, self.psi_major):
            return "major"
        return "moderate" if reached(psi, self.psi_moderate) else "stable"

    def as_dict(self) -> dict[str, float | int]:
        """The thresholds by name (for metadata and logs)."""
        return asdict(self)


DEFAULT = Thresholds()
