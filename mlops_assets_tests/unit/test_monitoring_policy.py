"""The closed loop's decision: episodes, label maturity, one retraining, cooldown."""

import datetime

import pytest

from mlops_assets.monitoring.policy import DriftPolicy, Window, decide
from mlops_assets.monitoring.thresholds import Thresholds

DAY = datetime.date(2026, 1, 1)
POLICY = DriftPolicy(Thresholds(label_maturity_days=3), min_labelled_days=2, cooldown_days=7)


def window(offset: int, share: float = 0.0, prediction: float = 0.0, pr_auc=None, version="1"):
    return Window(DAY + datetime.timedelta(days=offset), version, share, prediction, pr_auc)


def test_quiet_windows_never_ask_for_retraining():
    decision = decide(
        [window(i, share=0.1, prediction=0.02, pr_auc=0.8) for i in range(10)], POLICY
    )
    assert not decision.retrain and "within every threshold" in decision.reason


def test_an_episode_asks_once_enough_of_its_days_have_mature_labels():
    calm = [window(i) for i in range(5)]
    drifted = [window(5 + i, share=0.7) for i in range(6)]
    asks = [decide(calm + drifted[: n + 1], POLICY) for n in range(len(drifted))]
    # Day 5 starts the episode; labels of days 5 and 6 are mature at the end of day 9.
    assert [d.retrain for d in asks] == [False, False, False, False, True, True]
    assert "0 of 2 days with mature labels" in asks[0].reason
    assert {d.run_key for d in asks} == {"drift-v1-2026-01-06"}
    # After the retraining on day 9, the same episode does not ask again within the cooldown.
    retrained = DAY + datetime.timedelta(days=9)
    later = decide(calm + drifted, POLICY, last_retrain_day=retrained, requested=[asks[4].run_key])
    assert not later.retrain and "cooling down" in later.reason
    # A retraining that did not replace the model: after the cooldown, a retry under a new key.
    longer = drifted + [window(11 + i, share=0.7) for i in range(7)]
    retry = decide(calm + longer, POLICY, last_retrain_day=retrained, requested=[asks[4].run_key])
    assert retry.retrain and retry.run_key == "drift-v1-2026-01-06-retry1"
    # A new champion starts afresh: its own days make its own episode.
    fresh = [window(11 + i, share=0.7, version="2") for i in range(2)]
    assert decide(calm + drifted + fresh, POLICY).episode_start == DAY + datetime.timedelta(days=11)


def test_a_performance_drop_starts_an_episode_once_its_labels_are_mature():
    windows = [window(i, pr_auc=0.1 if 3 <= i <= 6 else 0.8) for i in range(7)]
    windows += [window(7 + i) for i in range(3)]  # recent days: labels not mature yet
    decision = decide(windows, POLICY)
    assert decision.retrain and decision.episode_start == DAY + datetime.timedelta(days=3)
    assert "PR-AUC 0.100 below 0.3" in decision.reason


def test_a_break_in_drift_ends_the_episode_and_reasons_are_named():
    windows = [window(0, share=0.7), window(1), window(2, prediction=0.3), window(3, pr_auc=0.1)]
    decision = decide(windows, POLICY)
    assert decision.episode_start == DAY + datetime.timedelta(days=2)
    assert "PR-AUC 0.100 below 0.3" in decision.reason
    # Of two windows of one day, the newer model version's counts.
    assert not decide([window(0, share=0.9, version="1"), window(0, version="2")], POLICY).retrain


def test_bad_thresholds_are_refused_with_their_name():
    with pytest.raises(ValueError, match="drift_share must be in"):
        DriftPolicy(Thresholds(drift_share=1.5))
    with pytest.raises(ValueError, match="cooldown_days"):
        DriftPolicy(cooldown_days=-1)
    with pytest.raises(ValueError, match="label_maturity_days"):
        Thresholds(label_maturity_days=-1)


def test_a_window_alerts_at_the_limits_themselves():
    at = window(0, share=0.5)
    assert at.reasons(POLICY) == ["50% of features drifted (limit 50%)"]
    assert window(0, share=0.49).reasons(POLICY) == []
    assert window(0, prediction=0.1).reasons(POLICY) == ["prediction drift 0.100 (limit 0.1)"]
    assert window(0, pr_auc=0.3).reasons(POLICY) == []
