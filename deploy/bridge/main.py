"""The export -> Kafka bridge as a Cloud Run function (functions-framework, CloudEvent trigger on GCS object
finalize). All it does is in finops_ml.data.bridge; configuration comes from FINOPS_BRIDGE_* environment variables.

    functions-framework --source deploy/bridge/main.py --target bridge --signature-type cloudevent   # locally
    make bridge-source && gcloud functions deploy finops-bridge --gen2 --source out/bridge-source ...  # docs/bridge.md
"""

import functions_framework

from finops_ml.data.bridge import handle_finalize


@functions_framework.cloud_event
def bridge(cloud_event):
    """One finalized object: publish its rows (nothing when this generation was published already)."""
    handle_finalize(cloud_event.data)
