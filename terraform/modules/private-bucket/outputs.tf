output "id" {
  description = "Name of the bucket."
  value       = aws_s3_bucket.this.id
}

output "arn" {
  description = "ARN of the bucket."
  value       = aws_s3_bucket.this.arn
}

output "bucket_with_policy" {
  description = "Name of the bucket, known once its policy is applied: for writers that the policy admits."
  value       = coalesce(one(aws_s3_bucket_policy.this[*].bucket), aws_s3_bucket.this.id)
}
