"""May a role read a secret? ECS fetches a task's secrets with its execution role before
any container starts (and the Lambda reads its own with its role): a missing
``secretsmanager:GetSecretValue`` or ``kms:Decrypt`` stops the task on AWS, while moto
does not check. This evaluates the role's inline and attached policies: an Allow
whose action and resource match, and no such Deny. Conditions are not evaluated
(a statement with one counts as matching); resource policies are not read.
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any
from urllib.parse import unquote

from terraform.scripts.rehearsal.deployment import Aws


class Policies:
    """Every statement of a role's policies, read once."""

    def __init__(self, aws: Aws, role_arn: str) -> None:
        self.role = role_arn.rsplit("/", 1)[-1]
        self.statements = list(_statements(aws.client("iam"), self.role))

    def allows(self, action: str, resource: str) -> bool:
        matching = [s for s in self.statements if _matches(s, action, resource)]
        return any(s["Effect"] == "Allow" for s in matching) and not any(
            s["Effect"] == "Deny" for s in matching
        )


def secret_problems(aws: Aws, policies: Policies, secret_arn: str) -> list[str]:
    """What the role lacks to read the secret (and decrypt it with its KMS key)."""
    problems = []
    if not policies.allows("secretsmanager:GetSecretValue", secret_arn):
        problems.append(f"role {policies.role} may not secretsmanager:GetSecretValue {secret_arn}")
    key = _secret_key(aws, secret_arn)
    if key and not policies.allows("kms:Decrypt", key):
        problems.append(f"role {policies.role} may not kms:Decrypt with its key {key}")
    return problems


def _secret_key(aws: Aws, secret_arn: str) -> str | None:
    """The ARN of the customer key a secret is encrypted with (None: AWS's own key)."""
    sm = aws.client("secretsmanager")
    try:
        key = sm.describe_secret(SecretId=secret_arn).get("KmsKeyId")
    except sm.exceptions.ResourceNotFoundException:
        return None
    if not key or key.startswith("alias/aws/"):
        return None
    return aws.client("kms").describe_key(KeyId=key)["KeyMetadata"]["Arn"]


def _statements(iam: Any, role: str) -> Any:
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        yield from _of(iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"])
    for attached in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
        policy = iam.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
        version = iam.get_policy_version(
            PolicyArn=attached["PolicyArn"], VersionId=policy["DefaultVersionId"]
        )
        yield from _of(version["PolicyVersion"]["Document"])


def _of(document: Any) -> list[dict[str, Any]]:
    if isinstance(document, str):
        document = json.loads(unquote(document))
    statements = document.get("Statement", [])
    return statements if isinstance(statements, list) else [statements]


def _matches(statement: dict[str, Any], action: str, resource: str) -> bool:
    actions = _listed(statement.get("Action"))
    resources = _listed(statement.get("Resource"))
    return any(fnmatch.fnmatch(action.lower(), a.lower()) for a in actions) and any(
        fnmatch.fnmatchcase(resource, r) for r in resources
    )


def _listed(value: Any) -> list[str]:
    return [] if value is None else value if isinstance(value, list) else [value]


def s3_permissions(operation: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """The IAM actions, with their resources, S3 checks for one request (``operation`` and
    the boto3 parameters), as AWS documents them: moto checks none of them. A request
    naming a version needs the ``...Version`` action instead (the drop bucket is versioned,
    and a move copies and deletes exactly the version it claimed)."""
    bucket = f"arn:aws:s3:::{params['Bucket']}"
    target = f"{bucket}/{params.get('Key', '')}"
    versioned = "VersionId" in params
    if operation == "ListObjectsV2":
        return [("s3:ListBucket", bucket)]
    if operation in ("HeadObject", "GetObject"):
        return [("s3:GetObjectVersion" if versioned else "s3:GetObject", target)]
    if operation == "DeleteObject":
        return [("s3:DeleteObjectVersion" if versioned else "s3:DeleteObject", target)]
    if operation in ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"):
        return [("s3:PutObject", target)]
    if operation == "CopyObject":
        return [_copy_source_permission(params["CopySource"]), ("s3:PutObject", target)]
    return [(f"s3:{operation}", target)]  # AbortMultipartUpload and most others: their name


def _copy_source_permission(source: dict[str, str] | str) -> tuple[str, str]:
    """Reading a copy's source: ``GetObjectVersion`` when the source names its version
    (boto3 turns its dict into the ``bucket/key?versionId=`` header as it builds the request)."""
    if isinstance(source, str):
        path, _, version = source.partition("?versionId=")
        bucket, _, key = unquote(path).partition("/")
        source = {"Bucket": bucket, "Key": key} | ({"VersionId": version} if version else {})
    action = "s3:GetObjectVersion" if "VersionId" in source else "s3:GetObject"
    return action, f"arn:aws:s3:::{source['Bucket']}/{source['Key']}"
