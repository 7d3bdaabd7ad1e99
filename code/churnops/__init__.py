"""ChurnOps: keep churn models honest in production."""
