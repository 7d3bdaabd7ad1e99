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

# The drop bucket's hardening (modules/private-bucket) with SSE-S3 and the statements below.
module "audit_bucket" {
  source = "./modules/private-bucket"

  name                    = local.audit_bucket
  force_destroy           = var.bucket_force_destroy
  policy_documents        = [data.aws_iam_policy_document.audit.json]
  deny_insecure_transport = var.s3_deny_insecure_transport
}

moved {
  from = aws_s3_bucket.audit
  to   = module.audit_bucket.aws_s3_bucket.this
}

moved {
  from = aws_s3_bucket_ownership_controls.audit
  to   = module.audit_bucket.aws_s3_bucket_ownership_controls.this
}

moved {
  from = aws_s3_bucket_public_access_block.audit
  to   = module.audit_bucket.aws_s3_bucket_public_access_block.this
}

moved {
  from = aws_s3_bucket_versioning.audit
  to   = module.audit_bucket.aws_s3_bucket_versioning.this
}

moved {
  from = aws_s3_bucket_server_side_encryption_configuration.audit
  to   = module.audit_bucket.aws_s3_bucket_server_side_encryption_configuration.this
}

moved {
  from = aws_s3_bucket_policy.audit
  to   = module.audit_bucket.aws_s3_bucket_policy.this[0]
}

resource "aws_s3_bucket_lifecycle_configuration" "audit" {
  bucket = module.audit_bucket.id

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

locals {
  # Who writes log files into the bucket, each under its prefix's AWSLogs/<account>/: the
  # trail (only this trail), and the load balancer through the region's ELB log-delivery
  # account (older regions) or service (newer ones).
  audit_writers = {
    TrailWritesItsFiles          = { prefix = "cloudtrail", type = "Service", identifier = "cloudtrail.amazonaws.com", source_arn = local.trail_arn }
    LoadBalancerWritesAccessLogs = { prefix = "alb", type = "AWS", identifier = data.aws_elb_service_account.current.arn, source_arn = null }
    LoadBalancerLogDelivery      = { prefix = "alb", type = "Service", identifier = "logdelivery.elasticloadbalancing.amazonaws.com", source_arn = null }
  }
}

data "aws_iam_policy_document" "audit" {
  statement {
    sid       = "TrailChecksTheBucket"
    actions   = ["s3:GetBucketAcl"]
    resources = [module.audit_bucket.arn]

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

  dynamic "statement" {
    for_each = local.audit_writers

    content {
      sid       = statement.key
      actions   = ["s3:PutObject"]
      resources = ["${module.audit_bucket.arn}/${statement.value.prefix}/AWSLogs/${local.account_id}/*"]

      principals {
        type        = statement.value.type
        identifiers = [statement.value.identifier]
      }

      dynamic "condition" {
        for_each = statement.value.source_arn == null ? [] : [statement.value.source_arn]

        content {
          test     = "StringEquals"
          variable = "aws:SourceArn"
          values   = [condition.value]
        }
      }
    }
  }
}

resource "aws_cloudtrail" "audit" {
  # checkov:skip=CKV_AWS_252:No SNS per log file; the alarms (alarms.tf) notify, the trail records.
  # checkov:skip=CKV2_AWS_10:The files in S3 are the record; CloudWatch Logs delivery would double the ingestion cost.
  name                          = local.trail_name
  s3_bucket_name                = module.audit_bucket.bucket_with_policy
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
}
