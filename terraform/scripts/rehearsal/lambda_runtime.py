"""The Lambda, run as its runtime runs it: the handler named by the image's CMD (or the
function's image config), imported from a folder holding exactly what the image's
COPY lines put in its task root, in a fresh interpreter with the function's
environment. Besides the standard library, only what the AWS base image adds
(boto3 and its dependencies) can be imported, so a handler that needs more fails
here as it would there.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from terraform.scripts.rehearsal import images
from terraform.scripts.rehearsal.containers import BASE_ENV, VENV_BIN
from terraform.scripts.rehearsal.deployment import Aws, Function, WiringError
from terraform.scripts.rehearsal.mapping import Mapper
from terraform.scripts.tf_local import emulator_credentials

#: Top-level packages the Lambda Python base image has besides the standard library.
BASE_IMAGE_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six")

#: Runs in the fresh interpreter: refuse imports the image could not satisfy, call the
#: handler with the event from stdin, print its answer as JSON. Its ``sys.path`` entry is
#: the Lambda runtime's own (the task root first), kept on purpose: it is what is tested.
BOOTSTRAP = """
import importlib, importlib.abc, json, os, sys
allowed = set(sys.stdlib_module_names) | set(sys.argv[2].split(","))
root = os.environ["LAMBDA_TASK_ROOT"]
local = {p.split(".")[0] for p in os.listdir(root)}

class NotInImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top not in allowed and top not in local:
            raise ImportError(f"{name} is not in the Lambda image (standard library, "
                              f"{sys.argv[2]} and the task root only)")
        return None

sys.meta_path.insert(0, NotInImage())
sys.path.insert(0, root)
module, _, attribute = sys.argv[1].rpartition(".")
handler = getattr(importlib.import_module(module), attribute)
print("LAMBDA-RESULT " + json.dumps(handler(json.load(sys.stdin), None)))
"""


def invoke(function: Function, event: dict[str, Any], mapper: Mapper, aws: Aws, root: Path) -> Any:
    """The handler's answer to ``event``; a WiringError with its output when it raises."""
    image = images.IMAGES["s3-to-prefect-lambda"]
    task_root = images.build_folder(image, root)
    handler = (function.image_command or images.facts(image.dockerfile).cmd or [""])[0]
    env = {
        **BASE_ENV,
        "LAMBDA_TASK_ROOT": str(task_root),
        "AWS_LAMBDA_FUNCTION_NAME": function.name,
        **emulator_credentials(aws.endpoint, aws.region),
    }
    for name, value in function.environment.items():
        env[name] = mapper.variable(name, value, f"Lambda {function.name}, variable {name}", {})
    argv = [str(VENV_BIN / "python"), "-I", "-c", BOOTSTRAP, handler, ",".join(BASE_IMAGE_PACKAGES)]
    try:
        done = subprocess.run(
            argv,
            input=json.dumps(event),
            env=env,
            cwd=task_root,
            capture_output=True,
            text=True,
            timeout=function.timeout,
        )
    except subprocess.TimeoutExpired:
        raise WiringError(
            f"Lambda {function.name}: the handler ran over the function's timeout"
            f" ({function.timeout:.0f}s)"
        ) from None
    output = done.stdout + done.stderr
    answers = [line for line in done.stdout.splitlines() if line.startswith("LAMBDA-RESULT ")]
    if done.returncode != 0 or not answers:
        tail = "\n".join(f"    {line}" for line in output.splitlines()[-30:])
        raise WiringError(f"Lambda {function.name}: the handler {handler} failed:\n{tail}")
    return json.loads(answers[-1].removeprefix("LAMBDA-RESULT "))
