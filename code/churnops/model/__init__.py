"""The churn model: training with Optuna, the MLflow pyfunc, the registry and
its promotion gate, the figures logged with a model."""
