from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def check_gate(evaluation: Input[Artifact]) -> bool:
    """Whether every gate of a model passed (computed by the training step from held-out metrics)."""
    from finops_ml.training.steps import gate_step

    return gate_step(evaluation.path)


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def register_model(model: Input[Model], evaluation: Input[Artifact], registry_dir: str, config_json: str,
                   run_id: str) -> str:
    """Register a model that passed its gate (local or Vertex AI registry, from the config); it becomes champion
    only if not worse than the champion on the same holdout. Returns the version ("NAME:vN"; the champion's when
    this run's data and config are the champion's, then nothing is registered)."""
    import json

    from finops_ml.config import Config
    from finops_ml.training.steps import register_step

    entry = register_step(model.path, evaluation.path, registry_dir, Config.from_json(config_json), run_id)
    print(json.dumps({k: entry.get(k) for k in ("name", "version", "registered", "reason", "comparison")},
                     default=str))
    return f"{entry['name']}:v{entry['version']}"


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def deploy_model(registered: str, registry_dir: str, config_json: str) -> str:
    """Deploy a new champion ("NAME:vN") with the canary split and keep the newest N versions deployed (a Vertex AI
    endpoint, or the local registry's endpoint state); returns what was done, as JSON."""
    import json

    from finops_ml.config import Config
    from finops_ml.training.steps import deploy_step

    return json.dumps(deploy_step(registered, registry_dir, Config.from_json(config_json)))
