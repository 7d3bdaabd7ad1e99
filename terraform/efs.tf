# The Evidently UI's workspace on EFS, so reports outlive tasks and deploys.
# Evidently 0.7's workspace goes through fsspec, so an s3:// workspace would work
# with s3fs installed; EFS keeps it a POSIX folder, as on the local platform, and
# adds no dependency (s3fs pins aiobotocore, hence botocore, against our boto3).
# Only the Evidently task mounts it: the worker stores reports through the UI's API.

resource "aws_efs_file_system" "evidently" {
  creation_token   = "${local.name}-evidently"
  encrypted        = true
  kms_key_id       = aws_kms_key.platform.arn
  performance_mode = "generalPurpose"
  throughput_mode  = "bursting"

  lifecycle_policy {
    transition_to_ia = "AFTER_30_DAYS"
  }

  tags = { Name = "${local.name}-evidently" }
}

resource "aws_security_group" "efs" {
  name        = "${local.name}-efs"
  description = "EFS of ${local.name}: NFS from the Evidently tasks only"
  vpc_id      = var.vpc_id

  ingress {
    description     = "NFS from the Evidently tasks"
    from_port       = 2049
    to_port         = 2049
    protocol        = "tcp"
    security_groups = [module.ecs.security_group_ids["evidently"]]
  }
}

resource "aws_vpc_security_group_egress_rule" "efs" {
  security_group_id            = module.ecs.security_group_ids["evidently"]
  description                  = "evidently to its workspace (NFS)"
  ip_protocol                  = "tcp"
  from_port                    = 2049
  to_port                      = 2049
  referenced_security_group_id = aws_security_group.efs.id
}

# Enforced on the server side too: TLS only, and only the Evidently task role,
# only through the access point (the task mounts with IAM authorisation).
data "aws_iam_policy_document" "efs" {
  statement {
    sid       = "EvidentlyThroughItsAccessPoint"
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    resources = [aws_efs_file_system.evidently.arn]

    principals {
      type        = "AWS"
      identifiers = [module.ecs.task_role_arns["evidently"]]
    }

    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.evidently.arn]
    }
  }

  statement {
    sid       = "DenyWithoutTls"
    effect    = "Deny"
    actions   = ["*"]
    resources = [aws_efs_file_system.evidently.arn]

    principals {
      type        = "AWS"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_efs_file_system_policy" "evidently" {
  file_system_id = aws_efs_file_system.evidently.id
  policy         = data.aws_iam_policy_document.efs.json
}

# One mount target per subnet of the tasks (the private ones where given); EFS
# allows one per availability zone, so give one task subnet per zone.
resource "aws_efs_mount_target" "evidently" {
  for_each = toset(local.task_subnet_ids)

  file_system_id  = aws_efs_file_system.evidently.id
  subnet_id       = each.value
  security_groups = [aws_security_group.efs.id]
}

# The task sees only /evidently, as the flow image's user (uid and gid 10001).
resource "aws_efs_access_point" "evidently" {
  file_system_id = aws_efs_file_system.evidently.id

  posix_user {
    uid = 10001
    gid = 10001
  }

  root_directory {
    path = "/evidently"

    creation_info {
      owner_uid   = 10001
      owner_gid   = 10001
      permissions = "0750"
    }
  }

  tags = { Name = "${local.name}-evidently" }
}

locals {
  evidently_workspace = {
    # Through the mount targets: no task starts before they are available.
    file_system_id   = one(distinct([for m in aws_efs_mount_target.evidently : m.file_system_id]))
    file_system_arn  = aws_efs_file_system.evidently.arn
    access_point_id  = aws_efs_access_point.evidently.id
    access_point_arn = aws_efs_access_point.evidently.arn
    container_path   = "/var/lib/evidently"
  }
}
