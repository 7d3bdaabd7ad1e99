"""One dropped file's journey: the step sequence (:mod:`.per_file`), the scoring
step, the reconciler that re-drives stranded files, and the Prefect flows that
wrap them."""

from churnops.drop.trigger import DEFAULT_DEPLOYMENT

#: The Prefect deployments ChurnOps registers (``<flow>/<deployment>``): names, not
#: choices. The pipeline's is the Lambda's default PREFECT_DEPLOYMENT.
PIPELINE_DEPLOYMENT = DEFAULT_DEPLOYMENT
RECONCILE_DEPLOYMENT = "reconcile/churnops"
RETRAIN_DEPLOYMENT = "retrain_model/retrain"
