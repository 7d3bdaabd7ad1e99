# The three roles GitHub Actions assumes through OIDC (.github/workflows), each
# trusting one exact subject of one repository:
#   plan    repo:<o>/<r>:pull_request          plan.yml: read the platform and the state, nothing else
#   push    repo:<o>/<r>:ref:refs/heads/main   deploy.yml's plan job: the same reads, the state lock, ECR push
#   deploy  repo:<o>/<r>:environment:<env>     deploy.yml's apply job, after the environment's reviewers approve
# Made only when github_repository is set. The environment must allow deployments from
# main only (Settings > Environments > <env> > Deployment branches: main).

locals {
  github = var.github_repository != null
  github_roles = local.github ? {
    plan   = "repo:${var.github_repository}:pull_request"
    push   = "repo:${var.github_repository}:ref:refs/heads/main"
    deploy = "repo:${var.github_repository}:environment:${var.environment}"
  } : {}
  github_oidc_arn = local.github ? coalesce(var.github_oidc_provider_arn, one(aws_iam_openid_connect_provider.github[*].arn)) : null
}

resource "aws_iam_openid_connect_provider" "github" {
  count = local.github && var.github_oidc_provider_arn == null ? 1 : 0

  url            = "https://token.actions.githubusercontent.com"
  client_id_list = ["sts.amazonaws.com"]
}

data "aws_iam_policy_document" "github_trust" {
  # checkov:skip=CKV_AWS_358:checkov crashes on this document (TypeError on the conditional provider ARN) and never ran it; test_github_roles_trust_one_exact_subject_each checks the subject on the plan.
  for_each = local.github_roles

  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [local.github_oidc_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:aud"
      values   = ["sts.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:sub"
      values   = [each.value]
    }
  }
}

resource "aws_iam_role" "github" {
  for_each = local.github_roles

  name                 = "${local.name}-github-${each.key}"
  description          = "GitHub Actions (${each.value})"
  assume_role_policy   = data.aws_iam_policy_document.github_trust[each.key].json
  max_session_duration = 3600
}

# What `terraform plan` refreshes: the configuration of every resource type here, and
# the state. Not ReadOnlyAccess: no secret values, no log events, no object reads
# outside the state.
data "aws_iam_policy_document" "github_read" {
  # checkov:skip=CKV_AWS_356:Describe/List/Get of configuration have no resource-level permissions for most of these services.
  # checkov:skip=CKV_AWS_111:No write action in this document; the ECR push is a separate policy.
  statement {
    sid = "ReadConfiguration"
    actions = [
      "acm:DescribeCertificate", "acm:ListTagsForCertificate",
      "application-autoscaling:Describe*", "application-autoscaling:ListTagsForResource",
      "cloudtrail:DescribeTrails", "cloudtrail:GetEventSelectors", "cloudtrail:GetTrail",
      "cloudtrail:GetTrailStatus", "cloudtrail:ListTags",
      "cloudwatch:DescribeAlarms", "cloudwatch:ListTagsForResource",
      "cognito-idp:Describe*", "cognito-idp:GetUserPoolMfaConfig", "cognito-idp:ListTagsForResource",
      "cognito-idp:AdminGetUser",
      "ec2:Describe*",
      "ecr:DescribeRepositories", "ecr:GetLifecyclePolicy", "ecr:GetRepositoryPolicy",
      "ecr:ListTagsForResource", "ecr:DescribeImages",
      "ecs:Describe*", "ecs:List*",
      "elasticfilesystem:Describe*", "elasticfilesystem:ListTagsForResource",
      "elasticloadbalancing:Describe*",
      "events:DescribeRule", "events:ListTargetsByRule", "events:ListTagsForResource",
      "iam:GetRole", "iam:GetRolePolicy", "iam:ListRolePolicies", "iam:ListAttachedRolePolicies",
      "iam:GetPolicy", "iam:GetPolicyVersion", "iam:GetOpenIDConnectProvider", "iam:ListRoleTags",
      "kms:DescribeKey", "kms:GetKeyPolicy", "kms:GetKeyRotationStatus", "kms:ListAliases",
      "kms:ListResourceTags",
      "lambda:GetFunction", "lambda:GetFunctionConfiguration", "lambda:GetPolicy",
      "lambda:GetFunctionEventInvokeConfig", "lambda:GetFunctionConcurrency", "lambda:ListTags",
      "lambda:ListVersionsByFunction",
      "logs:DescribeLogGroups", "logs:ListTagsForResource", "logs:DescribeMetricFilters",
      "rds:Describe*", "rds:ListTagsForResource",
      "route53:GetHostedZone", "route53:ListResourceRecordSets", "route53:GetChange",
      "s3:GetBucket*", "s3:GetEncryptionConfiguration", "s3:GetLifecycleConfiguration",
      "s3:GetAccelerateConfiguration", "s3:GetReplicationConfiguration", "s3:ListBucket",
      "secretsmanager:DescribeSecret", "secretsmanager:GetResourcePolicy",
      # Plan opens the ephemeral passwords (auth.tf): a random string, nothing read.
      "secretsmanager:GetRandomPassword",
      "servicediscovery:Get*", "servicediscovery:List*",
      "sns:GetTopicAttributes", "sns:GetSubscriptionAttributes", "sns:ListTagsForResource",
      "sns:ListSubscriptionsByTopic",
      "sqs:GetQueueAttributes", "sqs:ListQueueTags",
      "sts:GetCallerIdentity",
    ]
    resources = ["*"]
  }

  # The placeholder objects of the drop bucket's layout (aws_s3_object.prefix), not the data.
  statement {
    sid       = "ReadLayoutMarkers"
    actions   = ["s3:GetObject", "s3:GetObjectTagging"]
    resources = [for p in ["input", "processing", "processed", "errored", "logs"] : "${module.s3.bucket_arn}/data/${p}/"]
  }

  dynamic "statement" {
    for_each = var.github_state_bucket == null ? [] : [1]

    content {
      sid       = "ReadState"
      actions   = ["s3:GetObject", "s3:ListBucket"]
      resources = ["arn:${data.aws_partition.current.partition}:s3:::${var.github_state_bucket}", "arn:${data.aws_partition.current.partition}:s3:::${var.github_state_bucket}/*"]
    }
  }

  statement {
    sid       = "DecryptStateAndConfiguration"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.platform.arn]
  }
}

# The deploy workflow's plan job: images of main into the three repositories, the state
# lock of its saved plan (an S3 lock file beside the state), and the refresh of the secret
# versions (the provider reads a version with GetSecretValue). Only this role: main's code
# runs with these secrets anyway; a pull request's plan skips the refresh (plan.yml).
data "aws_iam_policy_document" "github_push" {
  statement {
    sid       = "RefreshSecretVersions"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = ["arn:${data.aws_partition.current.partition}:secretsmanager:${local.region}:${local.account_id}:secret:${local.name}/*"]
  }

  statement {
    sid       = "EcrAuth"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid = "PushImages"
    actions = [
      "ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
      "ecr:CompleteLayerUpload", "ecr:PutImage", "ecr:BatchGetImage", "ecr:DescribeImageScanFindings",
    ]
    resources = values(module.ecr.repository_arns)
  }

  dynamic "statement" {
    for_each = var.github_state_bucket == null ? [] : [1]

    content {
      sid       = "StateLock"
      actions   = ["s3:PutObject", "s3:DeleteObject"]
      resources = ["arn:${data.aws_partition.current.partition}:s3:::${var.github_state_bucket}/*.tflock"]
    }
  }
}

resource "aws_iam_role_policy" "github_read" {
  for_each = toset([for k in ["plan", "push"] : k if local.github])

  name   = "read-platform"
  role   = aws_iam_role.github[each.key].id
  policy = data.aws_iam_policy_document.github_read.json
}

resource "aws_iam_role_policy" "github_push" {
  count = local.github ? 1 : 0

  name   = "push-images"
  role   = aws_iam_role.github["push"].id
  policy = data.aws_iam_policy_document.github_push.json
}

# Apply creates and changes everything in this configuration (IAM roles included), so
# its role is an administrator: who may assume it is the control (the environment's
# required reviewers, deployments from main only, and this trust's one subject).
resource "aws_iam_role_policy_attachment" "github_deploy" {
  # checkov:skip=CKV_AWS_274:terraform apply manages IAM, KMS and every resource type here; the trust (one environment subject) and the environment's reviewers are the control.
  count = local.github ? 1 : 0

  role       = aws_iam_role.github["deploy"].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AdministratorAccess"
}
