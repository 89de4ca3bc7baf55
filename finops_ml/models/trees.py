"""Fitted scikit-learn tree ensembles evaluated for a few rows at a time, with the same numbers (tests hold them
equal): scikit-learn walks its trees one by one with a joblib call each (~50-200 us a tree whatever the rows), which
is where a request's or an event's time would go. Used by the real-time detector and the prediction server."""

from __future__ import annotations

import numpy as np


class TreeWalker:
    """Many fitted scikit-learn trees walked at once in numpy: the leaf each row reaches in every tree. scikit-learn
    walks trees one by one (with a joblib call each, ~50-200 us a tree whatever the rows); for a request's few rows
    this is what the time goes to. Same float32 comparisons as scikit-learn's trees."""

    def __init__(self, trees, features_of_tree=None):
        feature, threshold, left, right, roots = [], [], [], [], []
        offset = 0
        for i, t in enumerate(trees):
            leaf = t.children_left == -1
            idx = np.arange(t.node_count)
            f = np.where(leaf, 0, t.feature)
            feature.append(np.asarray(features_of_tree[i])[f] if features_of_tree is not None else f)
            threshold.append(t.threshold)
            left.append(np.where(leaf, idx, t.children_left) + offset)  # a leaf points at itself
            right.append(np.where(leaf, idx, t.children_right) + offset)
            roots.append(offset)
            offset += t.node_count
        self.feature, self.threshold = np.concatenate(feature), np.concatenate(threshold)
        self.left, self.right = np.concatenate(left), np.concatenate(right)
        self.roots = np.asarray(roots)
        self.depth = max(t.max_depth for t in trees)

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """Global node index of the leaf reached, (rows, trees)."""
        x = np.asarray(x, np.float32).astype(np.float64)  # sklearn's trees compare float32 inputs
        node = np.tile(self.roots, (len(x), 1))
        rows = np.arange(len(x))[:, None]
        for _ in range(self.depth):
            go_left = x[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(go_left, self.left[node], self.right[node])
        return node


class ForestScorer:
    """`-IsolationForest.score_samples(x)`: same trees and path-length corrections, all trees at once."""

    def __init__(self, forest):
        from sklearn.ensemble._iforest import _average_path_length

        subsample = forest._max_features != forest.n_features_in_
        trees = [est.tree_ for est in forest.estimators_]
        self.walker = TreeWalker(trees, forest.estimators_features_ if subsample else None)
        self.value = np.concatenate([forest._decision_path_lengths[i] + forest._average_path_length_per_tree[i] - 1.0
                                     for i in range(len(trees))])
        self.denominator = len(trees) * float(_average_path_length([forest._max_samples])[0])

    def raw(self, x: np.ndarray) -> np.ndarray:
        depths = self.value[self.walker.leaves(x)].sum(axis=1)
        return 2.0 ** (-depths / self.denominator)


class ForestRegressor:
    """`RandomForestRegressor.predict` (single output) with all trees walked at once; stands in for the fitted
    forest inside a served forecast model."""

    def __init__(self, forest):
        trees = [est.tree_ for est in forest.estimators_]
        self.walker = TreeWalker(trees)
        self.value = np.concatenate([t.value[:, 0, 0] for t in trees])
        self.n_trees = len(trees)

    def predict(self, x) -> np.ndarray:
        return self.value[self.walker.leaves(np.asarray(x, float))].sum(axis=1) / self.n_trees
