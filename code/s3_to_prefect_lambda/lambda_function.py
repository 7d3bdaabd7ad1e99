"""The Lambda's entry point, ``lambda_function.lambda_handler``.

The handler is :mod:`churnops.drop.trigger`, which the image carries with
:mod:`churnops.drop.keys` (standard library only; see the Dockerfile).
"""

from churnops.drop.trigger import lambda_handler

__all__ = ["lambda_handler"]
