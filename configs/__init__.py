"""The default configs, shipped in the wheel as `finops_ml.configs` (read with importlib.resources)."""
