"""The training pipeline: ingest -> features -> train three models, monitor against the champions -> gates ->
register -> deploy -> report."""

from kfp import dsl

from components.features import build_features
from components.ingest import ingest_events
from components.monitor import monitor_models
from components.registry import check_gate, deploy_model, register_model
from components.report import build_report
from components.train import train_anomaly_detector, train_forecast, train_labeler

PIPELINE_NAME = "finops-ml-training"


@dsl.pipeline(name=PIPELINE_NAME, description="Cost forecast, cost anomaly detection and auto-labelling.")
def training_pipeline(
    # Each step's configuration (finops_ml.config.Config.step_parameters): a step is sent only the sections it
    # reads, so a change elsewhere does not invalidate its cache.
    source: str,
    forecast_config: str,
    anomaly_config: str,
    labeler_config: str,
    register_config: str,
    deploy_config: str,
    monitor_config: str,
    report_config: str,
    registry_dir: str,
    control_totals: str = "",
    anomaly_labels: str = "",
    resource_truth: str = "",
    anomaly_feedback: str = "",
    run_id: str = dsl.PIPELINE_JOB_ID_PLACEHOLDER,
):
    # DuckDB steps retry once: a DuckDB process can abort at interpreter exit after its outputs are written
    # ("terminate called without an active exception", duckdb/duckdb#13904), seen only on an overloaded machine.
    ingest = ingest_events(source=source, control_totals=control_totals).set_display_name("ingest").set_retry(1)
    # Its inputs name a source whose rows change (a BigQuery export, a topic): a cached ingest would serve every
    # scheduled run the first run's data. Never cached; the steps after it key on the new events artifact.
    ingest.set_caching_options(False)
    features = build_features(events=ingest.outputs["events"]).set_display_name("features").set_retry(1)
    daily = features.outputs["daily_cost"]
    anomaly = train_anomaly_detector(resource_daily_cost=features.outputs["resource_daily_cost"],
                                     resources=features.outputs["resources"], anomaly_labels=anomaly_labels,
                                     anomaly_feedback=anomaly_feedback, config_json=anomaly_config)
    trained = {
        "forecast": train_forecast(daily_cost=daily, config_json=forecast_config),
        "anomaly": anomaly,
        "labeler": train_labeler(resources=features.outputs["resources"], resource_truth=resource_truth,
                                 config_json=labeler_config),
    }
    # Monitoring reads the champions before this run's registrations can move them (the register steps wait for
    # it). Never cached: the champions it compares with live in the registry, outside its inputs.
    monitor = monitor_models(daily_cost=daily, resource_daily_cost=features.outputs["resource_daily_cost"],
                             resources=features.outputs["resources"], registry_dir=registry_dir,
                             config_json=monitor_config, run_id=run_id).set_display_name("monitor")
    monitor.set_caching_options(False)
    for name, task in trained.items():
        task.set_display_name(f"train-{name}")
        gate = check_gate(evaluation=task.outputs["evaluation"]).set_display_name(f"gate-{name}")
        with dsl.If(gate.output == True, name=f"{name}-gate-passed"):  # noqa: E712 (KFP condition)
            registered = register_model(model=task.outputs["model"], evaluation=task.outputs["evaluation"],
                                        registry_dir=registry_dir, config_json=register_config,
                                        run_id=run_id).set_display_name(f"register-{name}").after(monitor)
            deploy_model(registered=registered.output, registry_dir=registry_dir,
                         config_json=deploy_config).set_display_name(f"deploy-{name}")
    build_report(events=ingest.outputs["events"], forecast_evaluation=trained["forecast"].outputs["evaluation"],
                 anomaly_evaluation=trained["anomaly"].outputs["evaluation"],
                 labeler_evaluation=trained["labeler"].outputs["evaluation"],
                 monitoring=monitor.outputs["monitoring"], config_json=report_config,
                 run_id=run_id, anomaly_feedback=anomaly_feedback).set_display_name("report")
