"""The feature views' SQL, shipped in the wheel as `finops_ml.feature_defs` (read with importlib.resources)."""
