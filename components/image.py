"""The container image the components run in on Vertex AI (the local runner runs them in this environment).

Built from deploy/Dockerfile.pipeline; override with FINOPS_ML_PIPELINE_IMAGE before compiling.
"""

import os

PIPELINE_IMAGE = os.environ.get("FINOPS_ML_PIPELINE_IMAGE", "europe-docker.pkg.dev/PROJECT/finops-ml/pipeline:0.1.0")
