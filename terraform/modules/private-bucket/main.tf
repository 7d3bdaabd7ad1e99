# A private bucket, hardened once for the drop bucket (modules/s3) and the audit bucket
# (audit.tf): owner-enforced objects (no ACLs), no public access, versioned, encrypted
# (the given KMS key, or SSE-S3 without one), and a policy of the caller's statements
# plus, when asked, a deny of every request not made over TLS.

resource "aws_s3_bucket" "this" {
  # checkov:skip=CKV_AWS_18:Drop bucket: CloudTrail data events (audit.tf) record every object read, write and delete. Audit bucket: it is the log bucket; logging its own access would recurse.
  # checkov:skip=CKV_AWS_144:Cross-region replication is out of scope for a per-environment bucket.
  # checkov:skip=CKV_AWS_145:The drop bucket is SSE-KMS with the platform key; the audit bucket SSE-S3, the only encryption ALB access logs support (the trail's files are SSE-KMS: kms_key_id on the trail).
  # checkov:skip=CKV2_AWS_62:The drop bucket notifies the Lambda (modules/s3); a log bucket has no consumer of object-created events.
  bucket        = var.name
  force_destroy = var.force_destroy
}

resource "aws_s3_bucket_ownership_controls" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket                  = aws_s3_bucket.this.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = var.kms_key_arn == null ? null : true
  }
}

data "aws_iam_policy_document" "this" {
  source_policy_documents = var.policy_documents

  dynamic "statement" {
    for_each = var.deny_insecure_transport ? [1] : []

    content {
      sid       = "DenyInsecureTransport"
      effect    = "Deny"
      actions   = ["s3:*"]
      resources = [aws_s3_bucket.this.arn, "${aws_s3_bucket.this.arn}/*"]

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

resource "aws_s3_bucket_policy" "this" {
  count = var.deny_insecure_transport || length(var.policy_documents) > 0 ? 1 : 0

  bucket = aws_s3_bucket.this.id
  policy = data.aws_iam_policy_document.this.json

  depends_on = [aws_s3_bucket_public_access_block.this]
}
