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

Many rows at once (batch and stream scoring) go another way: `encode_frame` builds the
classifier's input matrix from a polars frame column by column (the one-hot blocks from each
categorical's codes, the numbers cast to floats as `model_inputs` casts them), without the
pandas frame and the `ColumnTransformer`; `raw_many` then sums the trees' leaf values onto
the baseline tree by tree, each tree walked by scikit-learn's own compiled tree predictor
(the loop `HistGradientBoostingClassifier.predict_proba` runs), and `score_frame` applies the
same `expit`, in bounded chunks of rows. `probe_frame` gives rows on, just above and just
below every split threshold, with missing values and unseen categories, on which callers
check the vectorised scores against the model's own predict bit for bit before using them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import expit

if TYPE_CHECKING:
    import polars as pl

# Rows encoded and walked at once by `score_frame`: the input matrix of a chunk stays small
# (46 features: 48 MiB) however many rows are scored.
CHUNK_ROWS = 131_072


class UnsupportedModelError(ValueError):
    """The fitted model has a shape `CompiledPipeline` does not reproduce."""


def _column_names(columns: Any) -> list[str]:
    if isinstance(columns, str):
        raise UnsupportedModelError("a transformer selects a single column by name, not a list")
    names = list(columns)
    if not all(isinstance(n, str) for n in names):
        raise UnsupportedModelError("transformers must select columns by name")
    return names


def fill_row(
    x: Any,
    row: Sequence[Any],
    categorical: Sequence[tuple[int, dict[str, int]]],
    numeric: Sequence[tuple[int, int]],
) -> None:
    """Write one row's encoded input into `x` (zeros of the classifier's width).

    The one-hot columns of each categorical (None reads as `unknown`; an unseen value sets
    none) and the numbers (None is missing, NaN). `x` is a numpy array or a list: the
    compiled and the plain-Python scorers encode a row the same way.
    """
    for source, categories in categorical:
        value = row[source]
        index = categories.get("unknown" if value is None else str(value))
        if index is not None:
            x[index] = 1.0
    for source, target in numeric:
        value = row[source]
        x[target] = math.nan if value is None else float(value)


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
        # The trees' node records as scikit-learn holds them, walked by its compiled
        # predictor in `raw_many` (no categorical splits: the bitsets are empty).
        self._nodes = [tree.nodes for (tree,) in classify._predictors]
        self._tree_predictors: list[Any] | None = None
        # Outcome of `check_many`: None until checked, then "" (equal) or the difference.
        self._many_problem: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Pickled (the serving cache, Spark tasks) without scikit-learn objects: the tree
        # predictors are rebuilt from the node records on use. The check's outcome travels
        # with the nodes it was made on.
        state = dict(self.__dict__)
        state["_tree_predictors"] = None
        return state

    def encode(self, row: Sequence[Any]) -> np.ndarray:
        """The classifier's input for one row: one-hot blocks, then the numbers, as floats.

        Args:
            row: Values in `feature_columns` order: strings for the categoricals (None reads as
                `unknown`, as in training), numbers, booleans or None (missing) for the rest.
        """
        x = np.zeros(self.width, dtype=np.float64)
        fill_row(x, row, self._categorical, self._numeric)
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

    def encode_frame(self, frame: pl.DataFrame) -> np.ndarray:
        """The classifier's input for every row of a frame, as `model_inputs` and the encoder.

        Categoricals are cast to strings with missing values read as `unknown` (unknown
        categories encode as all zeros); the other columns are cast to floats, missing values
        becoming NaN, exactly as `model_inputs` casts them for the pipeline.

        Args:
            frame: A frame holding every column of `feature_columns`.

        Returns:
            A float64 matrix of `frame.height` rows and `width` columns, column-major (each
            column written at once; the tree walk reads it as fast as row-major).

        Raises:
            ValueError: The frame lacks feature columns.
        """
        import polars as pl

        missing = [c for c in self.feature_columns if c not in frame.columns]
        if missing:
            raise ValueError(f"the frame lacks feature columns {missing} of the model")
        x = np.zeros((frame.height, self.width), dtype=np.float64, order="F")
        rows = np.arange(frame.height)
        for source, categories in self._categorical:
            name = self.feature_columns[source]
            codes = (
                frame.get_column(name)
                .cast(pl.String)
                .fill_null("unknown")
                .replace_strict(
                    list(categories),
                    list(categories.values()),
                    default=-1,
                    return_dtype=pl.Int64,
                )
                .to_numpy()
            )
            known = codes >= 0
            x[rows[known], codes[known]] = 1.0
        for source, target in self._numeric:
            name = self.feature_columns[source]
            values = frame.get_column(name).cast(pl.Float64).to_numpy()
            x[:, target] = values
        return x

    def raw_many(self, x: np.ndarray, threads: int = 1) -> np.ndarray:
        """The baseline plus every tree's leaf value for each row of `x`, in the trees' order.

        Each tree is walked by scikit-learn's compiled predictor, as `predict_proba` walks it
        (`x <= threshold`, missing values by `missing_go_to_left`), and its values are added
        to the running sums one tree after the other, as `raw_predictions += predict(X)`.

        Args:
            x: Encoded rows (`encode_frame`).
            threads: OpenMP threads of each tree's walk (a row's sum does not depend on it).
        """
        predictors = self._predictors()
        known = np.zeros((0, 8), dtype=np.uint32)
        index = np.zeros(self.width, dtype=np.uint32)
        x = np.asarray(x, dtype=np.float64)
        total = np.zeros(x.shape[0], dtype=np.float64)
        total += self._baseline
        for predictor in predictors:
            total += predictor.predict(x, known, index, threads)
        return total

    def score_frame(
        self, frame: pl.DataFrame, chunk_rows: int = CHUNK_ROWS, threads: int | None = None
    ) -> np.ndarray:
        """The positive class probability of every row of a frame (see `encode_frame`).

        Rows are encoded and scored `chunk_rows` at a time, so memory stays bounded, by
        `threads` threads (default: as many as scikit-learn would use), each on its own share
        of the chunk with one OpenMP thread (no barrier per tree, which on a loaded machine
        waits for the slowest).
        """
        from concurrent.futures import ThreadPoolExecutor

        from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
        scores = np.empty(frame.height, dtype=np.float64)
        workers = threads if threads is not None else max(1, _openmp_effective_n_threads())
        if workers < 1:
            raise ValueError(f"threads must be positive, got {threads}")
        share = max(1, -(-chunk_rows // workers))

        def score(start: int) -> tuple[int, np.ndarray]:
            rows = frame.slice(start, share)
            return start, expit(self.raw_many(self.encode_frame(rows)))

        starts = range(0, frame.height, share)
        if workers == 1 or len(starts) == 1:
            results = map(score, starts)
            for start, values in results:
                scores[start : start + len(values)] = values
            return scores
        with ThreadPoolExecutor(workers, thread_name_prefix="score-frame") as pool:
            for start, values in pool.map(score, starts):
                scores[start : start + len(values)] = values
        return scores

    def check_many(
        self, reference: Callable[[pl.DataFrame], np.ndarray], count: int = 2_048
    ) -> str | None:
        """Compare `score_frame` with the model's own predict on probe rows, bit for bit.

        The comparison runs once per compiled model; later calls return its outcome.

        Args:
            reference: The model's own scores of a frame (its pyfunc's positive class).
            count: Probe rows (see `probe_frame`).

        Returns:
            None when every probe score is the same float, else the first difference.
        """
        if self._many_problem is None:
            probe = self.probe_frame(count)
            want = np.asarray(reference(probe), dtype=np.float64)
            # Chunks smaller than the probe: the chunked path is what is checked.
            got = self.score_frame(probe, chunk_rows=max(1, count // 3))
            same = want.shape == got.shape and np.array_equal(
                want.view(np.int64), got.view(np.int64)
            )
            if same:
                self._many_problem = ""
            elif want.shape != got.shape:
                self._many_problem = f"{got.shape} vectorised scores for {want.shape} model scores"
            else:
                bad = int(np.flatnonzero(want.view(np.int64) != got.view(np.int64))[0])
                self._many_problem = (
                    f"vectorised score {got[bad]!r} != model score {want[bad]!r} for probe row "
                    f"{probe.row(bad, named=True)}"
                )
        return self._many_problem or None

    def _predictors(self) -> list[Any]:
        if self._tree_predictors is None:
            from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor

            empty = np.zeros((0, 8), dtype=np.uint32)
            self._tree_predictors = [TreePredictor(nodes, empty, empty) for nodes in self._nodes]
        return self._tree_predictors

    def probe_frame(self, count: int, seed: int = 17) -> pl.DataFrame:
        """Rows probing the vectorised scorer: every split threshold, missing, unseen values.

        Numbers on, just above and just below split thresholds (each threshold at least once
        when `count` allows), NaN and missing values, values beyond every threshold; known,
        unseen and missing categories. Numbers are floats, categoricals strings.
        """
        import polars as pl

        rng = np.random.default_rng(seed)
        is_split = self._left != np.arange(len(self._left))
        columns: dict[str, pl.Series] = {}
        for source, categories in self._categorical:
            name = self.feature_columns[source]
            choices = [*categories, "never-seen-category", None]
            picks = rng.integers(0, len(choices), count)
            columns[name] = pl.Series(name, [choices[i] for i in picks], dtype=pl.String)
        for source, target in self._numeric:
            name = self.feature_columns[source]
            splits = np.unique(self._threshold[is_split & (self._feature == target)])
            if len(splits):
                # Every threshold in turn, then random ones; nudged down, kept, nudged up.
                picks = np.concatenate(
                    [rng.permutation(len(splits)), rng.integers(0, len(splits), count)]
                )[:count]
                values = splits[picks]
                nudge = rng.integers(-1, 2, count)
                values = np.where(nudge < 0, np.nextafter(values, -np.inf), values)
                values = np.where(nudge > 0, np.nextafter(values, np.inf), values)
            else:
                values = rng.uniform(-10, 1000, count)
            pick = rng.random(count)
            values = np.where(pick < 0.04, np.nan, values)
            values = np.where((pick >= 0.04) & (pick < 0.06), 1e300, values)
            series = pl.Series(name, values, dtype=pl.Float64)
            nulls = np.flatnonzero(pick > 0.96)
            columns[name] = series.scatter(nulls, None) if len(nulls) else series
        # Columns the encoder drops still reach the model's own predict: missing throughout.
        return pl.DataFrame(
            [
                columns.get(c, pl.Series(c, [None] * count, dtype=pl.Float64))
                for c in self.feature_columns
            ]
        )
