"""Container entry point: `python -m finops_ml.serving` serves the model of AIP_STORAGE_URI on AIP_HTTP_PORT."""

from finops_ml.serving.app import main

main()
