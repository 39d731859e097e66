"""When monitoring asks for retraining: drift and performance thresholds, episodes, cooldown.

A window (a day of predictions by one model version) alerts when too large a share of the
model's features drifted from its training reference, when its predictions drifted, or when
its performance, once labels arrived, fell below a floor. Consecutive alerting windows form
an episode. An episode asks for retraining once enough of its days carry mature labels, so
that the new model can learn the new regime (retraining on drift before any labelled example
of it only relearns the old one); it asks once, under one run key, and no episode asks again
within the cooldown after a retraining.
"""

from __future__ import annotations

import datetime
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from mlops_assets.monitoring.thresholds import DEFAULT, Thresholds


@dataclass(frozen=True)
class DriftPolicy:
    """The closed loop: its thresholds (one `Thresholds`), episodes and cooldown.

    Attributes:
        thresholds: The monitoring thresholds and their comparison rules: a window alerts when
            its share of drifted features reaches `drift_share`, its prediction drift reaches
            `prediction_drift` (normalized Wasserstein distance from the reference
            predictions), or its PR-AUC (with mature labels) is below `min_pr_auc`; labels
            are complete after `label_maturity_days`.
        min_labelled_days: Days of an episode with mature labels before retraining is asked.
        cooldown_days: Days after a retraining during which no new retraining is asked.
    """

    thresholds: Thresholds = DEFAULT
    min_labelled_days: int = 3
    cooldown_days: int = 7

    def __post_init__(self) -> None:
        for name in ("min_labelled_days", "cooldown_days"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")

    @property
    def label_maturity_days(self) -> int:
        """Days after which a day's labels count as complete (of the thresholds)."""
        return self.thresholds.label_maturity_days


@dataclass(frozen=True)
class Window:
    """The monitoring figures of one day of predictions.

    Attributes:
        day: The window's day.
        model_version: The version that made the predictions.
        drifted_share: Share of the model's features that drifted from its reference.
        prediction_drift: Drift score of the predictions from the reference predictions.
        pr_auc: PR-AUC once labels are mature, else None.
    """

    day: datetime.date
    model_version: str
    drifted_share: float
    prediction_drift: float
    pr_auc: float | None = None

    def reasons(self, policy: DriftPolicy) -> list[str]:
        """Why this window alerts (empty when it does not)."""
        limits = policy.thresholds
        found = []
        if limits.dataset_drifted(self.drifted_share):
            found.append(
                f"{self.drifted_share:.0%} of features drifted (limit {limits.drift_share:.0%})"
            )
        if limits.prediction_drifted(self.prediction_drift):
            found.append(
                f"prediction drift {self.prediction_drift:.3f} (limit {limits.prediction_drift})"
            )
        if limits.performance_low(self.pr_auc):
            found.append(f"PR-AUC {self.pr_auc:.3f} below {limits.min_pr_auc}")
        return found


@dataclass(frozen=True)
class Decision:
    """What the loop should do after the latest window.

    Attributes:
        retrain: Whether to request retraining now.
        reason: Why (or why not), for the sensor's log and the run's tags.
        episode_start: First day of the ongoing episode, None without one.
        run_key: The episode's run key (one retraining per episode).
    """

    retrain: bool
    reason: str
    episode_start: datetime.date | None = None
    run_key: str | None = None


def decide(
    windows: Sequence[Window],
    policy: DriftPolicy,
    last_retrain_day: datetime.date | None = None,
    requested: Collection[str] = (),
) -> Decision:
    """Decide whether to request retraining after the latest window.

    Windows may come in any order; of several windows of one day (two model versions), the
    newer version's counts. An episode belongs to the version serving now: its consecutive
    alerting days, the last of them at most `label_maturity_days` before the latest window
    (a performance alert only shows once a day's labels are mature). Its run key names the
    version and the first day; a key already used (a retraining that did not replace the
    model) gets a retry suffix once the cooldown has passed.

    Args:
        windows: The monitoring windows.
        policy: Thresholds, label maturity, cooldown.
        last_retrain_day: Latest window day at which retraining was requested.
        requested: Run keys requested before.
    """
    by_day: dict[datetime.date, Window] = {}
    for window in sorted(windows, key=lambda w: (w.day, int(w.model_version or 0))):
        by_day[window.day] = window
    if not by_day:
        return Decision(False, "no monitoring windows yet")
    days = sorted(by_day)
    latest = days[-1]
    version = by_day[latest].model_version
    mine = [d for d in days if by_day[d].model_version == version]
    alerting = [d for d in mine if by_day[d].reasons(policy)]
    if not alerting or (latest - alerting[-1]).days > policy.label_maturity_days:
        return Decision(False, f"window {latest} is within every threshold")
    last = alerting[-1]
    start = last
    for day in reversed([d for d in mine if d < last]):
        if (start - day).days != 1 or not by_day[day].reasons(policy):
            break
        start = day
    reasons = "; ".join(by_day[last].reasons(policy))
    base = f"drift-v{version}-{start.isoformat()}"
    used = [k for k in requested if k == base or k.startswith(f"{base}-retry")]
    key = base if not used else f"{base}-retry{len(used)}"
    mature_until = latest - datetime.timedelta(days=policy.label_maturity_days)
    labelled = (min(last, mature_until) - start).days + 1
    if labelled < policy.min_labelled_days:
        return Decision(
            False,
            f"episode since {start} ({reasons}): {max(labelled, 0)} of "
            f"{policy.min_labelled_days} days with mature labels so far",
            start,
            key,
        )
    if last_retrain_day is not None and (latest - last_retrain_day).days < policy.cooldown_days:
        return Decision(
            False,
            f"episode since {start} ({reasons}): cooling down since the retraining on "
            f"{last_retrain_day}",
            start,
            key,
        )
    return Decision(True, f"episode since {start}: {reasons}", start, key)
