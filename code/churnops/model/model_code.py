"""The code logged as the registered model (MLflow "models from code").

:func:`churnops.model.registry.train_and_register` passes this file's path as
``python_model`` to ``mlflow.pyfunc.log_model``; MLflow copies it into the model and
runs it whenever the model is loaded. It hands :func:`mlflow.models.set_model` an
empty :class:`~churnops.model.churn_model.ChurnModel`, which
:meth:`~churnops.model.churn_model.ChurnModel.load_context` fills from the version's
``model_config`` (features, threshold) and artifacts (booster, reference data).

No ``code_paths``: the class comes from the installed churnops package, which is
installed wherever a version is loaded or served (the flow image, the local venv,
``mlflow models predict/serve --env-manager local``). ``code_paths`` would copy a
frozen churnops into every version and put it first on ``sys.path`` when the model
loads: ``mlflow models serve`` would run that copy while the pipeline, which has
imported churnops already, keeps its own, i.e. two versions of the scoring code for
one model. Keep this file to the import and the call, so that what a version does
is the package's tested code.
"""

import mlflow

from churnops.model.churn_model import ChurnModel

mlflow.models.set_model(ChurnModel())
