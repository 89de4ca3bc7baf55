"""Deployment of a new champion to its Vertex AI endpoint: `<deploy.endpoint_display_name>-<model>`, found by display
name or created; the new version gets `deploy.canary_percent` of the traffic and the versions beyond the newest
`deploy.keep_versions` are undeployed, their traffic going to the ones kept; Vertex AI Model Monitoring follows the
endpoint where it applies (finops_ml.platform.model_monitoring). (Locally: LocalRegistry.deploy.)"""

from __future__ import annotations

from finops_ml.config import Config
from finops_ml.errors import FinopsError
from finops_ml.platform.gcp import resource_labels
from finops_ml.platform.registry import canary_split, keep_newest
from finops_ml.platform.vertex_registry import VertexRegistry


def endpoint_display_name(cfg: Config, model_name: str) -> str:
    return f"{cfg.deploy.endpoint_display_name}-{model_name}"


def deploy_vertex(cfg: Config, name: str, version: int) -> dict:
    """Deploy VERSION of NAME to its endpoint with the canary split; undeploy versions beyond the newest N."""
    from google.cloud import aiplatform

    registry = VertexRegistry(cfg)
    parent = registry.parent(name)
    if parent is None:
        raise FinopsError(f"Model {name} is not in the Vertex AI Model Registry; register it before deploying.")
    model = aiplatform.Model(parent.resource_name, version=str(version))
    if "champion" not in model.version_aliases:
        return {"name": name, "version": int(version), "deployed": False,
                "reason": "not the champion: the endpoint keeps serving the champion"}
    display = endpoint_display_name(cfg, name)
    found = aiplatform.Endpoint.list(filter=f'display_name="{display}"')
    endpoint = found[0] if found else aiplatform.Endpoint.create(display_name=display,
                                                                 labels=resource_labels(cfg, model=name))
    d = cfg.deploy
    # The final split is computed first: the deploy request already gives no traffic to versions about to go.
    deployed = {m.id: int(m.model_version_id or 0) for m in endpoint.gca_resource.deployed_models}
    if int(version) in deployed.values():  # a run that registered nothing new: its champion already serves
        return {"name": name, "version": int(version), "deployed": False, "endpoint": endpoint.resource_name,
                "reason": "already deployed: the endpoint serves this version"}
    kept = keep_newest(canary_split(dict(endpoint.traffic_split), "0", d.canary_percent), d.keep_versions, "0",
                       key=lambda i: (deployed.get(i, 0), i))
    endpoint.deploy(model=model, deployed_model_display_name=f"{name}-v{version}",
                    traffic_split={i: kept.get(i, 0) for i in [*deployed, "0"]},
                    machine_type=d.machine_type, min_replica_count=d.min_replicas, max_replica_count=d.max_replicas,
                    service_account=d.service_account or None, sync=True)
    endpoint = aiplatform.Endpoint(endpoint.resource_name)  # as it is now
    (new_id,) = [m.id for m in endpoint.gca_resource.deployed_models if m.id not in deployed]
    deployed[new_id] = int(version)
    kept[new_id] = kept.pop("0")
    undeployed = []
    remaining = set(deployed)
    for dm_id in sorted(set(deployed) - set(kept), key=lambda i: deployed[i]):
        remaining.discard(dm_id)
        endpoint.undeploy(deployed_model_id=dm_id, traffic_split={i: kept.get(i, 0) for i in remaining}, sync=True)
        undeployed.append({"deployed_model_id": dm_id, "version": deployed[dm_id]})
    from finops_ml.platform.model_monitoring import configure_endpoint_monitoring

    # the monitoring job names deployed models: it follows the endpoint as it is after the undeployments
    monitoring = configure_endpoint_monitoring(cfg, name, aiplatform.Endpoint(endpoint.resource_name), model.uri)
    return {"name": name, "version": int(version), "deployed": True, "endpoint": endpoint.resource_name,
            "deployed_model_id": new_id, "traffic": {f"v{deployed[i]}": p for i, p in kept.items()},
            "undeployed": undeployed, "monitoring": monitoring}
