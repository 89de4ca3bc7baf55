"""KFP components: thin wrappers, one per pipeline step, each calling one function of `finops_ml.training.steps`.

The trainers, register and deploy steps take `config_json`: the JSON of their step's sections only
(`finops_ml.config.Config.for_step`), read back with `Config.from_json`.
"""
