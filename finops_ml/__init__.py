"""finops-ml: cost forecast, cost anomaly detection and auto-labelling for Google Cloud billing data."""

__version__ = "0.1.0"
