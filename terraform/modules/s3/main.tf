locals {
  # The data layout the Lambda and the flow rely on.
  prefixes = ["input", "processing", "processed", "errored", "logs"]
}

resource "aws_s3_bucket" "drop" {
  # checkov:skip=CKV_AWS_18:CloudTrail data events on this bucket (audit.tf, the trail) record every object read, write and delete.
  # checkov:skip=CKV_AWS_144:Cross-region replication is out of scope for a per-environment drop bucket.
  bucket        = var.bucket_name
  force_destroy = var.force_destroy
}

resource "aws_s3_bucket_ownership_controls" "drop" {
  bucket = aws_s3_bucket.drop.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "drop" {
  bucket                  = aws_s3_bucket.drop.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "drop" {
  bucket = aws_s3_bucket.drop.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "drop" {
  bucket = aws_s3_bucket.drop.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "drop" {
  bucket = aws_s3_bucket.drop.id

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

  depends_on = [aws_s3_bucket_versioning.drop]
}

data "aws_iam_policy_document" "tls_only" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.drop.arn, "${aws_s3_bucket.drop.arn}/*"]

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

resource "aws_s3_bucket_policy" "drop" {
  count = var.deny_insecure_transport ? 1 : 0

  bucket = aws_s3_bucket.drop.id
  policy = data.aws_iam_policy_document.tls_only.json

  depends_on = [aws_s3_bucket_public_access_block.drop]
}

# Zero-byte "folder" markers so the layout is visible in the console and to
# tools listing by delimiter.
resource "aws_s3_object" "prefix" {
  for_each = toset(local.prefixes)

  bucket  = aws_s3_bucket.drop.id
  key     = "data/${each.value}/"
  content = ""

  depends_on = [aws_s3_bucket_server_side_encryption_configuration.drop]
}

resource "aws_s3_bucket_notification" "drop" {
  bucket = aws_s3_bucket.drop.id

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
