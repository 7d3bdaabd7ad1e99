output "bucket_name" {
  description = "Name of the drop bucket."
  value       = aws_s3_bucket.drop.id
}

output "bucket_arn" {
  description = "ARN of the drop bucket."
  value       = aws_s3_bucket.drop.arn
}

output "data_prefixes" {
  description = "Prefixes of the data layout."
  value       = { for p in local.prefixes : p => "data/${p}/" }
}
