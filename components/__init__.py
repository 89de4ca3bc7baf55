"""KFP components: thin wrappers, one per pipeline step, each calling one function of `finops_ml.training.steps`."""
