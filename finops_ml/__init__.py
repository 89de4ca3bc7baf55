"""finops-ml: cost forecast, cost anomaly detection and auto-labelling for Google Cloud billing data."""

from finops_ml.process import end_step_process_cleanly

__version__ = "0.1.0"

# Every pipeline component imports the library: in a component's process (and only there) it then ends without the
# native teardown that aborts a finished step now and then (finops_ml/process.py).
end_step_process_cleanly()
