"""After `make push-images`: stop the deploy when ECR's scan-on-push finds a CRITICAL
vulnerability in a pushed image, or its scan does not finish in time (exit 1, naming it).

  python -m terraform.scripts.image_scan OUTPUTS IMAGE_TAG [--timeout 600]

OUTPUTS is the deployment's `terraform output -json` in a file (make's TF_OUTPUTS)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from terraform.scripts.post_apply import load_outputs

BLOCKING = ("CRITICAL",)


def scan_counts(ecr: Any, repository: str, tag: str, timeout: float, poll: float) -> dict:
    """The finished scan's count per severity; TimeoutError while it is not finished."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = ecr.describe_image_scan_findings(
                repositoryName=repository, imageId={"imageTag": tag}
            )
        except ecr.exceptions.ScanNotFoundException:
            found = {"imageScanStatus": {"status": "PENDING"}}
        status = found["imageScanStatus"]["status"]
        if status == "COMPLETE":
            return found["imageScanFindings"].get("findingSeverityCounts", {})
        if status == "FAILED" or time.monotonic() > deadline:
            raise TimeoutError(f"{repository}:{tag}: scan {status}")
        time.sleep(poll)


def blocking_findings(
    ecr: Any, repositories: dict[str, str], tag: str, timeout: float = 600, poll: float = 10
) -> list[str]:
    """One line per image that must not be deployed (critical findings or no scan)."""
    problems = []
    for url in repositories.values():
        repository = url.split("/", 1)[1]
        try:
            counts = scan_counts(ecr, repository, tag, timeout, poll)
        except TimeoutError as exc:
            problems.append(str(exc))
            continue
        blocking = {s: counts[s] for s in BLOCKING if counts.get(s)}
        if blocking:
            problems.append(f"{repository}:{tag}: {blocking} (see the ECR console's scan)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("outputs")
    parser.add_argument("tag")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)

    import boto3

    outputs = load_outputs(args.outputs)
    ecr = boto3.client("ecr", region_name=outputs["aws_region"])
    problems = blocking_findings(ecr, outputs["ecr_repository_urls"], args.tag, args.timeout)
    for problem in problems:
        print(f"image scan: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"image scan: no critical finding in {args.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
