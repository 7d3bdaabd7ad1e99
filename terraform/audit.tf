# The audit trail: who read, wrote or deleted a customer file (CloudTrail data events
# on the drop bucket, with the account's management events), and who reached the load
# balancer (its access logs). Both go to one log bucket; the trail's files are
# encrypted with the platform key and their integrity is checkable (log file
# validation). ALB access logs support only SSE-S3, hence the bucket's default.

locals {
  audit_bucket = "${local.name}-audit-${local.account_id}"
  trail_name   = "${local.name}-audit"
  trail_arn    = "arn:${data.aws_partition.current.partition}:cloudtrail:${local.region}:${local.account_id}:trail/${local.trail_name}"
}

resource "aws_s3_bucket" "audit" {
  # checkov:skip=CKV_AWS_18:This is the log bucket; logging its own access would recurse.
  # checkov:skip=CKV_AWS_144:Cross-region replication is out of scope for a per-environment log bucket.
  # checkov:skip=CKV_AWS_145:ALB access logs support SSE-S3 only; the trail's files are SSE-KMS with the platform key (kms_key_id on the trail).
  # checkov:skip=CKV2_AWS_62:No consumer of object-created events in a log bucket.
  bucket        = local.audit_bucket
  force_destroy = var.bucket_force_destroy
}

resource "aws_s3_bucket_ownership_controls" "audit" {
  bucket = aws_s3_bucket.audit.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "audit" {
  bucket                  = aws_s3_bucket.audit.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "audit" {
  bucket = aws_s3_bucket.audit.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "audit" {
  bucket = aws_s3_bucket.audit.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "audit" {
  bucket = aws_s3_bucket.audit.id

  rule {
    id     = "expire-audit-logs"
    status = "Enabled"

    filter {}

    expiration {
      days = var.audit_retention_days
    }

    noncurrent_version_expiration {
      noncurrent_days = 30
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

# The ELB log-delivery account of the region (older regions) and service (newer ones).
data "aws_elb_service_account" "current" {}

data "aws_iam_policy_document" "audit" {
  statement {
    sid       = "TrailChecksTheBucket"
    actions   = ["s3:GetBucketAcl"]
    resources = [aws_s3_bucket.audit.arn]

    principals {
      type        = "Service"
      identifiers = ["cloudtrail.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceArn"
      values   = [local.trail_arn]
    }
  }

  statement {
    sid       = "TrailWritesItsFiles"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.audit.arn}/cloudtrail/AWSLogs/${local.account_id}/*"]

    principals {
      type        = "Service"
      identifiers = ["cloudtrail.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceArn"
      values   = [local.trail_arn]
    }
  }

  statement {
    sid       = "LoadBalancerWritesAccessLogs"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.audit.arn}/alb/AWSLogs/${local.account_id}/*"]

    principals {
      type        = "AWS"
      identifiers = [data.aws_elb_service_account.current.arn]
    }
  }

  statement {
    sid       = "LoadBalancerLogDelivery"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.audit.arn}/alb/AWSLogs/${local.account_id}/*"]

    principals {
      type        = "Service"
      identifiers = ["logdelivery.elasticloadbalancing.amazonaws.com"]
    }
  }

  dynamic "statement" {
    for_each = var.s3_deny_insecure_transport ? [1] : []

    content {
      sid       = "DenyInsecureTransport"
      effect    = "Deny"
      actions   = ["s3:*"]
      resources = [aws_s3_bucket.audit.arn, "${aws_s3_bucket.audit.arn}/*"]

      principals {
        type        = "*"
        identifiers = ["*"]
      }

      condition {
        test     = "Bool"
        variable = "aws:SecureTransport"
        values   = ["false"]
      }
    }
  }
}

resource "aws_s3_bucket_policy" "audit" {
  bucket = aws_s3_bucket.audit.id
  policy = data.aws_iam_policy_document.audit.json

  depends_on = [aws_s3_bucket_public_access_block.audit]
}

resource "aws_cloudtrail" "audit" {
  # checkov:skip=CKV_AWS_252:No SNS per log file; the alarms (alarms.tf) notify, the trail records.
  # checkov:skip=CKV2_AWS_10:The files in S3 are the record; CloudWatch Logs delivery would double the ingestion cost.
  name                          = local.trail_name
  s3_bucket_name                = aws_s3_bucket.audit.id
  s3_key_prefix                 = "cloudtrail"
  kms_key_id                    = aws_kms_key.platform.arn
  include_global_service_events = true
  is_multi_region_trail         = true
  enable_log_file_validation    = true

  # Every read, write and delete of a customer file, and the account's management
  # events (the first copy of those is free).
  event_selector {
    read_write_type           = "All"
    include_management_events = true

    data_resource {
      type   = "AWS::S3::Object"
      values = ["${module.s3.bucket_arn}/"]
    }
  }

  depends_on = [aws_s3_bucket_policy.audit]
}
