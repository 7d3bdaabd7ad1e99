"""The code logged as the registered model (MLflow "models from code"), run on each load:
an empty :class:`~churnops.model.churn_model.ChurnModel` that ``load_context`` fills.

No ``code_paths``: the installed churnops is used wherever a version loads; a frozen copy
would make ``mlflow models serve`` run other scoring code than the pipeline. Keep this
file to the import and the call.
"""

import mlflow

from churnops.model.churn_model import ChurnModel

mlflow.models.set_model(ChurnModel())
