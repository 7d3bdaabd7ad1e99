locals {
  # The data layout the Lambda and the flow rely on.
  prefixes = ["input", "processing", "processed", "errored", "logs"]
}

module "bucket" {
  source = "../private-bucket"

  name                    = var.bucket_name
  force_destroy           = var.force_destroy
  kms_key_arn             = var.kms_key_arn
  deny_insecure_transport = var.deny_insecure_transport
}

# The hardening moved into modules/private-bucket: the same resources, new addresses.
moved {
  from = aws_s3_bucket.drop
  to   = module.bucket.aws_s3_bucket.this
}

moved {
  from = aws_s3_bucket_ownership_controls.drop
  to   = module.bucket.aws_s3_bucket_ownership_controls.this
}

moved {
  from = aws_s3_bucket_public_access_block.drop
  to   = module.bucket.aws_s3_bucket_public_access_block.this
}

moved {
  from = aws_s3_bucket_versioning.drop
  to   = module.bucket.aws_s3_bucket_versioning.this
}

moved {
  from = aws_s3_bucket_server_side_encryption_configuration.drop
  to   = module.bucket.aws_s3_bucket_server_side_encryption_configuration.this
}

moved {
  from = aws_s3_bucket_policy.drop
  to   = module.bucket.aws_s3_bucket_policy.this
}

resource "aws_s3_bucket_lifecycle_configuration" "drop" {
  bucket = module.bucket.id

  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
  }

  dynamic "rule" {
    for_each = toset(["processed", "errored", "logs"])

    content {
      id     = "expire-${rule.value}"
      status = "Enabled"

      filter {
        prefix = "data/${rule.value}/"
      }

      expiration {
        days = var.processed_retention_days
      }
    }
  }

  depends_on = [module.bucket] # versioned first
}

# Zero-byte "folder" markers so the layout is visible in the console and to
# tools listing by delimiter.
resource "aws_s3_object" "prefix" {
  for_each = toset(local.prefixes)

  bucket  = module.bucket.id
  key     = "data/${each.value}/"
  content = ""

  depends_on = [module.bucket] # encrypted first
}

resource "aws_s3_bucket_notification" "drop" {
  bucket = module.bucket.id

  # One configuration per drop folder (S3 filters take one prefix each).
  dynamic "lambda_function" {
    for_each = var.lambda_enabled ? var.lambda_prefixes : []

    content {
      id                  = "new-file-${trimsuffix(replace(lambda_function.value, "/", "-"), "-")}"
      lambda_function_arn = var.lambda_function_arn
      events              = ["s3:ObjectCreated:*"]
      filter_prefix       = lambda_function.value
    }
  }
}
