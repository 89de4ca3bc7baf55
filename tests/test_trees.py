"""Tree ensembles walked in numpy (finops_ml/models/trees.py) give scikit-learn's numbers exactly."""

from __future__ import annotations

import numpy as np
import pytest

from finops_ml.models.trees import ForestRegressor, ForestScorer

pytestmark = pytest.mark.unit


def test_the_forest_regressor_equals_sklearn_on_many_points():
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 5))
    y = x[:, 0] * 3 + np.sin(x[:, 1]) + rng.normal(size=400) * 0.1
    forest = RandomForestRegressor(n_estimators=30, min_samples_leaf=3, max_features=0.6, random_state=0).fit(x, y)
    test = np.vstack([rng.normal(size=(200, 5)) * 2, x[:20]])
    np.testing.assert_allclose(ForestRegressor(forest).predict(test), forest.predict(test), rtol=1e-12)


def test_the_forest_scorer_equals_sklearn_on_many_points():
    from sklearn.ensemble import IsolationForest


    rng = np.random.default_rng(0)
    train = rng.normal(size=(500, 3))
    for max_features in (1.0, 2):
        forest = IsolationForest(n_estimators=40, max_features=max_features, random_state=3).fit(train)
        x = np.vstack([rng.normal(size=(300, 3)) * 3, train[:50]])
        np.testing.assert_allclose(ForestScorer(forest).raw(x), -forest.score_samples(x), rtol=1e-12)
