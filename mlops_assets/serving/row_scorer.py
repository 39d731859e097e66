"""One request's score in plain Python: the compiled trees walked without numpy.

`CompiledPipeline.score` walks every tree together with numpy, one step of all trees per
level: for one row that is a dozen rounds of small-array operations, each paying numpy's
call overhead, whatever the depth of the leaf a tree actually reaches. `RowScorer` walks the
same flattened trees (the same node arrays, as Python lists) one tree at a time and stops at
each leaf: the same comparisons (`x <= threshold`; a missing value goes where
`missing_go_to_left` says), the same leaf values added one by one in the trees' order onto the
same baseline, and the same `expit`. Its scores are checked against the pyfunc's to the last
bit when a version loads (`model.load_serving_model`), as the compiled scorer's are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlops_assets.serving.compiled import fill_row


class RowScorer:
    """Scores one row exactly as the `CompiledPipeline` it is built from.

    Args:
        compiled: The compiled pipeline (`serving.compiled.CompiledPipeline`).

    Raises:
        ValueError: The compiled pipeline lacks the node arrays this walk reads.
    """

    def __init__(self, compiled: Any) -> None:
        try:
            self._feature = [int(v) for v in compiled._feature.tolist()]
            self._threshold = [float(v) for v in compiled._threshold.tolist()]
            self._left = [int(v) for v in compiled._left.tolist()]
            self._right = [int(v) for v in compiled._right.tolist()]
            self._missing_left = [bool(v) for v in compiled._missing_left.tolist()]
            self._value = [float(v) for v in compiled._value.tolist()]
            self._roots = [int(v) for v in compiled._roots.tolist()]
            self._baseline = float(compiled._baseline)
            self._categorical = [(s, dict(c)) for s, c in compiled._categorical]
            self._numeric = [(int(s), int(t)) for s, t in compiled._numeric]
            self.width = int(compiled.width)
        except AttributeError as error:
            raise ValueError(f"the compiled pipeline has no {error.name}") from None
        self._expit = _expit_of(compiled)

    def encode(self, row: Sequence[Any]) -> list[float]:
        """The classifier's input as a list (see `CompiledPipeline.encode`)."""
        x = [0.0] * self.width
        fill_row(x, row, self._categorical, self._numeric)
        return x

    def raw(self, x: list[float]) -> float:
        """The baseline plus every tree's leaf value, added in the trees' order."""
        feature, threshold, left, right = self._feature, self._threshold, self._left, self._right
        missing_left, value = self._missing_left, self._value
        total = 0.0 + self._baseline
        for node in self._roots:
            while True:
                nxt = left[node]
                if nxt == node:  # a leaf points at itself
                    break
                v = x[feature[node]]
                go_left = v <= threshold[node] or (v != v and missing_left[node])
                node = nxt if go_left else right[node]
            total += value[node]
        return total

    def score(self, row: Sequence[Any]) -> float:
        """The positive class probability of one row."""
        return float(self._expit(self.raw(self.encode(row))))


def _expit_of(compiled: Any) -> Any:
    """The logistic function the compiled scorer's module uses (so both round alike)."""
    import sys

    module = sys.modules.get(type(compiled).__module__)
    function = getattr(module, "expit", None)
    if function is None:
        from scipy.special import expit as function
    return function
