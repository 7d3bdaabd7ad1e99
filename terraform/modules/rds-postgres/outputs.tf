output "address" {
  description = "Host name of the instance."
  value       = aws_db_instance.this.address
}

output "port" {
  description = "Port of the instance."
  value       = aws_db_instance.this.port
}

output "instance_id" {
  description = "Identifier of the instance."
  value       = aws_db_instance.this.identifier
}

output "security_group_id" {
  description = "Security group of the instance."
  value       = aws_security_group.db.id
}

output "master_secret_arn" {
  description = "Secret holding the master user name and password (JSON)."
  value       = aws_secretsmanager_secret.master.arn
}

output "readonly_secret_arn" {
  description = "Secret holding the read-only user name and password (JSON)."
  value       = aws_secretsmanager_secret.grafana.arn
}

output "readonly_username" {
  description = "Name of the read-only role."
  value       = var.readonly_username
}

output "url_secret_arns" {
  description = "Connection-URL secret ARN per key of var.databases."
  value       = { for k, s in aws_secretsmanager_secret.url : k => s.arn }
}
