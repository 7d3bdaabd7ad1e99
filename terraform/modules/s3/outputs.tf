output "bucket_name" {
  description = "Name of the drop bucket."
  value       = module.bucket.id
}

output "bucket_arn" {
  description = "ARN of the drop bucket."
  value       = module.bucket.arn
}

output "data_prefixes" {
  description = "Prefixes of the data layout."
  value       = { for p in local.prefixes : p => "data/${p}/" }
}
