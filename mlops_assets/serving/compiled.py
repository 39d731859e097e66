"""A fast scorer for the fraud detector's pipeline: one-hot encoding and tree walks in numpy.

The registered model is a scikit-learn `Pipeline` (a `ColumnTransformer` one-hot encoding the
categoricals and passing the numbers through, then a binary `HistGradientBoostingClassifier`).
Calling it on a one-row pandas frame costs milliseconds of validation and per-tree Python
calls; the same arithmetic on one row takes tens of microseconds when the trees are flattened
into arrays and walked together. `CompiledPipeline` reads the fitted pipeline's parameters and
reproduces its computation exactly: the same comparisons (`x <= threshold`, missing values
following `missing_go_to_left`), the leaf values summed in the same order onto the same
baseline, and the same `expit`. Anything it does not reproduce (other estimators, native
categorical splits, infrequent categories, dropped categories, several trees per iteration)
is refused with `UnsupportedModelError`, and callers fall back to the model's own predict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import expit


class UnsupportedModelError(ValueError):
    """The fitted model has a shape `CompiledPipeline` does not reproduce."""


def _column_names(columns: Any) -> list[str]:
    if isinstance(columns, str):
        raise UnsupportedModelError("a transformer selects a single column by name, not a list")
    names = list(columns)
    if not all(isinstance(n, str) for n in names):
        raise UnsupportedModelError("transformers must select columns by name")
    return names


class CompiledPipeline:
    """Scores one row of the pipeline's input columns exactly as `predict_proba(...)[:, 1]`.

    Args:
        pipeline: The fitted scikit-learn pipeline.
        feature_columns: The model's input columns, in order (`FeatureSpec.feature_columns`).

    Raises:
        UnsupportedModelError: The pipeline is not of the shape described in the module.
    """

    def __init__(self, pipeline: Any, feature_columns: Sequence[str]) -> None:
        from sklearn.compose import ColumnTransformer
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

        if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
            raise UnsupportedModelError("expected a two-step scikit-learn Pipeline")
        encode, classify = pipeline.steps[0][1], pipeline.steps[1][1]
        if not isinstance(encode, ColumnTransformer):
            raise UnsupportedModelError("the first step is not a ColumnTransformer")
        if not isinstance(classify, HistGradientBoostingClassifier):
            raise UnsupportedModelError("the second step is not a HistGradientBoostingClassifier")
        self.feature_columns = list(feature_columns)
        position = {name: i for i, name in enumerate(self.feature_columns)}
        # Per output column: (input position, None) for numbers passed through, or the input
        # position and category -> output column map for a one-hot block.
        categorical: list[tuple[int, dict[str, int]]] = []
        numeric: list[tuple[int, int]] = []
        width = 0
        for name, transformer, columns in encode.transformers_:
            if transformer == "drop" or (
                name == "remainder" and isinstance(columns, list | tuple) and not list(columns)
            ):
                continue
            names = _column_names(columns)
            unknown = [c for c in names if c not in position]
            if unknown:
                raise UnsupportedModelError(f"transformer {name} reads unknown columns {unknown}")
            if isinstance(transformer, OneHotEncoder):
                if transformer.drop_idx_ is not None or getattr(
                    transformer, "_infrequent_enabled", False
                ):
                    raise UnsupportedModelError("one-hot encoding drops or merges categories")
                if transformer.handle_unknown != "ignore" or transformer.sparse_output:
                    raise UnsupportedModelError("one-hot encoding must ignore unknowns, dense")
                for column, categories in zip(names, transformer.categories_, strict=True):
                    if not all(isinstance(c, str) for c in categories):
                        raise UnsupportedModelError(f"categories of {column} are not strings")
                    categorical.append(
                        (position[column], {c: width + i for i, c in enumerate(categories)})
                    )
                    width += len(categories)
            elif transformer == "passthrough" or (
                isinstance(transformer, FunctionTransformer) and transformer.func is None
            ):
                for column in names:
                    numeric.append((position[column], width))
                    width += 1
            else:
                raise UnsupportedModelError(f"transformer {name} is not one-hot or passthrough")
        if getattr(encode, "sparse_output_", False):
            raise UnsupportedModelError("the column transformer outputs a sparse matrix")
        if classify.n_trees_per_iteration_ != 1 or len(classify.classes_) != 2:
            raise UnsupportedModelError("only binary classifiers are compiled")
        if getattr(classify, "_preprocessor", None) is not None or (
            classify.is_categorical_ is not None and bool(np.any(classify.is_categorical_))
        ):
            raise UnsupportedModelError("native categorical splits are not compiled")
        if classify.n_features_in_ != width:
            raise UnsupportedModelError(
                f"the classifier takes {classify.n_features_in_} inputs, the encoder makes {width}"
            )
        self.width = width
        self._categorical = categorical
        self._numeric = numeric
        self._baseline = float(np.asarray(classify._baseline_prediction).ravel()[0])

        # Flatten every tree's nodes into one set of arrays; a leaf points at itself, so that
        # walking all trees for `depth` steps leaves each one at its leaf.
        features, thresholds, lefts, rights, to_left, values, roots = [], [], [], [], [], [], []
        offset = 0
        depth = 0
        for predictors in classify._predictors:
            (tree,) = predictors
            nodes = tree.nodes
            if np.any(nodes["is_categorical"].astype(bool) & ~nodes["is_leaf"].astype(bool)):
                raise UnsupportedModelError("a tree has a categorical split")
            count = len(nodes)
            index = np.arange(offset, offset + count, dtype=np.int64)
            leaf = nodes["is_leaf"].astype(bool)
            features.append(np.where(leaf, 0, nodes["feature_idx"]).astype(np.int64))
            thresholds.append(nodes["num_threshold"].astype(np.float64))
            lefts.append(np.where(leaf, index, nodes["left"].astype(np.int64) + offset))
            rights.append(np.where(leaf, index, nodes["right"].astype(np.int64) + offset))
            to_left.append(nodes["missing_go_to_left"].astype(bool))
            values.append(nodes["value"].astype(np.float64))
            roots.append(offset)
            depth = max(depth, int(nodes["depth"].max()))
            offset += count
        self._feature = np.concatenate(features)
        self._threshold = np.concatenate(thresholds)
        self._left = np.concatenate(lefts)
        self._right = np.concatenate(rights)
        self._missing_left = np.concatenate(to_left)
        self._value = np.concatenate(values)
        self._roots = np.asarray(roots, dtype=np.int64)
        self._depth = depth
        self.trees = len(roots)

    def encode(self, row: Sequence[Any]) -> np.ndarray:
        """The classifier's input for one row: one-hot blocks, then the numbers, as floats.

        Args:
            row: Values in `feature_columns` order: strings for the categoricals (None reads as
                `unknown`, as in training), numbers, booleans or None (missing) for the rest.
        """
        x = np.zeros(self.width, dtype=np.float64)
        for source, categories in self._categorical:
            value = row[source]
            index = categories.get("unknown" if value is None else str(value))
            if index is not None:
                x[index] = 1.0
        for source, target in self._numeric:
            value = row[source]
            x[target] = math.nan if value is None else float(value)
        return x

    def raw(self, x: np.ndarray) -> float:
        """The sum of the baseline and every tree's leaf value, in the trees' order."""
        node = self._roots
        feature, threshold, left, right = self._feature, self._threshold, self._left, self._right
        missing_left = self._missing_left
        for _ in range(self._depth):
            value = x[feature[node]]
            go_left = (value <= threshold[node]) | (np.isnan(value) & missing_left[node])
            node = np.where(go_left, left[node], right[node])
        total = 0.0 + self._baseline
        # Summed one by one like scikit-learn's `raw_predictions += predict(X)` per tree.
        for leaf_value in self._value[node].tolist():
            total += leaf_value
        return total

    def score(self, row: Sequence[Any]) -> float:
        """The positive class probability of one row (see `encode` for the row's values)."""
        return float(expit(self.raw(self.encode(row))))
